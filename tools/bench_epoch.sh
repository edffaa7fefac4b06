#!/usr/bin/env bash
# bench_epoch.sh - the median "Average time per epoch" of a lesson program over several runs.
#
#   tools/bench_epoch.sh PROGRAM [FLAGS...]      REPEATS=5 by default
# Each run is a fresh process at the given flags; the program measures its own
# training loop (process start and data generation are outside it).
set -euo pipefail
repeats=${REPEATS:-5}
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: $0 PROGRAM [FLAGS...]" >&2; exit 2; }

times=()
for ((r = 1; r <= repeats; r++)); do
    t=$("$@" | sed -n 's/^Average time per epoch: \([0-9.]*\) seconds$/\1/p')
    [ -n "$t" ] || { echo "$0: run $r printed no 'Average time per epoch' line" >&2; exit 1; }
    times+=("$t")
done
printf '%s\n' "${times[@]}" | sort -g | awk -v cmd="$*" '
    { v[NR] = $1 * 1000 }
    END {
        median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%s\nruns: %d  min: %.3f ms  median: %.3f ms  max: %.3f ms per epoch\n", cmd, NR, v[1], median, v[NR]
    }'
