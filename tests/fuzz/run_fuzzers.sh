#!/usr/bin/env bash
# tests/fuzz/run_fuzzers.sh BUILD_DIR SECONDS - runs every fuzz target built in
# BUILD_DIR/fuzz for SECONDS each (make fuzz). The working corpus of each target
# grows in BUILD_DIR/fuzz/corpus/<target> (kept between runs), seeded from the
# generated seeds and tests/fuzz/corpus/<target>; a crashing input is saved as
# BUILD_DIR/fuzz/crashes/<target>-crash-<sha1>. Prints one summary line per target
# (executions, coverage) and fails if any target crashed. FUZZ_SEED fixes libFuzzer's
# random seed (CI uses 1, so a run explores the same inputs each time; 0 = random).
#
# A crash becomes a regression: copy the input into tests/fuzz/corpus/<target>/
# (the suite replays it), fix the parser, and add a doctest case for the message.
set -uo pipefail
build=$1
seconds=$2
source_dir=$(cd "$(dirname "$0")" && pwd)
fuzz_dir=$build/fuzz
"$fuzz_dir/fuzz_make_seeds" "$fuzz_dir/seeds" || exit 1
mkdir -p "$fuzz_dir/crashes" "$fuzz_dir/logs"
failed=()
summary=()
for target in "$fuzz_dir"/fuzz_*; do
  name=$(basename "$target")
  [ "$name" = fuzz_make_seeds ] && continue
  corpus=$fuzz_dir/corpus/$name
  mkdir -p "$corpus"
  log=$fuzz_dir/logs/$name.log
  echo "fuzz: $name for ${seconds}s (log: $log)"
  dirs=("$corpus")  # libFuzzer stops at a missing folder: add the others only where they exist
  [ -d "$fuzz_dir/seeds/$name" ] && dirs+=("$fuzz_dir/seeds/$name")  # generated seeds (make_seeds)
  [ -d "$source_dir/corpus/$name" ] && dirs+=("$source_dir/corpus/$name")  # hand-made seeds and past crashes
  dict=()
  [ -f "$source_dir/$name.dict" ] && dict=(-dict="$source_dir/$name.dict")  # tokens worth trying (flag names)
  "$target" -seed="${FUZZ_SEED:-0}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$fuzz_dir/crashes/$name-" "${dict[@]}" "${dirs[@]}" >"$log" 2>&1
  status=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  if [ $status -ne 0 ]; then
    failed+=("$name")
    summary+=("$name: CRASH (exit $status) after ${execs:-?} executions; see $log")
    grep -E 'ERROR|fuzz:|SUMMARY|Test unit written' "$log" | head -n 8
  else
    summary+=("$name: ${execs:-?} executions in ${seconds}s, ${done_line:-no DONE line}, corpus $(ls "$corpus" | wc -l) files")
  fi
done
echo "---- fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
