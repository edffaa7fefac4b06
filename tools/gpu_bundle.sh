#!/usr/bin/env bash
# gpu_bundle.sh - gathers what a bare GPU machine lacks for tools/gpu_check.sh into one folder.
#
# A bare cloud GPU image has CUDA, a C compiler and python3 with PyTorch (and NCCL as
# PyTorch's pip wheel, which the Makefile finds), but no Criterion (the test suites), no
# libsodium (lesson 03) and no package manager that reaches anything. Run this on a
# Debian machine that has them (./setup.sh installs libcriterion-dev and libsodium-dev):
# it copies their headers, libcriterion.so with every shared library it pulls in that is
# not glibc's, and libsodium, into DIR/include and DIR/lib, with DIR/MANIFEST naming each
# file's Debian package, version and sha256. Carry DIR with the tree: tools/gpu_check.sh
# uses gpu-bundle/ when it is there (or BUNDLE=DIR), and `make BUNDLE=DIR` builds with it
# (an rpath lets the programs find its libraries). Debian 12's binaries run on the newer
# glibc of such a machine.
#
# usage: tools/gpu_bundle.sh [DIR]    (default: gpu-bundle in the repository root, which git ignores)

set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-gpu-bundle}
LIMIT_BYTES=$((64 * 1024 * 1024)) # what a GPU machine takes with the tree, all told
PACKAGES=(libcriterion-dev libsodium-dev)

die() {
    echo "gpu_bundle.sh: $*" >&2
    exit 1
}

case "${1:-}" in
-h | --help)
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
esac
command -v dpkg-query >/dev/null || die "dpkg-query not found: run this on a Debian or Ubuntu machine"
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        die "$p is not installed (./setup.sh, or apt-get install ${PACKAGES[*]})"
done

# "package version" of the Debian package that owns a file; /lib and /usr/lib are one
# folder on a merged /usr, but dpkg knows each file under one of the two names.
owner_of() {
    local path=$1 pkg
    pkg=$(dpkg-query -S "$path" 2>/dev/null || dpkg-query -S "${path#/usr}" 2>/dev/null ||
        dpkg-query -S "/usr$path" 2>/dev/null) || {
        echo "unpackaged -"
        return 0
    }
    pkg=${pkg%%:*}
    pkg=${pkg%%,*}
    echo "$pkg $(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null | head -n 1)"
}

# The SONAME of a shared library (libcriterion.so.3), which the programs ask the loader for.
soname_of() {
    objdump -p "$1" | awk '$1 == "SONAME" { print $2 }'
}

manifest_lines=()
# add FILE_IN_DIR SOURCE [PACKAGE]: one manifest line for a copied file (dpkg finds the
# package where it is not given: a slow search).
add() {
    local rel=$1 source=$2 owner
    if [ -n "${3:-}" ]; then
        owner="$3 $(dpkg-query -W -f '${Version}' "$3")"
    else
        owner=$(owner_of "$source")
    fi
    manifest_lines+=("$rel  $owner  $(sha256sum "$DIR/$rel" | cut -d ' ' -f 1)")
}

# Copies the headers that a package installs under /usr/include, keeping their paths.
copy_headers() {
    local path rel
    while IFS= read -r path; do
        [ -f "$path" ] || continue
        rel=${path#/usr/include/}
        mkdir -p "$DIR/include/$(dirname "$rel")"
        cp "$path" "$DIR/include/$rel"
        add "include/$rel" "$path" "$1"
    done < <(dpkg-query -L "$1" | grep '^/usr/include/')
}

# Copies the library a development package links with (its libNAME.so) under its SONAME,
# with the libNAME.so link that -lNAME needs.
copy_dev_library() {
    local link real soname
    link=$(dpkg-query -L "$1" | grep -E '/lib[^/]*\.so$' | head -n 1)
    [ -n "$link" ] || die "$1 installs no lib*.so"
    real=$(readlink -f "$link")
    soname=$(soname_of "$real")
    [ -n "$soname" ] || die "$real has no SONAME"
    cp "$real" "$DIR/lib/$soname"
    add "lib/$soname" "$real"
    ln -sfn "$soname" "$DIR/lib/$(basename "$link")"
}

# Copies every shared library that a library pulls in (all of them, as ldd lists them),
# but glibc's own, which the GPU machine has in a newer version.
copy_dependencies() {
    local name path owner
    while read -r name path; do
        [ -e "$DIR/lib/$name" ] && continue
        owner=$(owner_of "$(readlink -f "$path")")
        case "$owner" in libc6\ * | libc6-*) continue ;; esac
        cp "$(readlink -f "$path")" "$DIR/lib/$name"
        add "lib/$name" "$(readlink -f "$path")"
    done < <(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
}

rm -rf "$DIR"
mkdir -p "$DIR/include" "$DIR/lib"
for p in "${PACKAGES[@]}"; do
    copy_headers "$p"
    copy_dev_library "$p"
done
for lib in "$DIR"/lib/*.so; do
    copy_dependencies "$lib"
done

bytes=$(du -sb "$DIR" | cut -f 1)
[ "$bytes" -le "$LIMIT_BYTES" ] ||
    die "$DIR holds $bytes bytes, more than the $LIMIT_BYTES that a GPU machine takes"
system=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
{
    echo "# tools/gpu_bundle.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), from ${system:-an unknown system}," \
        "glibc $(ldd --version | head -n 1 | awk '{ print $NF }'), $bytes bytes"
    echo "# file  package version  sha256"
    printf '%s\n' "${manifest_lines[@]}"
} >"$DIR/MANIFEST"
echo "gpu_bundle.sh: $DIR: ${#manifest_lines[@]} files, $((bytes / 1024)) KiB (MANIFEST lists them);" \
    "carry it with the tree, then run tools/gpu_check.sh there"
