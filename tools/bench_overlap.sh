#!/usr/bin/env bash
# bench_overlap.sh - lesson 04 with its buckets overlapped and not: epoch time, exposed
# all-reduce time and speedup, as a Markdown table (make bench-04).
#
#   tools/bench_overlap.sh [--preset default|large|both] [--ranks "1 2 4"] [--repeats R]
#
# Every configuration runs R times (default 5) through tools/bench_epoch.sh: the medians
# of the program's own epoch time and of its exposed all-reduce time (what no compute
# hid). The speedup is the 1-rank epoch time of the same mode over this one. Presets as
# tools/bench.sh's: default (2,000 samples, batch 32, hidden 64: 17.9 KB of gradients)
# and large (20,000 samples, batch 256, hidden 512: 1.05 MB).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

presets=both ranks="1 2 4" repeats=5
while [ $# -gt 0 ]; do
    case "$1" in
    --preset | --ranks | --repeats)
        [ $# -ge 2 ] || { echo "bench_overlap.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
    esac
    case "$1" in
    --preset) presets=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench_overlap.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$presets" in
default | large) ;;
both) presets="default large" ;;
*) echo "bench_overlap.sh: --preset must be default, large or both" >&2; exit 2 ;;
esac
[[ "$ranks" =~ ^[1-9][0-9]*( [1-9][0-9]*)*$ ]] || { echo "bench_overlap.sh: --ranks must be positive integers, as \"1 2 4\"" >&2; exit 2; }
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "bench_overlap.sh: --repeats must be a positive integer" >&2; exit 2; }
program=build/ddp_overlap
[ -x "$program" ] || { echo "bench_overlap.sh: $program is missing: run 'make lesson-04' first" >&2; exit 1; }

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1); commit $(git describe --always --dirty 2>/dev/null || echo unknown); $repeats runs each"
echo
echo "| preset | ranks | buckets | epoch (median) | exposed all-reduce per epoch | speedup over 1 rank |"
echo "| --- | ---: | --- | ---: | ---: | ---: |"
for preset in $presets; do
    case "$preset" in
    default) workload=(--data-size 2000 --batch-size 32 --hidden-size 64 --epochs 50) ;;
    large) workload=(--data-size 20000 --batch-size 256 --hidden-size 512 --epochs 3) ;;
    esac
    for mode in overlap no-overlap; do
        flags=()
        [ "$mode" = overlap ] || flags=(--no-overlap)
        one_rank=
        for n in $ranks; do
            summary=$(REPEATS=$repeats tools/bench_epoch.sh "$program" --device cpu --gpus "$n" \
                "${workload[@]}" "${flags[@]}" | tail -n 1)
            epoch=$(sed -n 's/.*  median: \([0-9.]*\) ms per epoch.*/\1/p' <<<"$summary")
            exposed=$(sed -n 's/.*all-reduce: median \([0-9.]*\) ms per epoch.*/\1/p' <<<"$summary")
            [ "$n" != 1 ] || one_rank=$epoch
            speedup=$([ -n "$one_rank" ] && awk -v a="$one_rank" -v b="$epoch" 'BEGIN { printf "%.2fx", a / b }' || echo "-")
            echo "| $preset | $n | ${mode/no-overlap/after the backward pass (--no-overlap)} | $epoch ms | $exposed ms | $speedup |"
        done
    done
done
