#!/usr/bin/env bash
# start_multi_node.sh - starts this node's agent of a multi-node job (lesson 03).
#
#   ./start_multi_node.sh master [training flags]    on the first host of hosts.txt
#   ./start_multi_node.sh worker [training flags]    on every other host
#
# Reads hosts.txt (HOSTS_FILE overrides): the first host is the master, the number
# of lines is the number of nodes, `slots=N` the workers on a node. This node's rank
# is its place in the list, found by its names and addresses, or NODE_RANK. The
# token comes from DDP_TOKEN or the file that `./setup.sh --multi-node` made
# (DDP_TOKEN_FILE overrides); without one the program refuses a job of several nodes,
# unless --insecure is among the flags.
# MASTER_ADDR, MASTER_PORT (29500), NNODES and GPUS_PER_NODE override hosts.txt.
# DDP_BUILD names another build directory (build/asan: the sanitizer build's tests).
# Every variable is checked first, as the program checks its flags: a bad one is one
# line naming it and what it takes, exit status 2.
# Prints the exact command, then runs it; extra flags go to the program, such as
# `--checkpoint-dir /shared/ckpt --max-restarts 3` (the same on every node) for a job
# that survives a lost worker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "start_multi_node.sh: $*" >&2; exit 2; }
. "$here/tools/script_lib.sh" # check_int, check_path, check_host

role=${1:-}
[ "$role" = master ] || [ "$role" = worker ] || die "usage: $0 master|worker [training flags]"
shift

# The environment, checked before any use, in the ranges of the program's flags
# (tools/script_lib.sh).
for var in DDP_BUILD HOSTS_FILE DDP_TOKEN_FILE; do check_path "$var"; done
check_int NNODES NNODES 1 64
check_int MASTER_PORT MASTER_PORT 1 65535
check_int GPUS_PER_NODE GPUS_PER_NODE 1 64
if [ "$role" = master ]; then
    [[ ${NODE_RANK:-0} =~ ^0+$ ]] || die "NODE_RANK must be 0 (or unset) for the master, got ${NODE_RANK@Q}"
elif [[ ${NODE_RANK:-} =~ ^0+$ ]]; then
    die "NODE_RANK=0 is the master: run '$0 master' there"
else
    check_int NODE_RANK NODE_RANK 1 63 " for a worker"
fi
build=${DDP_BUILD:-build}
[[ $build == /* ]] || build=$here/$build
[ -z "${DDP_BUILD:-}" ] || [ -d "$build" ] ||
    die "DDP_BUILD must be a build directory (such as build/asan), got ${DDP_BUILD@Q}"
program=$build/multi_node
hosts_file=${HOSTS_FILE:-$here/hosts.txt}
token_file=${DDP_TOKEN_FILE:-$here/.ddp_token}
for tool in "$program" "$build/hostfile"; do
    [ -x "$tool" ] || die "$tool not found: run 'make lesson-03' first"
done
check_host MASTER_ADDR "$build/hostfile"

# hosts.txt as build/hostfile reads it (common/hostfile.c): "host slots" per line, slots 0
# where none is given. A bad line stops the node here, named, and so does a hosts file
# that is not a regular file (a FIFO would block a read for ever).
hosts=()
slots=()
if [ -e "$hosts_file" ] || [ -L "$hosts_file" ]; then
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
# A token file that is there in any form goes to the program, which reads only a regular
# file (common/file.h) and names what is wrong with any other.
if [ -z "${DDP_TOKEN:-}" ] && { [ -e "$token_file" ] || [ -L "$token_file" ]; }; then
    cmd+=(--token-file "$token_file")
fi
cmd+=("$@")

echo "+ ${cmd[*]}"
exec "${cmd[@]}"
