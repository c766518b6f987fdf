#!/usr/bin/env bash
# On a GPU machine: build for sm_90, run the GPU tests, then time our engine and the
# PyTorch reference (bench/torch_models.py) at the same configurations, and print
# one comparison table. Logs go to $OUT (default /tmp/sessa-gpu).
#   bench/run_gpu.sh [tests|bench|all] [extra bench configs...]
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-/tmp/sessa-gpu}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== build ($BUILD)"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSESSA_CUDA_ARCH=90 > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }

if [ "$STAGE" = tests ] || [ "$STAGE" = all ]; then
  echo "== GPU tests (each case alone, ${CASE_TIMEOUT:-60} s limit)"
  "$BUILD/tests/test_cuda" -ltc 2>/dev/null | grep -vE "^\[doctest\]|^=+$|^$" > "$OUT/cases.txt"
  while IFS= read -r name; do
    timeout "${CASE_TIMEOUT:-60}" "$BUILD/tests/test_cuda" -tc="$name" > "$OUT/case.log" 2>&1
    rc=$?
    status=PASS; [ $rc -eq 124 ] && status=TIMEOUT; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status=FAIL
    echo "$status  $name"
    { echo "### $status $name"; cat "$OUT/case.log"; } >> "$OUT/test_cuda.log"
    [ $status != PASS ] && grep -E "ERROR|error|values:|CHECK|relative" "$OUT/case.log" | head -8
  done < "$OUT/cases.txt"
  if [ -n "${SANITIZE:-}" ] && command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_cuda" -tc="$SANITIZE" > "$OUT/sanitizer-$tool.log" 2>&1
      echo "compute-sanitizer $tool: exit $? ($(grep -c 'ERROR SUMMARY' "$OUT/sanitizer-$tool.log") summaries)"; grep "ERROR SUMMARY" "$OUT/sanitizer-$tool.log" | sort | uniq -c
    done
  fi
fi

if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  echo "== benchmarks (median of timed steps after warm-up)"
  configs=("${@:2}")
  [ ${#configs[@]} -gt 0 ] || configs=("sessa 16 1024 bf16" "sessa 4 4096 bf16" "transformer 16 1024 bf16" "mamba 16 1024 bf16")
  for cfg in "${configs[@]}"; do
    read -r model batch seq dtype <<< "$cfg"
    "$BUILD/apps/bench" --model "$model" --preset small --batch "$batch" --seq-len "$seq" --dtype "$dtype" --steps 8 2>&1 | tee -a "$OUT/bench.txt"
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/torch_models.py --model "$model" --preset small --batch "$batch" --seq-len "$seq" --dtype "$dtype" --steps 8 2>&1 | tail -1 | tee -a "$OUT/bench.txt"
  done
  echo "== table"; cat "$OUT/bench.txt"
fi
