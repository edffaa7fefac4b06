#!/usr/bin/env bash
# setup.sh - installs what the course needs on Debian or Ubuntu, and says what it found.
#
#   ./setup.sh          as root: installs missing packages (compiler, Criterion, libsodium, gnuplot, python3)
#                       otherwise: prints the exact apt-get line to run, exits 1
#   ./setup.sh --bench        also installs PyTorch (python3-torch), the benchmark's reference
#   ./setup.sh --mpi          also installs Open MPI (mpirun support in lesson 03 and the benchmark)
#   ./setup.sh --checks       also installs valgrind, clang, libFuzzer (make asan, memcheck, fuzz)
#   ./setup.sh --multi-node   then checks what a multi-node job needs (see check_multi_node)
# Safe to run again: it installs only what is missing. The CUDA toolkit, NCCL and a
# GPU are optional; it reports whether it found them but never installs them.
set -euo pipefail

PACKAGES=(build-essential libcriterion-dev libsodium-dev gnuplot-nox python3)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "setup.sh: $*" >&2; exit 2; }
. "$here/tools/script_lib.sh" # check_int, check_path, sh_quote, remote_shell

multi_node=0
for option in "$@"; do
    case "$option" in
    --bench) PACKAGES+=(python3-torch) ;;
    --mpi) PACKAGES+=(libopenmpi-dev openmpi-bin) ;;
    # clang only recommends its runtimes, libFuzzer among them (libclang-rt-dev); the fuzz
    # targets link all of common/ with -lsodium.
    --checks) PACKAGES+=(valgrind clang libclang-rt-dev libsodium-dev) ;;
    --multi-node) multi_node=1 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$option' (see --help)" >&2; exit 2 ;;
    esac
done
# --multi-node's environment, checked before anything runs (tools/script_lib.sh).
if [ "$multi_node" -eq 1 ]; then
    for var in HOSTS_FILE DDP_TOKEN_FILE DDP_BUILD; do check_path "$var"; done
    check_int MASTER_PORT MASTER_PORT 1 65535
    build_dir=${DDP_BUILD:-build}
    [[ $build_dir == /* ]] || build_dir=$here/$build_dir
    [ -z "${DDP_BUILD:-}" ] || [ -d "$build_dir" ] ||
        die "DDP_BUILD must be a build directory (such as build/asan), got ${DDP_BUILD@Q}"
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: this script supports Debian and Ubuntu (apt-get); on other systems install" >&2
    echo "a C compiler, make, Criterion (https://github.com/Snaipe/Criterion), libsodium" >&2
    echo "(https://libsodium.org, for lesson 03) and gnuplot by hand." >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "packages: all present (${PACKAGES[*]})"
elif [ "$(id -u)" -eq 0 ]; then
    echo "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "packages: installed ${missing[*]}"
else
    echo "packages: missing ${missing[*]}; install them with:"
    echo "  sudo apt-get install -y ${missing[*]}"
    exit 1
fi

# The optional parts: found or not, the course builds and runs.
nvcc_path=$(command -v nvcc 2>/dev/null || ls "$CUDA_HOME/bin/nvcc" 2>/dev/null || true)
if [ -n "$nvcc_path" ]; then
    echo "CUDA toolkit: found ($("$nvcc_path" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), $nvcc_path)"
else
    echo "CUDA toolkit: not found (CPU-only build; install it for GPU lessons: https://developer.nvidia.com/cuda-downloads)"
fi
# Where the build finds NCCL (NCCL_HOME, PyTorch's pip wheel, the toolkit, the system):
# the Makefile says, so that this never disagrees with it.
make -C "$here" --no-print-directory -s found 2>/dev/null | grep '^NCCL:' ||
    echo "NCCL: not found (lesson 02 and 03 use the CPU ring all-reduce instead)"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 0 ]; then
    echo "GPU: $gpus found ($(nvidia-smi -L | head -n 1))"
else
    echo "GPU: none found (the lessons run on the CPU with --device auto)"
fi

# A new token file at path, mode 0600, from 24 random bytes. It is written under another
# name first (mktemp makes it, mode 0600), then linked in place, which fails if anything
# took the name meanwhile: the path itself is never opened, so a FIFO there cannot block.
make_token_file() {
    local tmp status
    tmp=$(mktemp "$1.XXXXXX") || return 1
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp" && ln "$tmp" "$1"
    status=$?
    rm -f "$tmp"
    return "$status"
}

# --multi-node: hosts.txt reads as start_multi_node.sh reads it (through build/hostfile, or
# DDP_BUILD's), every host answers the remote shell without a password and runs the same
# build, the master port is free here, and every node has the token.
check_multi_node() {
    local hosts_file=${HOSTS_FILE:-$here/hosts.txt} token_file=${DDP_TOKEN_FILE:-$here/.ddp_token}
    local port=${MASTER_PORT:-29500} problems=0 build host listing
    local tool=${DDP_BUILD:-build}/hostfile
    [[ $tool == /* ]] || tool=$here/$tool
    [ -x "$tool" ] || { echo "hosts: $tool not found: run 'make' first"; return 1; }
    listing=$("$tool" "$hosts_file" 2>&1) || { echo "hosts: ${listing#error: }"; return 1; }
    mapfile -t hosts < <(awk 'NF { print $1 }' <<<"$listing")
    [ ${#hosts[@]} -gt 0 ] || { echo "hosts: none in $hosts_file: list the nodes there, master first"; return 1; }
    echo "hosts: ${hosts[*]} (master: ${hosts[0]})"
    if [ -f "$token_file" ]; then
        echo "token: $token_file exists"
    elif [ -e "$token_file" ] || [ -L "$token_file" ]; then
        echo "token: $token_file is not a regular file (a FIFO, a device, a directory or a broken link): remove it, or set DDP_TOKEN_FILE"
        return 1
    elif ! make_token_file "$token_file"; then
        echo "token: cannot create $token_file"
        return 1
    else
        echo "token: created $token_file (mode 0600)"
    fi
    if ! command -v ss >/dev/null 2>&1; then
        echo "port: cannot check whether $port is free (ss not found: apt-get install iproute2)"
    elif ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
        echo "port: $port is in use here: stop the old run or choose another MASTER_PORT"
        problems=$((problems + 1))
    else
        echo "port: $port is free here (open it, and NCCL's ports, in the firewall between the nodes)"
    fi
    build=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)
    for host in $(printf '%s\n' "${hosts[@]}" | sort -u); do
        local remote_build
        remote_build=$(remote_shell "$host" "git -C $(sh_quote "$here") describe --always --dirty" \
            </dev/null 2>/dev/null) || remote_build=
        if [ -z "$remote_build" ]; then
            echo "$host: cannot run commands there without a password: ssh-copy-id $host (and check that $here exists there)"
            problems=$((problems + 1))
        elif [ "$remote_build" != "$build" ]; then
            echo "$host: build $remote_build differs from this node's $build: check out the same commit everywhere"
            problems=$((problems + 1))
        else
            echo "$host: reachable, build $build"
        fi
    done
    [ "$problems" -eq 0 ] && echo "multi-node: ready (copy $token_file to the same path on every node)"
    return "$problems"
}

if [ "$multi_node" -eq 1 ]; then
    check_multi_node || exit 1
fi
