#!/usr/bin/env bash
# setup.sh - installs what the course needs on Debian or Ubuntu, and says what it found.
#
#   ./setup.sh          as root: installs missing packages (compiler, Criterion, gnuplot)
#                       otherwise: prints the exact apt-get line to run, exits 1
# Safe to run again: it installs only what is missing. The CUDA toolkit, NCCL and a
# GPU are optional; it reports whether it found them but never installs them.
set -euo pipefail

PACKAGES=(build-essential libcriterion-dev gnuplot-nox)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: this script supports Debian and Ubuntu (apt-get); on other systems install" >&2
    echo "a C compiler, make, Criterion (https://github.com/Snaipe/Criterion) and gnuplot by hand." >&2
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
if [ -e "$CUDA_HOME/include/nccl.h" ] || [ -e /usr/include/nccl.h ]; then
    echo "NCCL: found"
else
    echo "NCCL: not found (lesson 02 and 03 use the CPU ring all-reduce instead)"
fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 0 ]; then
    echo "GPU: $gpus found ($(nvidia-smi -L | head -n 1))"
else
    echo "GPU: none found (the lessons run on the CPU with --device auto)"
fi
