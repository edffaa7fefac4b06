#!/usr/bin/env bash
# trace_plot.sh - a PNG of a few steps of a --trace file, for people without a browser.
#
#   tools/trace_plot.sh FILE OUT.png [STEPS]     STEPS: optimizer steps to draw (default 3)
#
# One row per rank (and one beside it for its communication thread, lesson 04), one box
# per span, coloured by phase, from the middle of the run. Needs python3 and gnuplot.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 FILE OUT.png [STEPS]" >&2; exit 2; }
steps=${3:-3}
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || { echo "trace_plot.sh: STEPS must be a positive integer, got '$steps'" >&2; exit 2; }
[ -f "$1" ] || { echo "trace_plot.sh: $1: no such file" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "trace_plot.sh: gnuplot not found (./setup.sh installs it)" >&2; exit 1; }
plot=$(python3 "$here/trace_plot.py" "$1" "$2" "$steps")
gnuplot <<<"$plot"
echo "trace_plot.sh: $2 ($steps steps of $1)"
