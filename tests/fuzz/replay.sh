#!/usr/bin/env bash
# tests/fuzz/replay.sh TARGET DIR... - runs a fuzz target once over every file in
# the given corpus folders (seeds and past crashes); fails if any input crashes.
# Missing folders are skipped; at least one input must exist.
set -euo pipefail
target=$1
shift
files=()
for dir in "$@"; do
  [ -d "$dir" ] || continue
  while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$dir" -type f ! -name '*.md' -print0 | sort -z)
done
if [ ${#files[@]} -eq 0 ]; then
  echo "replay: no inputs for $(basename "$target") in: $*" >&2
  exit 1
fi
# Given files (not folders), libFuzzer runs each input once and stops at the first crash.
"$target" -timeout=30 "${files[@]}" 2>&1 | tail -n 40
echo "replay: $(basename "$target"): ${#files[@]} inputs, no crash"
