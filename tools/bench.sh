#!/usr/bin/env bash
# bench.sh - the timing harness: every lesson on every device it can use, beside PyTorch.
#
#   tools/bench.sh [--repeats R] [--preset default|large] [--max-ranks N] [--bind] [--quick]
#
# Runs each configuration once to warm up, then R times (default 5), in rounds that take
# every configuration in turn, and reports the median, min and max of the epoch time
# that the programs measure themselves (the training loop only: not process start, CUDA
# context or NCCL set-up). Derived: samples/s, speedup T1/TN and efficiency T1/(N*TN)
# against the same implementation and backend with one rank, and the share of the epoch
# spent in the gradient all-reduce. The all-reduce's sweeps of message sizes (the ring,
# NCCL on a GPU machine, Open MPI where installed) run R rounds the same way, and their
# tables hold the median time per size.
# Writes results/bench-DATE-COMMIT.csv (with the machine, versions and each command),
# and with gnuplot (tools/bench_plot.sh, which also redraws them from the CSV):
# ...-scaling.png (epoch time and speedup against ranks, min-max bars, the ideal line),
# ...-loss.png (the loss curves of every configuration), ...-allreduce.png (bus
# bandwidth against message size) and ...-allreduce-latency.png (time against size,
# the model's 17.9 KB marked). Prints a Markdown table last.
#
# Presets: default is the original app's workload (2,000 samples, batch 32, hidden 64);
# large (20,000 samples, batch 256, hidden 512) is wide enough that compute dominates.
# Strong scaling keeps the data fixed as ranks are added; weak scaling gives every rank
# the same amount. --bind: lessons 02 and 04 and the ring's sweep bind each rank to a CPU
# of its own (their --bind; not lesson 03's two nodes, which would share the first CPU,
# nor PyTorch). --quick: one short run each, for a smoke test (under a minute).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
. tools/port_lib.sh

invocation="tools/bench.sh $*"
repeats=5 preset=default quick=0 max_ranks=$(nproc) bind=()
while [ $# -gt 0 ]; do
    case "$1" in
    --repeats | --preset | --max-ranks)
        [ $# -ge 2 ] || { echo "bench.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
    esac
    case "$1" in
    --repeats) repeats=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --max-ranks) max_ranks=$2; shift 2 ;;
    --bind) bind=(--bind); shift ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,26s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --repeats must be a positive integer" >&2; exit 2; }
[[ "$max_ranks" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --max-ranks must be a positive integer" >&2; exit 2; }
[ ${#bind[@]} -eq 0 ] || [ "$max_ranks" -le "$(nproc)" ] ||
    { echo "bench.sh: --bind: --max-ranks $max_ranks is more than the $(nproc) CPUs this may run on" >&2; exit 2; }
case "$preset" in
default) workload=(--data-size 2000 --batch-size 32 --hidden-size 64 --epochs 50) ;;
large) workload=(--data-size 20000 --batch-size 256 --hidden-size 512 --epochs 3) ;;
*) echo "bench.sh: --preset must be default or large" >&2; exit 2 ;;
esac
if [ "$quick" -eq 1 ]; then
    repeats=1
    [ "$max_ranks" -le 2 ] || max_ranks=2
    workload=(--data-size 800 --batch-size 32 --hidden-size 64 --epochs 3)
fi
data_size=${workload[1]}

for p in hello_gpu multi_gpu multi_node ddp_overlap allreduce_bench; do
    [ -x "build/$p" ] || { echo "bench.sh: build/$p is missing: run 'make' first" >&2; exit 1; }
done
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
torch_python=
for py in python3 /usr/bin/python3; do
    if "$py" -c 'import torch' 2>/dev/null; then torch_python=$py; break; fi
done

stamp=$(date +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
mkdir -p results
base=results/bench-$stamp
csv=$base.csv
curves=$base-curves
mkdir -p "$curves"

# ----------------------------------------------------------------------------
# the machine, for the CSV's header

{
    echo "# $invocation (preset $preset, $repeats runs after a warm-up)"
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# machine: $(hostname), $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
    echo "# gpu: $( [ "$gpus" -gt 0 ] && nvidia-smi -L | head -n 1 || echo none)"
    echo "# cc: $(cc --version | head -n 1)"
    echo "# nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || true)"
    echo "# torch: $( [ -n "$torch_python" ] && "$torch_python" -c 'import torch; print(torch.__version__)' || echo absent)"
    echo "name,impl,device,backend,nodes,ranks,scaling,data_size,median_s,min_s,max_s,allreduce_s,final_eval_loss,samples_per_s,speedup,efficiency,command"
} >"$csv"

# ----------------------------------------------------------------------------
# one configuration

# Prints "epoch_s allreduce_s final_eval_loss" from a program's output on stdin.
parse_run() {
    awk '{ sub(/^\[[0-9.]+(#[0-9]+)?\] /, "") } # launch.sh prefixes each line with its node
         /^Average time per epoch:/ { t = $5 }
         /^Gradient all-reduce:/ { a = $3 }
         /^RESULT / { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "seconds_per_epoch") t = kv[2]; if (kv[1] == "final_eval_loss") l = kv[2] } }
         /^Epoch \[/ { l = $NF }
         END { if (t == "") exit 1; print t, (a == "" ? 0 : a), l }'
}

# The matrix is run in rounds: a warm-up round, then `repeats` rounds, each running every
# configuration once in turn, so that a noisy minute of a shared machine falls on all of
# them alike instead of on whichever happened to be running. A configuration's runs go
# to $runs/NAME, one "epoch_s allreduce_s final_eval_loss" line each.
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
configs=()

# Adds a configuration to the matrix. NAME IMPL DEVICE BACKEND NODES RANKS SCALING DATA CMD...
bench_config() {
    local name=$1 command
    printf -v command '%q ' "${@:9}"
    configs+=("$name")
    printf '%s\n' "${@:2:7}" >"$runs/$name.meta"
    printf '%s\n' "$command" >"$runs/$name.command"
    : >"$runs/$name.runs"
}

# Runs configuration NAME once, appending to its runs (the warm-up round keeps nothing).
# A configuration that fails is named once and left out of the later rounds.
run_config() {
    local name=$1 round=$2 out
    [ ! -e "$runs/$name.failed" ] || return 0
    local command
    command=$(cat "$runs/$name.command")
    [ "$round" -gt 0 ] || echo "bench: $name: $command" >&2
    if ! out=$(eval "$command" 2>&1 | parse_run); then
        echo "bench: $name failed: $command" >&2
        touch "$runs/$name.failed"
        return 0
    fi
    [ "$round" -eq 0 ] || echo "$out" >>"$runs/$name.runs"
}

# Appends NAME's row to the CSV, after one more run for its loss curve (the C programs
# write it with --out; torch's is parsed from its output).
config_row() {
    local name=$1 impl device backend nodes ranks scaling data command
    [ ! -e "$runs/$name.failed" ] || return 0
    { read -r impl; read -r device; read -r backend; read -r nodes; read -r ranks; read -r scaling; read -r data; } <"$runs/$name.meta"
    command=$(cat "$runs/$name.command")
    if [ "$impl" = torch ]; then
        eval "$command" 2>/dev/null | awk -F'[][/:, ]+' 'BEGIN { print "epoch,train_loss,eval_loss" } /^Epoch \[/ { print $2 "," $7 "," $10 }' >"$curves/$name.csv"
    else
        eval "$command --out \"\$curves/\$name\" --plot none" >/dev/null 2>&1 && mv "$curves/$name/losses.csv" "$curves/$name.csv" && rm -rf "${curves:?}/$name"
    fi
    local n_train=$((data * 8 / 10)) times all loss
    times=$(cut -d' ' -f1 "$runs/$name.runs")
    all=$(cut -d' ' -f2 "$runs/$name.runs")
    loss=$(tail -n 1 "$runs/$name.runs" | cut -d' ' -f3)
    # shellcheck disable=SC2086 # one value per line, no spaces
    median_min_max $times | awk -v row="$name,$impl,$device,$backend,$nodes,$ranks,$scaling,$data" \
        -v comm="$(median_min_max $all | cut -d' ' -f1)" -v loss="$loss" -v n_train="$n_train" -v cmd="${command% }" \
        '{ printf "%s,%.6f,%.6f,%.6f,%.6f,%s,%.0f,,,\"%s\"\n", row, $1, $2, $3, comm, loss, n_train / $1, cmd }' >>"$csv"
}

# Prints "median min max" of its arguments.
median_min_max() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { printf "%s %s %s\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR] }'
}

# ----------------------------------------------------------------------------
# the matrix (lesson 04 as "buckets": the ring with its gradient buckets overlapped)

bench_config "c-1-cpu" c cpu none 1 1 strong "$data_size" build/hello_gpu --device cpu "${workload[@]}"
[ "$gpus" -eq 0 ] || bench_config "c-1-cuda" c cuda none 1 1 strong "$data_size" build/hello_gpu --device cuda "${workload[@]}"
# each way a GPU runs a batch (--kernels; lesson 01's README); c-1-cuda is auto's choice
for kernels in unfused graph fused; do
    [ "$gpus" -eq 0 ] || bench_config "c-1-cuda-$kernels" c cuda none 1 1 strong "$data_size" build/hello_gpu --device cuda --kernels "$kernels" "${workload[@]}"
done
for ((n = 1; n <= max_ranks; n++)); do
    bench_config "c-ring-$n-cpu" c cpu ring 1 "$n" strong "$data_size" build/multi_gpu --device cpu --backend ring --gpus "$n" "${bind[@]}" "${workload[@]}"
    weak=(--data-size $((data_size * n)) "${workload[@]:2}")
    [ "$n" -eq 1 ] || bench_config "c-ring-$n-cpu-weak" c cpu ring 1 "$n" weak $((data_size * n)) build/multi_gpu --device cpu --backend ring --gpus "$n" "${bind[@]}" "${weak[@]}"
    bench_config "c-buckets-$n-cpu" c cpu buckets 1 "$n" strong "$data_size" build/ddp_overlap --device cpu --backend ring --gpus "$n" "${bind[@]}" "${workload[@]}"
done
for ((n = 1; n <= gpus; n++)); do
    bench_config "c-nccl-$n-cuda" c cuda nccl 1 "$n" strong "$data_size" build/multi_gpu --device cuda --backend nccl --gpus "$n" "${workload[@]}"
done
port=$(port_for 320)
bench_config "c-2nodes-cpu" c cpu ring 2 2 strong "$data_size" \
    env DDP_RSH=tools/local_rsh.sh ./launch.sh --mode multi-node --master-node 127.0.0.1 \
    --worker-nodes 127.0.0.1 --gpus-per-node 1 --port "$port" --device cpu --backend ring "${workload[@]}"
if [ -n "$torch_python" ]; then
    for ((n = 1; n <= max_ranks; n++)); do
        bench_config "torch-$n-cpu" torch cpu gloo 1 "$n" strong "$data_size" "$torch_python" tools/torch_reference.py --ranks "$n" "${workload[@]}"
    done
else
    echo "bench: PyTorch not found (apt-get install python3-torch): no reference rows" >&2
fi

for ((round = 0; round <= repeats; round++)); do
    [ "$round" -eq 0 ] || echo "bench: round $round of $repeats" >&2
    for name in "${configs[@]}"; do run_config "$name" "$round"; done
done
for name in "${configs[@]}"; do config_row "$name"; done

# ----------------------------------------------------------------------------
# speedup and efficiency against the same implementation with one rank

awk -F, -v OFS=, '
    /^#/ || /^name,/ { print; next }
    { row[NR] = $0; impl[NR] = $2; dev[NR] = $3; back[NR] = $4; ranks[NR] = $6; scal[NR] = $7; t[NR] = $9
      if ($6 == 1 && $7 == "strong") base[$2 "," $3 "," $4] = $9 }
    END {
        for (i = 1; i <= NR; i++) {
            if (!(i in row)) continue
            key = impl[i] "," dev[i] "," back[i]
            $0 = row[i]
            if (key in base && t[i] > 0) {
                s = base[key] / t[i]
                if (scal[i] == "weak") { $15 = sprintf("%.2f", s * ranks[i]); $16 = sprintf("%.2f", s) }
                else { $15 = sprintf("%.2f", s); $16 = sprintf("%.2f", s / ranks[i]) }
            }
            print
        }
    }' "$csv" >"$csv.tmp" && mv "$csv.tmp" "$csv"

# ----------------------------------------------------------------------------
# the all-reduce's bus bandwidth, as nccl-tests measures it

# Each engine's sweep of sizes runs once per round, the engines in turn, as the matrix
# does; its table, $base-allreduce-ENGINE.txt, holds per size the median time of the
# rounds (algbw and busbw recomputed from it, #wrong the most any round counted).
max_bytes=4M
[ "$quick" -eq 0 ] || max_bytes=64K
sweeps=(ring)
[ "$gpus" -lt 1 ] || sweeps+=(nccl)
# Open MPI beside it, where it is installed: shared memory, and TCP as the ring uses sockets.
! command -v mpirun >/dev/null 2>&1 || sweeps+=(mpi-vader mpi-tcp)

# Runs engine NAME's sweep once, printing its table.
run_sweep() {
    case "$1" in
    ring) build/allreduce_bench --backend ring --ranks 2 "${bind[@]}" --min-bytes 1K --max-bytes "$max_bytes" ;;
    nccl) build/allreduce_bench --backend nccl --ranks "$gpus" --min-bytes 1K --max-bytes "$max_bytes" ;;
    mpi-*) OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe \
        --mca btl "self,${1#mpi-}" -np 2 build/allreduce_bench --backend mpi --min-bytes 1K \
        --max-bytes "$max_bytes" 2>/dev/null ;;
    esac
}

for ((round = 1; round <= repeats; round++)); do
    for sweep in "${sweeps[@]}"; do
        [ ! -e "$runs/sweep-$sweep.failed" ] || continue
        run_sweep "$sweep" >"$runs/sweep-$sweep.$round" || {
            touch "$runs/sweep-$sweep.failed"
            echo "bench: the $sweep all-reduce sweep failed (MPI: a build without mpicc?); no curve for it" >&2
        }
    done
done

# One engine's table from its rounds' tables: the first's header, then per size the median
# time (median_min_max), algbw and busbw from it, and the most #wrong any round counted.
merge_sweeps() {
    local sweep=$1 first size floats time wrong ranks
    first=$runs/sweep-$sweep.1
    head -n 2 "$first"
    ranks=$(sed -n '1s/.*, \([0-9]*\) ranks;.*/\1/p' "$first")
    while read -r size floats; do
        # shellcheck disable=SC2046 # one time per round, no spaces
        time=$(median_min_max $(awk -v b="$size" '$1 == b { print $3 }' "$runs/sweep-$sweep".[0-9]*) | cut -d' ' -f1)
        wrong=$(awk -v b="$size" '$1 == b && $6 > w { w = $6 } END { print w + 0 }' "$runs/sweep-$sweep".[0-9]*)
        awk -v b="$size" -v f="$floats" -v t="$time" -v w="$wrong" -v n="$ranks" 'BEGIN {
            algbw = b / t / 1e3
            printf "%12d %10d %10.2f %12.3f %12.3f %8d\n", b, f, t, algbw, algbw * 2 * (n - 1) / n, w }'
    done < <(awk '!/^#/ && NF == 6 && $1 ~ /^[0-9]+$/ { print $1, $2 }' "$first")
    if [ "$repeats" -eq 1 ]; then echo "# time: one sweep"; else echo "# time: the median of $repeats sweeps, one per round"; fi
}

for sweep in "${sweeps[@]}"; do
    [ -e "$runs/sweep-$sweep.failed" ] || merge_sweeps "$sweep" >"$base-allreduce-$sweep.txt"
done

# ----------------------------------------------------------------------------
# plots

# tools/bench_plot.sh draws them from the files above, and redraws them on its own.
tools/bench_plot.sh "$csv"

# ----------------------------------------------------------------------------
# the table

echo
echo "Results: $csv"
echo
echo "| configuration | ranks | median ms/epoch (min-max) | samples/s | speedup | efficiency | all-reduce share | final eval loss |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
awk -F, '!/^#/ && !/^name,/ {
    share = ($9 > 0 && $12 > 0) ? sprintf("%.0f%%", 100 * $12 / $9) : "-"
    printf "| %s | %s | %.3f (%.3f-%.3f) | %s | %s | %s | %s | %s |\n", $1, $6, 1000 * $9, 1000 * $10, 1000 * $11, $14, ($15 == "" ? "-" : $15), ($16 == "" ? "-" : $16), share, $13
}' "$csv"
