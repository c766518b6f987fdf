#!/usr/bin/env bash
# The main job (`make demo`): turn Debian's fortune cookies into byte-level token
# shards, train a small Sessa language model on them (on the GPU when one is
# visible, else the CPU; a few minutes on 2 CPU cores), then print a sample.
# Usage: apps/demo.sh [BUILD_DIR]; environment: STEPS, OUT, DEVICE.
set -euo pipefail
BUILD=${1:-build}
STEPS=${STEPS:-600}
OUT=${OUT:-runs/fortunes-sessa}
DEVICE=${DEVICE:-auto}
DATA=runs/fortunes-data

FORTUNES=/usr/share/games/fortunes

# The fortune text files themselves: not their *.dat indexes (binary) nor the
# *.u8 links to the same files.
shopt -s extglob nullglob
inputs=("$FORTUNES"/!(*.dat|*.u8))
shopt -u extglob nullglob
if [ ${#inputs[@]} -eq 0 ]; then
  echo "demo: no fortune files in $FORTUNES (install the 'fortunes' package: make deps)" >&2
  exit 1
fi

echo "== 1/3 preparing the corpus (${#inputs[@]} files in $FORTUNES) -> $DATA"
"$BUILD/apps/prepare" --input "${inputs[@]}" --separator % --out-dir "$DATA"

echo "== 2/3 training a Sessa LM for $STEPS steps -> $OUT"
if [ -e "$OUT/latest.safetensors" ]; then
  echo "$OUT already holds a run: reusing it (delete it to train again)"
else
  "$BUILD/apps/train" --model sessa --preset tiny --d-model 128 --heads 4 --layers 4 --data "$DATA" \
    --batch 16 --seq-len 256 --steps "$STEPS" --lr 3e-3 --warmup 50 --eval-every 100 --ckpt-every 200 \
    --device "$DEVICE" --out "$OUT"
fi

echo "== 3/3 sampling from $OUT"
"$BUILD/apps/sample" --checkpoint "$OUT" --prompt "The meaning of life is" --max-tokens 300 --temperature 0.8 --device "$DEVICE"
echo
echo "Loss curve: $OUT/loss.svg, log: $OUT/log.csv. Sample again: $BUILD/apps/sample --checkpoint $OUT --prompt '...'"
