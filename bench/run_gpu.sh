#!/usr/bin/env bash
# On a GPU machine: build for sm_90a, run the GPU tests, then time our engine and
# torch.compile of the PyTorch reference (bench/torch_models.py --compile) at the same
# configurations in the same call, and print one table with ours / compiled per row.
# Logs go to $OUT (default /tmp/sessa-gpu).
#   bench/run_gpu.sh [tests|bench|all] [extra bench configs...]
#   bench/run_gpu.sh attention   attention kernel TFLOP/s, ours and PyTorch SDPA
#   bench/run_gpu.sh dist     (2+ GPUs) NCCL equivalence tests, then 1- vs 2-GPU throughput
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-/tmp/sessa-gpu}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== build ($BUILD)"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSESSA_CUDA_ARCH=90a > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
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

if [ "$STAGE" = dist ]; then
  echo "== data parallel over NCCL: tests/test_dist with --device cuda"
  (cd "$BUILD" && SESSA_DIST_TEST_DEVICE=cuda timeout 300 ./tests/test_dist > "$OUT/test_dist.log" 2>&1; echo "test_dist exit $?")
  grep -E "MESSAGE|test cases|ERROR" "$OUT/test_dist.log" | sed 's/^.*MESSAGE: //'
  echo "== scaling: GPT-2-small scale, bf16, batch 16 x 1024 per GPU"
  MPI=(mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE)
  for model in sessa transformer; do
    common=(--model "$model" --preset small --batch 16 --seq-len 1024 --dtype bf16 --steps 8)
    "$BUILD/apps/bench" "${common[@]}" 2>&1 | tee -a "$OUT/scaling.txt"
    "${MPI[@]}" "$BUILD/apps/bench" "${common[@]}" --device cuda 2>&1 | tee -a "$OUT/scaling.txt"
    "${MPI[@]}" "$BUILD/apps/bench" "${common[@]}" --device cuda --zero1 2>&1 | tee -a "$OUT/scaling.txt"
  done
  echo "== scaling efficiency (2-GPU tok/s / (2 x 1-GPU tok/s))"
  awk '/tok\/s/ { for (i = 1; i <= NF; i++) if ($(i+1) == "tok/s") tps = $i;
         n = ($0 ~ / x2 /) ? 2 : 1; z = ($0 ~ /zero1/) ? " zero1" : "";
         if (n == 1) one[$1] = tps; else printf "%-11s x2%-6s %8.0f tok/s  efficiency %.3f\n", $1, z, tps, tps / (2 * one[$1]) }' "$OUT/scaling.txt"
fi

if [ "$STAGE" = attention ]; then
  echo "== attention kernel: ours (bench_attention) and PyTorch SDPA, same shapes, same call"
  "$BUILD/bench/bench_attention" 2>&1 | tee "$OUT/attention.txt"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/attention_torch.py 2>&1 | tee -a "$OUT/attention.txt"
fi

if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  echo "== benchmarks (median of timed steps after warm-up): ours, then torch.compile of bench/torch_models.py"
  echo "   (EAGER=1 adds PyTorch eager; TORCH_TIMEOUT=${TORCH_TIMEOUT:-300} s per PyTorch run, compile included)"
  configs=("${@:2}")
  [ ${#configs[@]} -gt 0 ] || configs=("sessa 16 1024 bf16" "sessa 4 4096 bf16" "transformer 16 1024 bf16" "mamba 16 1024 bf16")
  : > "$OUT/ratios.txt"
  for cfg in "${configs[@]}"; do
    read -r model batch seq dtype <<< "$cfg"
    flags=(--model "$model" --preset small --batch "$batch" --seq-len "$seq" --dtype "$dtype" --steps 8)
    ours=$("$BUILD/apps/bench" "${flags[@]}" 2>&1 | tail -1); echo "$ours" | tee -a "$OUT/bench.txt"
    torch_run() { PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-300}" python3 bench/torch_models.py "${flags[@]}" "$@" 2>> "$OUT/torch.err" | tail -1; }
    compiled=$(torch_run --compile); [ -n "$compiled" ] || compiled="compiled $model B=$batch T=$seq $dtype | timed out or failed"
    echo "$compiled" | tee -a "$OUT/bench.txt"
    [ -n "${EAGER:-}" ] && torch_run | tee -a "$OUT/bench.txt"
    tps() { sed -n 's/.*| *\([0-9]*\) tok\/s.*/\1/p' <<< "$1"; }
    peak() { sed -n 's/.*peak *\([0-9.]*\) GiB.*/\1/p' <<< "$1"; }
    a=$(tps "$ours"); b=$(tps "$compiled")
    ratio=$( [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }' || echo "-")
    printf "%-11s %3s x %-5s %-4s | ours %8s tok/s %6s GiB | compiled %8s tok/s %6s GiB | ours/compiled %s\n" \
      "$model" "$batch" "$seq" "$dtype" "${a:--}" "$(peak "$ours")" "${b:--}" "$(peak "$compiled")" "$ratio" >> "$OUT/ratios.txt"
  done
  echo "== table"; cat "$OUT/ratios.txt"
fi
