#!/usr/bin/env bash
# check_format.sh - Fails when any C++/CUDA source tracked by git differs from what
# clang-format (the repo's .clang-format) would write. Fix with: make format
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || { echo "check_format: clang-format not found (run: make deps)"; exit 1; }
mapfile -t files < <(git ls-files -co --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh')
clang-format --dry-run -Werror "${files[@]}"
echo "check_format: ${#files[@]} files clang-format clean"
