#!/usr/bin/env bash
# launch.sh - starts a whole job from one terminal, like the original app's launcher.
#
#   ./launch.sh --mode single-node --gpus N [training flags]
#   ./launch.sh --mode multi-node --master-node A --worker-nodes B[,C...]
#               [--gpus-per-node G] [--port P] [training flags]
#
# multi-node runs ./start_multi_node.sh on every node through a remote shell:
# `ssh -o BatchMode=yes -o ConnectTimeout=10 HOST COMMAND` by default, or
# `$DDP_RSH HOST COMMAND` when DDP_RSH is set. Either way COMMAND is one string for the
# remote account's shell (a POSIX sh), as ssh takes it: DDP_RSH must take HOST and one
# shell command string and run it there, as ssh does (tools/local_rsh.sh: on this machine;
# tools/netns_rsh.sh: in the network namespace HOST). DDP_RSH may carry options
# (DDP_RSH="ssh -p 2222"), split at blanks.
# Every line a node prints is prefixed with its name (name#rank if a name repeats).
# When one node fails, or on Ctrl-C, every node is stopped; the exit status is
# non-zero if any node failed.
# The repository must be at the same path on every node. DDP_BUILD (another build
# directory) and DDP_TOKEN pass on to every node, the token on the remote shell's stdin,
# never on a command line; without DDP_TOKEN, launch.sh makes a token for the job.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "launch.sh: $*" >&2; exit 2; }
usage() { sed -n '2,21s/^# \{0,1\}//p' "$0"; }
. "$here/tools/script_lib.sh" # check_int, check_path, sh_quote, remote_shell

mode='' gpus='' master='' workers='' gpus_per_node='' port=29500
args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --mode | --gpus | --master-node | --worker-nodes | --gpus-per-node | --port)
        [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
    esac
    case "$1" in
    --mode) mode=${2:-}; shift 2 ;;
    --gpus) gpus=${2:-}; shift 2 ;;
    --master-node) master=${2:-}; shift 2 ;;
    --worker-nodes) workers=${2:-}; shift 2 ;;
    --gpus-per-node) gpus_per_node=${2:-}; shift 2 ;;
    --port) port=${2:-}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) args+=("$1"); shift ;;
    esac
done

# The environment and the flags, checked before any use (tools/script_lib.sh).
check_path DDP_BUILD
build=${DDP_BUILD:-build}
[[ $build == /* ]] || build=$here/$build
[ -z "${DDP_BUILD:-}" ] || [ -d "$build" ] ||
    die "DDP_BUILD must be a build directory (such as build/asan), got ${DDP_BUILD@Q}"
check_int gpus --gpus 1 64
check_int gpus_per_node --gpus-per-node 1 64

if [ "$mode" = single-node ]; then
    [ -x "$build/multi_gpu" ] || die "${DDP_BUILD:-build}/multi_gpu not found: run 'make lesson-02' first"
    cmd=("$build/multi_gpu" ${gpus:+--gpus "$gpus"} "${args[@]+"${args[@]}"}")
    echo "+ ${cmd[*]}"
    exec "${cmd[@]}"
fi
[ "$mode" = multi-node ] || die "--mode must be single-node or multi-node (see --help)"
[ -n "$master" ] && [ -n "$workers" ] || die "multi-node needs --master-node and --worker-nodes"
[ -z "$gpus" ] || die "--gpus is for --mode single-node; a multi-node job takes --gpus-per-node"
[[ $port =~ ^[0-9]{1,5}$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die "--port must be in [1, 65535], got '$port'"
port=$((10#$port))
# The token travels as one line (see node_command), and the program takes 64 characters.
token=${DDP_TOKEN:-}
[[ $token != *$'\n'* && ${#token} -le 64 ]] ||
    die "DDP_TOKEN must be one line of at most 64 characters"

# Every job has a token: DDP_TOKEN if it is set, else one made here for this job alone.
# It reaches every node through the remote shell's stdin (see node_command).
if [ -z "${DDP_TOKEN:-}" ]; then
    DDP_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    [ ${#DDP_TOKEN} -eq 32 ] || die "could not make a token for the job from /dev/urandom"
fi

IFS=, read -r -a worker_list <<<"$workers"
nodes=("$master" "${worker_list[@]}")

# The nodes, one per line, through build/hostfile, the parser of hosts.txt: a name that is
# neither a host name nor an IPv4 address (a typo, or an option that ssh would obey) or a
# node given twice stops the job before it starts. Blanks and '#' would split a line.
[ -x "$build/hostfile" ] || die "${DDP_BUILD:-build}/hostfile not found: run 'make lesson-03' first"
for node in "${nodes[@]}"; do
    [[ -n $node && $node != *[[:space:]#]* ]] ||
        die "--master-node and --worker-nodes take host names (workers separated by commas), got '$master' and '$workers'"
done
if ! problem=$(printf '%s\n' "${nodes[@]}" | "$build/hostfile" - 2>&1 >/dev/null); then
    [[ $problem =~ line\ ([0-9]+):\ (.*) ]] || die "${problem#error: }"
    flag=--worker-nodes
    [ "${BASH_REMATCH[1]}" != 1 ] || flag=--master-node
    die "$flag: ${BASH_REMATCH[2]% (first on line *}"
fi

# The command for node i, one string for the remote shell (tools/script_lib.sh's sh_quote):
# start_multi_node.sh with the job described in the environment. Its first step reads
# the token from the remote shell's stdin: a command line is visible to every user of
# both machines (ps).
node_command() {
    local i=$1 role=worker
    [ "$i" -eq 0 ] && role=master
    local env
    env="MASTER_ADDR=$(sh_quote "$master") MASTER_PORT=$port NNODES=${#nodes[@]} NODE_RANK=$i"
    [ -z "$gpus_per_node" ] || env+=" GPUS_PER_NODE=$gpus_per_node"
    [ -z "${DDP_BUILD:-}" ] || env+=" DDP_BUILD=$(sh_quote "$DDP_BUILD")"
    printf 'IFS= read -r DDP_TOKEN && export DDP_TOKEN && cd %s && export %s && ' \
        "$(sh_quote "$here")" "$env"
    printf 'exec ./start_multi_node.sh %s' "$(sh_quote "$role" "${args[@]+"${args[@]}"}")"
}

# Each node runs as a background job in a process group of its own (set -m), so that
# stopping it reaches everything it started: the remote shell, the agent, its workers.
set -m
pids=()
stop_all() {
    local p
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
    sleep 2
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
}
trap 'echo "launch.sh: interrupted, stopping every node" >&2; stop_all; exit 130' INT TERM

# A node's lines start with its name, or with name#rank where a name comes twice.
repeated=$(printf '%s\n' "${nodes[@]}" | sort | uniq -d)
labels=()
for i in "${!nodes[@]}"; do
    host=${nodes[$i]}
    labels[i]=$host
    [ -z "$repeated" ] || labels[i]="$host#$i"
    ( remote_shell "$host" "$(node_command "$i")" <<<"$DDP_TOKEN" 2>&1 |
        sed -u "s/^/[${labels[i]}] /" ) &
    pids+=($!)
done
set +m # the groups exist now; without job control bash prints no job notices

# Wait for the nodes; the first failure stops the rest.
status=0
declare -A finished=()
while [ ${#finished[@]} -lt ${#pids[@]} ]; do
    sleep 0.2
    for i in "${!pids[@]}"; do
        p=${pids[$i]}
        if [ -n "${finished[$p]:-}" ] || kill -0 "$p" 2>/dev/null; then continue; fi
        wait "$p"
        rc=$?
        finished[$p]=$rc
        if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
            hint=
            [ "$rc" -eq 255 ] && hint=" (the remote shell failed: is the host reachable, with ssh keys set up? see ./setup.sh --multi-node)"
            echo "launch.sh: node ${labels[i]} failed with status $rc$hint; stopping the others" >&2
            status=$rc
            stop_all
        fi
    done
done
exit "$status"
