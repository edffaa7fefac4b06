#!/usr/bin/env bash
# bench_plot.sh - the pictures of a tools/bench.sh run, drawn from its files (again at will).
#
#   tools/bench_plot.sh results/bench-DATE-COMMIT.csv
#
# Beside the CSV, with gnuplot:
#   ...-scaling.png    epoch time and speedup against ranks: the median of the runs with
#                      min-max error bars, one series per lesson and backend, named in
#                      words ("C, ring, 1 node (lesson 02)"), lesson 03's nodes included
#   ...-loss.png       the eval loss of every configuration, per epoch
#   ...-allreduce.png  all-reduce bus bandwidth against message size
#   ...-allreduce-latency.png  all-reduce time against message size, log-log, with the
#                      model's gradients (4481 floats, 17.9 KB) marked
# Series whose points lie on top of each other (the ring and lesson 04's buckets train
# the same losses) differ in colour, marker and dash. Without gnuplot: one line, no
# pictures, status 0 (the CSV has the data).
set -euo pipefail
csv=${1:-}
if [ $# -ne 1 ] || [ ! -f "$csv" ]; then
    echo "bench_plot.sh: usage: tools/bench_plot.sh results/bench-DATE-COMMIT.csv" >&2
    exit 2
fi
if ! command -v gnuplot >/dev/null 2>&1; then
    echo "bench: gnuplot not found: no plots (the CSV has the data)" >&2
    exit 0
fi
base=${csv%.csv}
curves=$base-curves
settings=$(sed -n '1s/^#.*(\(.*\))$/\1/p' "$csv") # "preset default, 5 runs after a warm-up"
model_bytes=$((4481 * 4))                          # the gradients that every step all-reduces
markers=(4 6 8 12 5 7 9 13 10 14 11 15)            # open square, circle, triangle, diamond, ...
colours=('#1f77b4' '#d62728' '#2ca02c' '#9467bd' '#ff7f0e' '#8c564b' '#e377c2' '#17becf' '#7f7f7f' '#bcbd22')

# The words for a row of the CSV (impl, device, backend, nodes, scaling), as an awk function.
label_awk='
function label(impl, device, backend, nodes, scaling,    what, lesson) {
    if (impl == "torch") { what = "PyTorch DDP, " backend; lesson = "" }
    else if (backend == "none") { what = "C, one process"; lesson = "lesson 01" }
    else if (backend == "buckets") { what = "C, ring, buckets overlapped"; lesson = "lesson 04" }
    else if (backend == "nccl") { what = "C, NCCL"; lesson = "lesson 02" }
    else if (nodes > 1) { what = "C, ring, " nodes " nodes on one machine"; lesson = "lesson 03" }
    else { what = "C, ring, 1 node"; lesson = "lesson 02" }
    if (device == "cuda") what = what ", GPU"
    if (scaling == "weak") what = what ", weak scaling"
    return what (lesson != "" ? " (" lesson ")" : "")
}'

# ----------------------------------------------------------------------------
# scaling: one data block per series, in the CSV's order

# ranks, median, min, max (seconds), then speedup and its range from the same runs
awk -F, "$label_awk"'
    !/^#/ && !/^name,/ && $9 > 0 {
        key = label($2, $3, $4, $5, $7)
        if (!(key in rows)) order[++n] = key
        s = ($15 == "") ? 0 : $15
        rows[key] = rows[key] sprintf("%s %s %s %s %s %s %s\n", $6, $9, $10, $11, s, s * $9 / $11, s * $9 / $10)
    }
    END { for (i = 1; i <= n; i++) printf "\"%s\"\n%s\n\n", order[i], rows[order[i]] }' "$csv" >"$base-scaling.dat"
series=$(grep -c '^"' "$base-scaling.dat" || true)
max_ranks=$(awk -F, '!/^#/ && !/^name,/ && $6 > m { m = $6 } END { print m + 0 }' "$csv")

# The gnuplot clauses of the series of the scaling plot: columns Y:LOW:HIGH.
scaling_clauses() {
    local y=$1 low=$2 high=$3 i sep=''
    for ((i = 0; i < series; i++)); do
        printf "%s'%s' index %d using 1:%d:%d:%d with yerrorlines lw 2 lc rgb '%s' pt %d ps 1.4 dt %d title columnheader(1)" \
            "$sep" "$base-scaling.dat" "$i" "$y" "$low" "$high" "${colours[i % ${#colours[@]}]}" "${markers[i % ${#markers[@]}]}" $((i % 4 + 1))
        sep=', '
    done
}

draw_scaling() {
    [ "$series" -gt 0 ] || return 0
    gnuplot <<GNUPLOT
set terminal pngcairo size 1300,760 noenhanced
set output '$base-scaling.png'
set multiplot title 'Scaling on this machine ($settings; bars: min to max)'
set key at screen 0.5, screen 0.02 center bottom box maxrows 4
set bmargin 4
set grid
set xlabel 'ranks'
set xrange [0.7:$max_ranks + 0.3]
set xtics 1
set size 0.5, 0.8
set origin 0, 0.15
set ylabel 'seconds per epoch'
set logscale y
plot $(scaling_clauses 2 3 4)
unset logscale y
unset key
set origin 0.5, 0.15
set ylabel 'speedup T1/TN (weak scaling: N T1/TN)'
set yrange [0:*]
set label 1 'ideal' at $max_ranks, $max_ranks offset -1,-1 right textcolor rgb 'gray40'
plot x with lines dt 2 lc rgb 'gray' notitle, $(scaling_clauses 5 6 7)
unset multiplot
GNUPLOT
}

# ----------------------------------------------------------------------------
# the loss curves, one per configuration

draw_loss() {
    local clauses='' i=0 name title every
    # a marker every tenth of the epochs, so that curves on top of each other still show
    every=$(awk -F, 'FNR > 1 && $1 > m { m = $1 } END { print (m >= 20 ? int(m / 10) : 1) }' "$curves"/*.csv 2>/dev/null || echo 1)
    while IFS='|' read -r name title; do
        [ -f "$curves/$name.csv" ] || continue
        clauses+="${clauses:+, }'$curves/$name.csv' using 1:3 skip 1 with linespoints lw 2 lc rgb '${colours[i % ${#colours[@]}]}' pt ${markers[i % ${#markers[@]}]} pi $every ps 1.2 dt $((i % 4 + 1)) title '$title'"
        i=$((i + 1))
    done < <(awk -F, "$label_awk"'
        !/^#/ && !/^name,/ { printf "%s|%s, %s rank%s\n", $1, label($2, $3, $4, $5, $7), $6, ($6 > 1 ? "s" : "") }' "$csv")
    [ -n "$clauses" ] || return 0
    gnuplot <<GNUPLOT
set terminal pngcairo size 1200,900 noenhanced
set output '$base-loss.png'
set title 'Eval loss of every configuration ($settings)'
set datafile separator ','
set grid
set xlabel 'epoch'
set xrange [1:*]
set ylabel 'MSE loss'
set logscale y
set yrange [0.007:*]
set ytics (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10)
set format y '%g'
set key at screen 0.5, screen 0.01 center bottom box maxrows $(((i + 2) / 2)) font ',10'
set bmargin at screen $(awk -v n=$(((i + 2) / 2)) 'BEGIN { printf "%.2f", 0.1 + 0.022 * n }')
set xtics $([ "$every" -gt 1 ] && echo auto || echo 1)
plot $clauses, 0.01 with lines dt 2 lw 2 lc rgb 'gray30' title 'noise floor (0.01: the variance of the data noise)'
GNUPLOT
}

# ----------------------------------------------------------------------------
# the all-reduce, as allreduce_bench prints it

# The words for an allreduce_bench table: its engine (from its header) and its ranks.
allreduce_label() {
    local file=$1 engine ranks
    engine=$(sed -n '1s/.*backend \([^,]*\),.*/\1/p' "$file")
    ranks=$(sed -n '1s/.*, \([0-9]*\) ranks;.*/\1/p' "$file")
    case "$engine:${file##*-}" in
    ring/shm:*) engine="C ring (lessons 02-04), shared memory" ;;
    ring/socket:*) engine="C ring (lessons 02-04), sockets" ;;
    nccl:*) engine="NCCL" ;;
    mpi:vader.txt) engine="Open MPI MPI_Allreduce, shared memory (vader)" ;;
    mpi:tcp.txt) engine="Open MPI MPI_Allreduce, TCP" ;;
    esac
    echo "$engine, $ranks ranks"
}

# The gnuplot clauses of every table, column COLUMN against the size.
allreduce_clauses() {
    local column=$1 i=0 file sep=''
    for file in "$base"-allreduce-*.txt; do
        [ -f "$file" ] || continue
        printf "%s'%s' using 1:%d with linespoints lw 2 lc rgb '%s' pt %d ps 1.2 dt %d title '%s'" \
            "$sep" "$file" "$column" "${colours[i % ${#colours[@]}]}" "${markers[i % ${#markers[@]}]}" $((i % 4 + 1)) "$(allreduce_label "$file")"
        sep=', ' i=$((i + 1))
    done
}

draw_allreduce() {
    [ -n "$(allreduce_clauses 5)" ] || return 0
    gnuplot <<GNUPLOT
set terminal pngcairo size 1000,560 noenhanced
set grid
set key top left box opaque
set xlabel 'message size (bytes)'
set logscale x 2
set format x '%.0b %BB'
set arrow 1 from $model_bytes, graph 0 to $model_bytes, graph 1 nohead dt 2 lw 2 lc rgb 'gray30'
set label 1 "the model's gradients:\n4481 floats, 17.9 KB" at $model_bytes, graph 0.08 offset 0.6,0 textcolor rgb 'gray30'
set output '$base-allreduce.png'
set title 'All-reduce bus bandwidth on this machine'
set ylabel 'bus bandwidth (GB/s)'
plot $(allreduce_clauses 5)
set output '$base-allreduce-latency.png'
set title 'All-reduce time on this machine (the slowest rank, mean of many calls; median of the rounds)'
set ylabel 'time (us)'
set logscale y
set format y '%g'
set key top left box opaque
plot $(allreduce_clauses 3)
GNUPLOT
}

status=0
draw_scaling || status=1
draw_loss || status=1
draw_allreduce || status=1
[ "$status" -eq 0 ] || echo "bench: gnuplot failed; the CSV has the data" >&2
exit 0
