#!/usr/bin/env bash
# End-to-end on the CPU: apps/prepare -> apps/train (loss must fall) -> apps/sample, apps/influence,
# exact resume, bad flags / bad files exiting non-zero with a message, and the SymbolSoup sweep
# script split into parts (--resume).
# Usage: tests/test_apps.sh BUILD_DIR
set -uo pipefail
source "$(dirname "$0")/app_helpers.sh" "$1"

write_corpus "$WORK/corpus.txt"

"$APPS/prepare" --input "$WORK/corpus.txt" --separator % --out-dir "$WORK/data" > "$WORK/prepare.log" 2>&1 \
  && grep -q "train:" "$WORK/prepare.log" && [ -s "$WORK/data/train.bin" ] && [ -s "$WORK/data/val.bin" ] \
  && pass "prepare writes train/val shards" || fail "prepare: $(cat "$WORK/prepare.log")"

TRAIN=("$APPS/train" --model sessa --preset tiny --d-model 32 --heads 2 --data "$WORK/data" --batch 8 --seq-len 32
       --lr 5e-3 --warmup 5 --eval-every 20 --eval-batches 4 --device cpu --threads 2)
"${TRAIN[@]}" --steps 40 --ckpt-every 20 --out "$WORK/run" > "$WORK/train.log" 2>&1 || fail "train: $(tail -5 "$WORK/train.log")"
first=$(awk -F, 'NR==2 {print $2}' "$WORK/run/log.csv")
last=$(awk -F, '$2 != "" {l=$2} END {print l}' "$WORK/run/log.csv")
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.6 * a)}' && pass "train loss falls ($first -> $last)" \
  || fail "train loss did not fall enough: $first -> $last"
[ -s "$WORK/run/loss.svg" ] && grep -q "<svg" "$WORK/run/loss.svg" && pass "train writes loss.svg" || fail "no loss.svg"
[ -L "$WORK/run/latest.safetensors" ] && pass "latest.safetensors points at the last checkpoint" || fail "no latest link"

"$APPS/sample" --checkpoint "$WORK/run" --prompt "the cat" --max-tokens 40 --device cpu > "$WORK/sample.txt" 2> "$WORK/sample.err" \
  && [ -s "$WORK/sample.txt" ] && grep -q "tokens/s" "$WORK/sample.err" && pass "sample streams text and reports tokens/s" \
  || fail "sample: $(cat "$WORK/sample.err")"

# Resuming from the step-20 checkpoint reproduces the uninterrupted run's losses.
"$APPS/train" --resume "$WORK/run/ckpt_0000020.safetensors" --out "$WORK/resumed" --threads 2 > /dev/null 2>&1
a=$(awk -F, '$1 == 40 && $2 != "" {print $2}' "$WORK/run/log.csv")
b=$(awk -F, '$1 == 40 && $2 != "" {print $2}' "$WORK/resumed/log.csv" 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] && pass "resume gives the same step-40 loss ($a)" || fail "resume: '$a' vs '$b'"

# apps/influence: a closed-form construction (measured == closed form, slope last) and the trained checkpoint.
INF=("$APPS/influence" --threads 2)
"${INF[@]}" --construction sessa-uniform --gamma 0.5 --seq-len 48 --samples 2 --sources 2 --out "$WORK/inf" > "$WORK/inf.log" 2>&1 \
  && tail -1 "$WORK/inf.log" | grep -Eq '^slope -0\.[0-9]+$' && grep -q '<svg' "$WORK/inf/influence.svg" \
  && awk -F, 'NR > 1 {d = $2 - $6; if (d < 0) d = -d; if (d > 1e-6 * $2) bad = 1; n++} END {exit bad || n != 46}' "$WORK/inf/influence.csv" \
  && pass "influence: construction curve equals its closed form, slope last" || fail "influence construction: $(tail -3 "$WORK/inf.log")"
"${INF[@]}" --checkpoint "$WORK/run" --checkpoint "$WORK/run" --layer 1 --data "$WORK/data" --seq-len 24 --samples 2 --probes 3 \
  --device cpu --dtype f32 --out "$WORK/inf_ckpt" > "$WORK/inf_ckpt.log" 2>&1 \
  && tail -1 "$WORK/inf_ckpt.log" | grep -Eq '^slope -?[0-9.e+-]+ -?[0-9.e+-]+$' \
  && [ "$(grep -c ',sessa:run:layer1$' "$WORK/inf_ckpt/influence.csv")" = 46 ] \
  && pass "influence: measures a trained checkpoint (layer 1, data windows)" || fail "influence checkpoint: $(tail -3 "$WORK/inf_ckpt.log")"
expect_error "influence: gamma out of range" "--gamma" "${INF[@]}" --construction sessa-uniform --gamma 1.5 --seq-len 8 --out "$WORK/inf2"
expect_error "influence: fit range beyond the lags" "--fit-to" "${INF[@]}" --construction mamba-decay --seq-len 8 --fit-to 9 --out "$WORK/inf2"
expect_error "influence: no model" "--checkpoint" "${INF[@]}" --seq-len 8 --out "$WORK/inf2"
expect_error "influence: unknown construction" "--construction" "${INF[@]}" --construction rnn --seq-len 8 --out "$WORK/inf2"
expect_error "influence: bad layer" "--layer" "${INF[@]}" --checkpoint "$WORK/run" --layer 5 --seq-len 8 --out "$WORK/inf2"

# Bad input: a clear message and a non-zero exit.
expect_error "train refuses to overwrite a run" "already holds a run" "${TRAIN[@]}" --steps 2 --out "$WORK/run"
expect_error "train: missing data" "no files match" "${TRAIN[@]}" --steps 2 --data "$WORK/none.bin" --out "$WORK/x1"
expect_error "train: bad flag value" "--steps" "${TRAIN[@]}" --steps -3 --out "$WORK/x2"
expect_error "train: unknown flag" "--bogus" "${TRAIN[@]}" --bogus
expect_error "train: heads must divide d_model" "--heads 3" "${TRAIN[@]}" --heads 3 --out "$WORK/x3"
expect_error "train: token ids beyond the vocabulary" "train.bin" "${TRAIN[@]}" --vocab 100 --steps 2 --out "$WORK/x4"
expect_error "train: --zero1 outside mpirun" "launch with mpirun" "${TRAIN[@]}" --zero1 --steps 2 --out "$WORK/x6"
expect_error "train: bucket size must be positive" "--bucket-mb" "${TRAIN[@]}" --bucket-mb 0 --out "$WORK/x7"
printf 'garbage that is not a shard at all!' > "$WORK/bad.bin"
expect_error "train: a corrupt shard names the file" "bad.bin" "${TRAIN[@]}" --data "$WORK/bad.bin" --steps 2 --out "$WORK/x5"
expect_error "prepare: missing input names it" "nothing.txt" "$APPS/prepare" --input "$WORK/nothing.txt" --out-dir "$WORK/d2"
expect_error "sample: missing checkpoint names it" "no_such_run" "$APPS/sample" --checkpoint "$WORK/no_such_run"
expect_error "sample: bad temperature" "temperature" "$APPS/sample" --checkpoint "$WORK/run" --temperature -1
[ -s "$WORK/data/train.bin" ] && pass "failed runs left the dataset intact" || fail "dataset lost"

# bench/symbolsoup_sweep.sh in parts: DEADLINE=0 starts nothing, --resume runs the whole sweep
# (lr swept at the short length only: 2 x 2 lr runs + 2 x 1 + 2 x 2 seed runs), a second
# --resume adds nothing, and a second sweep into the same OUT without --resume is refused.
SWEEP=(env BUILD="$1" OUT="$WORK/sweep" FAMILIES="transformer mamba" STEPS=10 LRS="5e-3 1e-2" SEEDS="1 2"
       LENGTHS="60-90 120-160" LR_FROM=60-90 TRAIN_N=200 VAL_N=40 TEST_N=40 VAL_EXAMPLES=40
       bash "$(dirname "$0")/../bench/symbolsoup_sweep.sh" --quick)
rows() { awk 'NR > 1' "$WORK/sweep/results.tsv" | wc -l; }
DEADLINE=0 "${SWEEP[@]}" > "$WORK/sweep0.log" 2>&1 && grep -q "continue with --resume" "$WORK/sweep0.log" && [ "$(rows)" = 0 ] \
  && pass "sweep: DEADLINE=0 starts no run" || fail "sweep DEADLINE=0: $(tail -3 "$WORK/sweep0.log")"
# Every 120-160 run uses the lr of its family's 60-90 seed-2 run (the chosen one).
long_lr_ok() {
  awk -F'\t' 'NR > 1 && $1 == "60-90" && $4 == 2 {chosen[$2] = $3} NR > 1 && $1 == "120-160" {lr[NR] = $3; fam[NR] = $2}
    END {for (r in lr) if (lr[r] != chosen[fam[r]]) exit 1; exit length(lr) != 4}' "$WORK/sweep/results.tsv"
}
"${SWEEP[@]}" --resume > "$WORK/sweep1.log" 2>&1 && [ "$(rows)" = 10 ] && long_lr_ok \
  && pass "sweep: --resume runs the 10 runs, the long length at the lr chosen at 60-90" || fail "sweep --resume: $(rows) rows; $(tail -5 "$WORK/sweep1.log")"
"${SWEEP[@]}" --resume > "$WORK/sweep2.log" 2>&1 && [ "$(rows)" = 10 ] && [ "$(grep -c 'in results.tsv already' "$WORK/sweep2.log")" = 10 ] \
  && pass "sweep: a second --resume skips every finished run" || fail "sweep second --resume: $(rows) rows"
expect_error "sweep: a second sweep into the same OUT" "continue it with --resume" "${SWEEP[@]}"

finish test_apps
