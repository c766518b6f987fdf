#!/usr/bin/env bash
# The main job (make demo). Until the training apps exist it benchmarks the CPU GEMM.
set -euo pipefail
BUILD=${1:-build}
"$BUILD/bench/bench_gemm_cpu"
