#!/bin/sh
# ssh_like_rsh.sh - a remote shell for the tests that does on this machine what ssh does on
# another, for DDP_RSH:
#   ssh_like_rsh.sh HOST WORD...
# ssh joins its WORDs with spaces into one string, which the remote account's shell runs
# (sh -c STRING) in the environment of a fresh login, not the caller's; and ssh keeps
# running, its command line on show to every user, until the command ends. So does this,
# with HOST ignored and only PATH and HOME kept. The one exception is the sanitizers'
# options, when set: `make asan` needs them in every process, so that every report reaches
# its files (ssh would forward them with SendEnv).
[ $# -ge 2 ] || { echo "usage: $0 HOST WORD..." >&2; exit 2; }
shift
env -i PATH="$PATH" HOME="$HOME" \
    ${ASAN_OPTIONS+"ASAN_OPTIONS=$ASAN_OPTIONS"} \
    ${UBSAN_OPTIONS+"UBSAN_OPTIONS=$UBSAN_OPTIONS"} \
    ${LSAN_OPTIONS+"LSAN_OPTIONS=$LSAN_OPTIONS"} \
    sh -c "$*"
