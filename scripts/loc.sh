#!/usr/bin/env bash
# Counts lines of code in src/ the way tokei does: blank lines, `//` comment
# lines (doc comments included) and `/* */` blocks are free. Prints one line
# per file, then the total, and fails when the total is over the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=1000
total=0
# Every .rs file under src/, subfolders included.
while IFS= read -r file; do
  count=$(awk '
    { line = $0; sub(/^[ \t]+/, "", line) }
    in_block { if (line ~ /\*\//) { in_block = 0 }; next }
    line == "" { next }
    line ~ /^\/\// { next }
    line ~ /^\/\*/ { if (line !~ /\*\//) { in_block = 1 }; next }
    { code++ }
    END { print code + 0 }
  ' "$file")
  printf '%-20s %5d\n' "$file" "$count"
  total=$((total + count))
done < <(find src -name '*.rs' | sort)
printf '%-20s %5d (budget %d)\n' "total" "$total" "$budget"
if [ "$total" -gt "$budget" ]; then
  echo "src/ is over the line budget by $((total - budget)) lines" >&2
  exit 1
fi
