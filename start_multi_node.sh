#!/usr/bin/env bash
# start_multi_node.sh - starts this node's agent of a multi-node job (lesson 03).
#
#   ./start_multi_node.sh master [training flags]    on the first host of hosts.txt
#   ./start_multi_node.sh worker [training flags]    on every other host
#
# Reads hosts.txt (HOSTS_FILE overrides): the first host is the master, the number
# of lines is the number of nodes, `slots=N` the workers on a node. This node's rank
# is its place in the list, found by its names and addresses, or NODE_RANK. The
# token comes from DDP_TOKEN or the file that `./setup.sh --multi-node` made.
# MASTER_ADDR, MASTER_PORT (29500), NNODES and GPUS_PER_NODE override hosts.txt.
# DDP_BUILD names another build directory (build/asan: the sanitizer build's tests).
# Prints the exact command, then runs it; extra flags go to the program, such as
# `--checkpoint-dir /shared/ckpt --max-restarts 3` (the same on every node) for a job
# that survives a lost worker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${DDP_BUILD:-build}
[[ $build == /* ]] || build=$here/$build
program=$build/multi_node
hosts_file=${HOSTS_FILE:-$here/hosts.txt}
token_file=${DDP_TOKEN_FILE:-$here/.ddp_token}

die() { echo "start_multi_node.sh: $*" >&2; exit 2; }

role=${1:-}
[ "$role" = master ] || [ "$role" = worker ] || die "usage: $0 master|worker [training flags]"
shift
for tool in "$program" "$build/hostfile"; do
    [ -x "$tool" ] || die "$tool not found: run 'make lesson-03' first"
done

# hosts.txt as build/hostfile reads it (common/hostfile.c): "host slots" per line, slots 0
# where none is given. A bad line stops the node here, named.
hosts=()
slots=()
if [ -f "$hosts_file" ]; then
    listing=$("$build/hostfile" "$hosts_file" 2>&1) || die "${listing#error: }"
    while read -r host n; do
        [ -n "$host" ] || continue
        hosts+=("$host")
        [ "$n" != 0 ] || n=
        slots+=("$n")
    done <<<"$listing"
fi
if [ ${#hosts[@]} -eq 0 ] && { [ -z "${MASTER_ADDR:-}" ] || [ -z "${NNODES:-}" ]; }; then
    die "no hosts in $hosts_file; list the nodes there, or set MASTER_ADDR and NNODES"
fi

# This machine's names and addresses, to find it in the list.
my_names=" $(hostname) $(hostname -f 2>/dev/null || true) $(hostname -I 2>/dev/null || true) "

if [ "$role" = master ]; then
    node_rank=0
elif [ -n "${NODE_RANK:-}" ]; then
    [ "$NODE_RANK" != 0 ] || die "NODE_RANK=0 is the master: run '$0 master' there"
    node_rank=$NODE_RANK
else
    node_rank=
    for ((i = 1; i < ${#hosts[@]}; i++)); do
        if [[ "$my_names" == *" ${hosts[$i]} "* ]]; then
            [ -z "$node_rank" ] || die "this machine is listed more than once in $hosts_file; set NODE_RANK"
            node_rank=$i
        fi
    done
    [ -n "$node_rank" ] || die "this machine ($(hostname)) is not among the workers in $hosts_file; add it or set NODE_RANK"
fi

cmd=("$program"
    --nnodes "${NNODES:-${#hosts[@]}}"
    --node-rank "$node_rank"
    --master-addr "${MASTER_ADDR:-${hosts[0]}}"
    --master-port "${MASTER_PORT:-29500}")
nproc=${GPUS_PER_NODE:-${slots[$node_rank]:-}}
[ -z "$nproc" ] || cmd+=(--nproc-per-node "$nproc")
if [ -z "${DDP_TOKEN:-}" ] && [ -f "$token_file" ]; then
    cmd+=(--token-file "$token_file")
fi
cmd+=("$@")

echo "+ ${cmd[*]}"
exec "${cmd[@]}"
