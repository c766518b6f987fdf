# app_helpers.sh - what the end-to-end app tests (test_apps.sh, test_reliability.sh) share;
# sourced, not run. Sets APPS (BUILD_DIR/apps) and WORK (a temporary directory removed on
# exit, along with any background process listed in BG), counts failures, and writes the
# small structured corpus both tests train on.
# Usage (from a test): source "$(dirname "$0")/app_helpers.sh" "$1"
APPS="$1/apps"
WORK=$(mktemp -d)
BG=()
cleanup() {
  for p in "${BG[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
failures=0
pass() { echo "ok   - $1"; }
fail() { echo "FAIL - $1"; failures=$((failures + 1)); }
# expect_error "what" "text the message must contain" command...
expect_error() {
  local what=$1 needle=$2; shift 2
  local out
  out=$("$@" 2>&1) && { fail "$what: exited 0"; return; }
  grep -qF -- "$needle" <<<"$out" && pass "$what" || fail "$what: message lacks '$needle': $out"
}
# write_corpus FILE: a small corpus with structure to learn, documents separated by '%' lines.
write_corpus() {
  for i in $(seq 1 400); do
    echo "the cat sat on the mat number $((i % 7)) and the dog ran to the log"; echo "%"
  done > "$1"
}
# finish NAME: the summary line and the exit status (non-zero when any check failed).
finish() {
  if [ "$failures" -eq 0 ]; then echo "$1: all checks passed"; else echo "$1: $failures check(s) failed"; fi
  exit $((failures > 0))
}
