#!/usr/bin/env bash
# bare_machine.sh - runs a command where this machine looks like a bare GPU image: the
# system's Criterion (with the libraries it pulls in that such an image lacks), libsodium
# and NCCL, headers and libraries, are not there.
#
# In a mount namespace of its own (unshare -m, as root), each folder that holds them is
# covered by a folder of links to all its other entries, so that what is hidden is
# absent, not empty; nothing outside the namespace changes, and the namespace ends with
# the command. The test that uses it (tests/test_gpu_check.c) puts NCCL back as a pip
# wheel would (PYTHONPATH) and Criterion and libsodium as tools/gpu_bundle.sh would.
#
# usage: tests/support/bare_machine.sh COMMAND...
# Exits 77, saying why, where no mount namespace can be made (not root, or not permitted).
set -euo pipefail

if [ -z "${BARE_MACHINE_KEEP:-}" ]; then
    if ! unshare -m --propagation private true 2>/dev/null; then
        echo "bare_machine.sh: no mount namespace here (unshare -m needs root and permission)" >&2
        exit 77
    fi
    # Outside the namespace: an empty folder; inside it, a tmpfs with the covered originals.
    keep=$(mktemp -d /tmp/bare_machine.XXXXXX)
    status=0
    BARE_MACHINE_KEEP=$keep unshare -m --propagation private "$0" "$@" || status=$?
    rmdir "$keep"
    exit "$status"
fi

keep=$BARE_MACHINE_KEEP
mount -t tmpfs bare_machine "$keep"
covered=0 covered_dirs=""

# cover DIR PATTERN...: DIR shows every entry but those matching a pattern (globs).
cover() {
    local dir=$1 entry name pattern
    shift
    dir=$(readlink -f "$dir")
    [ -d "$dir" ] || return 0
    [[ " $covered_dirs " != *" $dir "* ]] || return 0 # lib64 may be a link to lib
    covered_dirs="$covered_dirs $dir"
    covered=$((covered + 1))
    local orig="$keep/orig$covered" links="$keep/links$covered"
    mkdir "$orig" "$links"
    mount --bind "$dir" "$orig"
    for entry in "$orig"/* "$orig"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        name=${entry##*/}
        for pattern in "$@"; do
            # shellcheck disable=SC2053 # the pattern is a glob on purpose
            [[ "$name" == $pattern ]] && continue 2
        done
        ln -s "$entry" "$links/$name"
    done
    # One mount replaces the folder at once: the tools that run meanwhile keep their libraries.
    mount --bind "$links" "$dir"
}

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
cuda=${CUDA_HOME:-/usr/local/cuda}
cover /usr/include 'criterion' 'sodium' 'sodium.h' 'nccl*'
cover "/usr/lib/$multiarch" 'libcriterion*' 'libsodium*' 'libnccl*' 'libnanomsg*' 'libgit2*' \
    'libmbed*' 'libhttp_parser*' 'libssh2*'
cover "$cuda/include" 'nccl*'
cover "$cuda/lib64" 'libnccl*'
cover "$cuda/lib" 'libnccl*'
exec "$@"
