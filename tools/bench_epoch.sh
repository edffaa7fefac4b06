#!/usr/bin/env bash
# bench_epoch.sh - the median "Average time per epoch" of a lesson program over several runs.
#
#   tools/bench_epoch.sh PROGRAM [FLAGS...]      REPEATS=5 by default
#   COPIES=2 tools/bench_epoch.sh PROGRAM ...    two copies at once in every run
# Each run is a fresh process at the given flags; the program measures its own
# training loop (process start and data generation are outside it). Where the program
# prints its gradient all-reduce time ("Gradient all-reduce: X seconds per epoch", lesson
# 04's exposed part), its median is reported too. With COPIES=N every run starts N
# copies of the program at once, and each copy's epoch time counts: what N processes
# that never wait for each other get from this machine's cores, memory and neighbours.
# What a run writes on stderr (--bind's lines, say) is shown only if the run fails.
set -euo pipefail
repeats=${REPEATS:-5} copies=${COPIES:-1}
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "$0: REPEATS must be a positive integer" >&2; exit 2; }
[[ "$copies" =~ ^[1-9][0-9]?$ ]] || { echo "$0: COPIES must be an integer in [1, 99]" >&2; exit 2; }
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: $0 PROGRAM [FLAGS...]" >&2; exit 2; }

# One run: the program's output, each copy's after the other's; fails if any copy does.
run_copies() {
    [ "$copies" -gt 1 ] || { "$@"; return; }
    local dir pids=() c failed=0
    dir=$(mktemp -d)
    for ((c = 1; c <= copies; c++)); do
        "$@" >"$dir/$c" &
        pids+=($!)
    done
    for c in "${pids[@]}"; do wait "$c" || failed=1; done
    [ "$failed" -eq 1 ] || cat "$dir"/*
    rm -rf "$dir"
    return "$failed"
}

epochs=() allreduces=()
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for ((r = 1; r <= repeats; r++)); do
    out=$(run_copies "$@" 2>"$errors") || { cat "$errors" >&2; echo "$0: run $r failed: $*" >&2; exit 1; }
    mapfile -t t < <(sed -n 's/^Average time per epoch: \([0-9.]*\) seconds$/\1/p' <<<"$out")
    [ ${#t[@]} -eq "$copies" ] || { echo "$0: run $r printed ${#t[@]} 'Average time per epoch' lines, not $copies" >&2; exit 1; }
    epochs+=("${t[@]}")
    mapfile -t a < <(sed -n 's/^Gradient all-reduce: \([0-9.]*\) seconds per epoch.*/\1/p' <<<"$out")
    allreduces+=("${a[@]}")
done

# The median of the values on stdin, in milliseconds.
median_ms() {
    sort -g | awk '{ v[NR] = $1 * 1000 }
        END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
range=$(printf '%s\n' "${epochs[@]}" | sort -g | awk '{ v[NR] = $1 * 1000 }
    END { printf "min: %.3f ms  max: %.3f ms", v[1], v[NR] }')
if [ "$copies" -eq 1 ]; then echo "$*"; else echo "$* ($copies copies at once)"; fi
line="runs: $repeats  median: $(printf '%s\n' "${epochs[@]}" | median_ms) ms per epoch  ($range)"
if [ ${#allreduces[@]} -eq ${#epochs[@]} ]; then
    line+="  all-reduce: median $(printf '%s\n' "${allreduces[@]}" | median_ms) ms per epoch"
fi
echo "$line"
