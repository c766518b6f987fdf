#!/usr/bin/env bash
# The matched SymbolSoup comparison (docs/symbolsoup.md): Sessa, Transformer and Mamba
# at matched parameter count (the Transformer of D x LAYERS is the reference; the
# others take the layer count closest to its size), identical data, steps and batch,
# at two lengths (400-600 and 1,800-2,048 tokens).
#   1. generate one data set per length (the same for every run);
#   2. learning-rate sweep: every family x lr in LRS x length, seed 1;
#   3. per family and length, the lr with the best validation accuracy (never test)
#      is trained again with the other SEEDS;
#   4. every run's final accuracies go to $OUT/results.tsv, then the table of test
#      accuracy mean ± std over the seeds (per family and length) is printed last.
# Up to JOBS runs share the device at once (background processes).
# LR_FROM=LEN sweeps the learning rate at length LEN only and trains every seed of the
# other lengths at the lr chosen there (the long-sequence sweep is the expensive part).
# DEADLINE=S starts no new run after S seconds (running ones finish); --resume continues
# a sweep in $OUT (results.tsv kept, finished runs skipped, data regenerated if absent:
# it is deterministic), so a sweep can be split over several sessions or device calls.
#
#   bench/symbolsoup_sweep.sh                      # GPU defaults (one H200: about 40 minutes; LR_FROM=400-600 about 20)
#   bench/symbolsoup_sweep.sh --quick              # CPU smoke run of the whole pipeline (minutes)
#   DEADLINE=300 bench/symbolsoup_sweep.sh; bench/symbolsoup_sweep.sh --resume   # in two parts
#   JOBS=12 STEPS=800 bench/symbolsoup_sweep.sh    # any setting below can be overridden
#   LM_WEIGHT=0 bench/symbolsoup_sweep.sh          # label loss only (default 1: + 1 x the next-token loss, train --lm-weight)
set -uo pipefail
QUICK=0 RESUME=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --resume) RESUME=1 ;;
    -h|--help) sed -n 2,23p "$0"; exit 0 ;;
    *) echo "symbolsoup_sweep: unknown argument '$arg' (expected --quick or --resume)" >&2; exit 2 ;;
  esac
done

BUILD=${BUILD:-build}
APP="$BUILD/apps/symbolsoup"
if [ $QUICK = 1 ]; then
  : "${OUT:=runs/symbolsoup-quick}" "${DEVICE:=cpu}" "${DTYPE:=fp32}" "${JOBS:=2}" "${THREADS:=1}"
  : "${D:=32}" "${LAYERS:=1}" "${HEADS:=2}" "${STEPS:=40}" "${BATCH:=16}" "${LRS:=5e-3 1e-2}" "${SEEDS:=1 2}"
  : "${LENGTHS:=60-90 120-160}" "${TRAIN_N:=1000}" "${VAL_N:=100}" "${TEST_N:=100}" "${VAL_EXAMPLES:=100}"
else
  : "${OUT:=runs/symbolsoup-sweep}" "${DEVICE:=cuda}" "${DTYPE:=bf16}" "${JOBS:=6}" "${THREADS:=1}"
  : "${D:=128}" "${LAYERS:=3}" "${HEADS:=2}" "${STEPS:=2000}" "${BATCH:=64}" "${LRS:=5e-4 1e-3 2e-3 5e-3 1e-2}" "${SEEDS:=1 2 3}"
  : "${LENGTHS:=400-600 1800-2048}" "${TRAIN_N:=20000}" "${VAL_N:=2000}" "${TEST_N:=2000}" "${VAL_EXAMPLES:=400}"
fi
FAMILIES=${FAMILIES:-sessa transformer mamba}
WARMUP=${WARMUP:-$((STEPS / 10))}
EVAL_EVERY=${EVAL_EVERY:-$((STEPS / 4))}
DATA_SEED=${DATA_SEED:-1}
LM_WEIGHT=${LM_WEIGHT:-1}
LR_FROM=${LR_FROM:-}
DEADLINE=${DEADLINE:-}
if [ -n "$LR_FROM" ] && ! tr ' ' '\n' <<< "$LENGTHS" | grep -qx -- "$LR_FROM"; then
  echo "symbolsoup_sweep: LR_FROM=$LR_FROM is not one of LENGTHS ($LENGTHS)" >&2; exit 2
fi

[ -x "$APP" ] || { echo "symbolsoup_sweep: $APP not found: build it first (cmake --build $BUILD --target symbolsoup)" >&2; exit 1; }
if [ -e "$OUT/results.tsv" ] && [ $RESUME = 0 ]; then
  echo "symbolsoup_sweep: $OUT already holds a sweep; continue it with --resume, or set OUT=... or remove it" >&2; exit 1
fi
if [ $RESUME = 1 ] && [ ! -e "$OUT/results.tsv" ]; then
  echo "symbolsoup_sweep: --resume: $OUT/results.tsv not found (nothing to continue)" >&2; exit 1
fi
mkdir -p "$OUT/runs" "$OUT/logs"
RESULTS="$OUT/results.tsv"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
echo "sweep: device $DEVICE $DTYPE | Transformer D $D x $LAYERS layers (others matched) | $STEPS steps x batch $BATCH"
echo "sweep: lengths $LENGTHS | lrs $LRS${LR_FROM:+ (swept at $LR_FROM only)} | seeds $SEEDS | lm weight $LM_WEIGHT | $JOBS runs at a time -> $OUT"

# ---- 1. data ---------------------------------------------------------------------------
for len in $LENGTHS; do
  [ -s "$OUT/data/$len/test.tsv" ] && continue
  "$APP" generate --out-dir "$OUT/data/$len" --train "$TRAIN_N" --val "$VAL_N" --test "$TEST_N" \
    --min-tokens "${len%-*}" --max-tokens "${len#*-}" --seed "$DATA_SEED" > "$OUT/logs/generate-$len.log" 2>&1 &
done
wait || true
for len in $LENGTHS; do
  [ -s "$OUT/data/$len/test.tsv" ] || { echo "symbolsoup_sweep: generate failed:"; cat "$OUT/logs/generate-$len.log"; exit 1; }
done
echo "[$(elapsed)s] data written ($LENGTHS)"

best_lr() {  # LENGTH FAMILY -> the lr whose first-seed run has the highest validation accuracy
  awk -F'\t' -v l="${LR_FROM:-$1}" -v f="$2" -v s="$FIRST_SEED" 'NR > 1 && $1 == l && $2 == f && $4 == s && (best == "" || $9 > bv) {best = $3; bv = $9}
    END {print best}' "$RESULTS"
}
FIRST_SEED=${SEEDS%% *}
# The validation curves of the best-lr runs and the table of test accuracy (also on an early stop).
summarize() {
  for len in $LENGTHS; do
    curves=()
    for family in $FAMILIES; do
      lr=$(best_lr "$len" "$family")
      [ -n "$lr" ] && [ -e "$OUT/runs/$len-$family-lr$lr-s$FIRST_SEED/log.csv" ] &&
        curves+=("$OUT/runs/$len-$family-lr$lr-s$FIRST_SEED")
    done
    [ ${#curves[@]} -gt 0 ] && "$APP" plot --out "$OUT/curves-$len.svg" --title "SymbolSoup $len tokens: validation accuracy" \
      "${curves[@]}" > /dev/null 2>&1 && echo "plot: $OUT/curves-$len.svg"
  done
  SUMMARY="$OUT/summary.md"
  {
    echo "Test accuracy, mean ± std over seeds ($SEEDS) at each family's best validation lr;"
    echo "$STEPS steps x batch $BATCH, Transformer D $D x $LAYERS layers, others matched; lm weight $LM_WEIGHT; $DEVICE $DTYPE; $(elapsed) s in all."
    echo
    printf '| family | params |'; for len in $LENGTHS; do printf ' %s tokens (lr) |' "$len"; done; echo
    printf '|---|---|'; for len in $LENGTHS; do printf '%s' '---|'; done; echo
    for family in $FAMILIES; do
      params=$(awk -F'\t' -v f="$family" 'NR > 1 && $2 == f {print $5; exit}' "$RESULTS")
      printf '| %s | %s |' "$family" "$params"
      for len in $LENGTHS; do
        lr=$(best_lr "$len" "$family")
        awk -F'\t' -v l="$len" -v f="$family" -v lr="$lr" '
          NR > 1 && $1 == l && $2 == f && $3 == lr {n++; s += $10; ss += $10 * $10}
          END {
            if (n == 0) { printf " – |"; exit }
            m = s / n; v = n > 1 ? (ss - n * m * m) / (n - 1) : 0; if (v < 0) v = 0
            printf " %.3f ± %.3f (n=%d, %s) |", m, sqrt(v), n, lr
          }' "$RESULTS"
      done
      echo
    done
  } > "$SUMMARY"
  echo
  cat "$SUMMARY"
}

# Stopped early (Ctrl-C, `timeout`): end the runs, then report those that finished.
on_stop() {
  trap - INT TERM
  echo "[$(elapsed)s] stopped: the table covers the runs finished so far"
  for pid in $(jobs -p); do pkill -TERM -P "$pid"; kill "$pid"; done 2> /dev/null
  wait 2> /dev/null
  summarize
  exit 130
}
trap on_stop INT TERM

# ---- runs, JOBS at a time ----------------------------------------------------------------
[ $RESUME = 1 ] || printf 'length\tfamily\tlr\tseed\tparameters\tlayers\tsteps\tbatch\tval_acc\ttest_acc\ttrain_s\trun\n' > "$RESULTS"
# run LENGTH FAMILY LR SEED: trains one model and appends its line to results.tsv.
run_name() { echo "$1-$2-lr$3-s$4"; }  # LENGTH FAMILY LR SEED
run() {
  local len=$1 family=$2 lr=$3 seed=$4
  local name; name=$(run_name "$@")
  local dir="$OUT/runs/$name" log="$OUT/logs/$name.log"
  local match=()
  [ "$family" != transformer ] && match=(--match-params transformer)
  if ! "$APP" train --data "$OUT/data/$len" --model "$family" --preset tiny --d-model "$D" --layers "$LAYERS" \
      --heads "$HEADS" "${match[@]}" --steps "$STEPS" --warmup "$WARMUP" --batch "$BATCH" --lr "$lr" --seed "$seed" \
      --eval-every "$EVAL_EVERY" --val-examples "$VAL_EXAMPLES" --log-every 50 --device "$DEVICE" --dtype "$DTYPE" \
      --lm-weight "$LM_WEIGHT" --threads "$THREADS" --out "$dir" > "$log" 2>&1; then
    echo "[$(elapsed)s] FAILED $name: $(tail -1 "$log")"
    return
  fi
  # result.json is one line of flat JSON; the final validation accuracy is the last row of log.csv.
  local r; r=$(cat "$dir/result.json")
  field() { sed -E "s/.*\"$1\": \"?([^,\"}]*).*/\1/" <<< "$r"; }
  local val; val=$(awk -F, 'NR > 1 && $9 != "" {v = $9} END {print v}' "$dir/log.csv")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$len" "$family" "$lr" "$seed" "$(field parameters)" \
    "$(field layers)" "$STEPS" "$BATCH" "$val" "$(field test_accuracy)" "$(field train_seconds)" "$name" >> "$RESULTS"
  echo "[$(elapsed)s] $name: val $val test $(field test_accuracy) ($(field train_seconds)s training)"
}
# Starts `run "$@"` in the background once fewer than JOBS runs are going; a run already in
# results.tsv (--resume) is skipped.
STOPPED=0
submit() {
  local name; name=$(run_name "$@")
  if awk -F'\t' -v n="$name" '$12 == n {found = 1} END {exit !found}' "$RESULTS"; then
    echo "[$(elapsed)s] $name: in results.tsv already"; return
  fi
  if [ -n "$DEADLINE" ] && [ "$(elapsed)" -ge "$DEADLINE" ]; then
    [ $STOPPED = 1 ] || echo "[$(elapsed)s] DEADLINE $DEADLINE s passed: no new runs (continue with --resume)"
    STOPPED=1; return
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run "$@" &
}

# ---- 2. learning-rate sweep (first seed), the long length first (it takes longest) ------------
OTHER_SEEDS=${SEEDS#"$FIRST_SEED"}
LENGTHS_LONG_FIRST=$(tr ' ' '\n' <<< "$LENGTHS" | tac | tr '\n' ' ')
for len in $LENGTHS_LONG_FIRST; do
  [ -n "$LR_FROM" ] && [ "$len" != "$LR_FROM" ] && continue
  for family in $FAMILIES; do
    for lr in $LRS; do submit "$len" "$family" "$lr" "$FIRST_SEED"; done
  done
done
wait
PHASE1=$(elapsed)
echo "[${PHASE1}s] learning-rate sweep done; the other seeds take about $(( PHASE1 * 2 / 3 )) s more"

# ---- 3. the other seeds at each family's best validation lr -----------------------------------
[ $STOPPED = 1 ] && { echo "[$(elapsed)s] the lr sweep is incomplete: continue with --resume"; summarize; exit 0; }
for len in $LENGTHS_LONG_FIRST; do
  for family in $FAMILIES; do
    lr=$(best_lr "$len" "$family")
    [ -n "$lr" ] || continue
    echo "[$(elapsed)s] $len $family: best lr $lr${LR_FROM:+ (chosen at $LR_FROM)}"
    seeds=$OTHER_SEEDS
    [ -n "$LR_FROM" ] && [ "$len" != "$LR_FROM" ] && seeds=$SEEDS
    for seed in $seeds; do submit "$len" "$family" "$lr" "$seed"; done
  done
done
wait
echo "[$(elapsed)s] all runs done: $RESULTS"

# ---- 4. curves and the summary table ---------------------------------------------------------
summarize
