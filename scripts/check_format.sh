#!/usr/bin/env bash
# Fails when a tracked C++ file is not clang-formatted (.clang-format). `--fix` rewrites them instead.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cpp' '*.h' '*.cc' '*.hpp' '*.cu')
((${#files[@]})) || exit 0
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run -Werror "${files[@]}" 2>/tmp/stride-format.$$; then
  grep -E '^[^ ]+:[0-9]+:[0-9]+: error' /tmp/stride-format.$$ | cut -d: -f1 | sort -u | sed 's/^/not formatted: /'
  rm -f /tmp/stride-format.$$
  echo "run: bash scripts/check_format.sh --fix" >&2
  exit 1
fi
rm -f /tmp/stride-format.$$
echo "format: ${#files[@]} files ok"
