#!/usr/bin/env bash
# soak.sh - the CPU path under load on this machine's loopback (make soak).
#   usage: tests/soak.sh [BUILD_DIR]      (default build; the master port: DDP_PORT_BASE + 300,
#                                          see tools/port_lib.sh)
#
# 1) lesson 02 with 16 ranks (on however few cores): it completes and its replicas agree;
# 2) lesson 03, 3 nodes x 4 ranks meeting at 127.0.0.1: every node completes, and the
#    replicas of all 12 ranks agree;
# 3) 50 two-node jobs of one epoch back to back on the same master port: each completes, so
#    the port is free again at once (no "Address already in use" from TIME_WAIT).
# Prints every command, how long each part took, and a last line: soak: PASSED or FAILED.
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/tools/port_lib.sh"
port=$(port_for 300) || exit 2
repeats=50
deadline=120 # seconds: a run still going then has hung, and fails
# The torchrun variables would change the programs' defaults.
unset MASTER_ADDR MASTER_PORT NNODES NODE_RANK WORLD_SIZE RANK LOCAL_RANK
export DDP_TOKEN=soak-$$-$RANDOM
logs=$(mktemp -d /tmp/soak.XXXXXX)
trap 'rm -rf "$logs"' EXIT
failures=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() {
    echo "soak: $*"
    failures=$((failures + 1))
}

# Whether file (a run's output) says that the replicas of n ranks agree.
agree() { grep -q "Replicas agree: yes ($2 ranks" "$1"; }

# Runs a job of nnodes agents with nproc ranks each, meeting at 127.0.0.1:port, with the
# flags after; node r's output goes to $logs/NAME.r. Returns 0 if every node exited 0.
run_job() {
    local name=$1 nnodes=$2 nproc=$3 r status=0
    shift 3
    local pids=()
    for ((r = 0; r < nnodes; r++)); do
        timeout "$deadline" "$build/multi_node" --nnodes "$nnodes" --node-rank "$r" \
            --master-addr 127.0.0.1 --master-port "$port" --nproc-per-node "$nproc" \
            --device cpu --rdzv-timeout 30 "$@" >"$logs/$name.$r" 2>&1 &
        pids+=($!)
    done
    for r in "${!pids[@]}"; do
        wait "${pids[$r]}" && continue
        status=$?
        echo "node $r of $name exited $status:"
        tail -n 5 "$logs/$name.$r"
    done
    return "$status"
}

part_many_ranks() {
    local started cmd=("$build/multi_gpu" --device cpu --backend ring --gpus 16 --epochs 50)
    echo "+ ${cmd[*]}"
    started=$(now)
    timeout "$deadline" "${cmd[@]}" >"$logs/ranks" 2>&1
    local status=$?
    echo "1) lesson 02, 16 ranks: exit status $status, $(since "$started") s"
    [ "$status" -eq 0 ] || { tail -n 5 "$logs/ranks"; fail "16 ranks exited $status"; return; }
    agree "$logs/ranks" 16 || fail "16 ranks: no 'Replicas agree: yes (16 ranks' in the output"
}

part_many_nodes() {
    echo "+ $build/multi_node --nnodes 3 --node-rank R --master-addr 127.0.0.1 --master-port $port --nproc-per-node 4 --device cpu --epochs 50   (R = 0, 1, 2)"
    local started
    started=$(now)
    run_job nodes 3 4 --epochs 50
    local status=$?
    echo "2) lesson 03, 3 nodes x 4 ranks: exit status $status, $(since "$started") s"
    [ "$status" -eq 0 ] || { fail "3 nodes x 4 ranks failed"; return; }
    agree "$logs/nodes.0" 12 || fail "3 nodes x 4 ranks: no 'Replicas agree: yes (12 ranks' on the master"
}

part_jobs_in_a_row() {
    echo "+ $repeats times: $build/multi_node --nnodes 2 --node-rank R --master-addr 127.0.0.1 --master-port $port --nproc-per-node 1 --device cpu --epochs 1 --data-size 400   (R = 0, 1)"
    local started i ok=0
    started=$(now)
    for ((i = 1; i <= repeats; i++)); do
        if run_job "job$i" 2 1 --epochs 1 --data-size 400 && agree "$logs/job$i.0" 2; then
            ok=$((ok + 1))
        else
            grep -h "Address already in use" "$logs/job$i".* || true
            fail "job $i of $repeats failed"
        fi
        rm -f "$logs/job$i".*
    done
    local waiting="(ss not found)"
    command -v ss >/dev/null && waiting=$(ss -Htan state time-wait "( dport = :$port or sport = :$port )" | wc -l)
    echo "3) lesson 03, $repeats two-node jobs on port $port: $ok succeeded, $(since "$started") s;" \
        "connections of the port in TIME_WAIT now: $waiting"
}

for program in "$build/multi_gpu" "$build/multi_node"; do
    [ -x "$program" ] || { echo "soak: $program not found: run 'make' first"; exit 2; }
done
echo "soak: $(nproc) cores, $build, master port $port"
begun=$(now)
part_many_ranks
part_many_nodes
part_jobs_in_a_row
if [ "$failures" -ne 0 ]; then
    echo "soak: $failures failure(s) in $(since "$begun") s: FAILED"
    exit 1
fi
echo "soak: every part passed in $(since "$begun") s: PASSED"
