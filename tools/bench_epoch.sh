#!/usr/bin/env bash
# bench_epoch.sh - the median "Average time per epoch" of a lesson program over several runs.
#
#   tools/bench_epoch.sh PROGRAM [FLAGS...]      REPEATS=5 by default
# Each run is a fresh process at the given flags; the program measures its own
# training loop (process start and data generation are outside it). Where the program
# prints its gradient all-reduce time ("Gradient all-reduce: X seconds per epoch", lesson
# 04's exposed part), its median is reported too.
set -euo pipefail
repeats=${REPEATS:-5}
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "$0: REPEATS must be a positive integer" >&2; exit 2; }
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: $0 PROGRAM [FLAGS...]" >&2; exit 2; }

epochs=() allreduces=()
for ((r = 1; r <= repeats; r++)); do
    out=$("$@")
    t=$(sed -n 's/^Average time per epoch: \([0-9.]*\) seconds$/\1/p' <<<"$out")
    [ -n "$t" ] || { echo "$0: run $r printed no 'Average time per epoch' line" >&2; exit 1; }
    epochs+=("$t")
    a=$(sed -n 's/^Gradient all-reduce: \([0-9.]*\) seconds per epoch.*/\1/p' <<<"$out")
    [ -z "$a" ] || allreduces+=("$a")
done

# The median of the values on stdin, in milliseconds.
median_ms() {
    sort -g | awk '{ v[NR] = $1 * 1000 }
        END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
range=$(printf '%s\n' "${epochs[@]}" | sort -g | awk '{ v[NR] = $1 * 1000 }
    END { printf "min: %.3f ms  max: %.3f ms", v[1], v[NR] }')
echo "$*"
line="runs: $repeats  median: $(printf '%s\n' "${epochs[@]}" | median_ms) ms per epoch  ($range)"
if [ ${#allreduces[@]} -eq "$repeats" ]; then
    line+="  all-reduce: median $(printf '%s\n' "${allreduces[@]}" | median_ms) ms per epoch"
fi
echo "$line"
