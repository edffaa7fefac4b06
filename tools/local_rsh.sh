#!/bin/sh
# local_rsh.sh - a "remote shell" that runs on this machine, as ssh would run on another:
# DDP_RSH=tools/local_rsh.sh lets ./launch.sh start several nodes here (make
# demo-multinode, tools/bench.sh, the tests), and ./setup.sh --multi-node check them.
#   local_rsh.sh HOST COMMAND...    runs COMMAND here with sh -c, ignoring HOST
# Like ssh, it joins its COMMAND words with spaces into one shell command string, so a
# caller passes one string, quoted for a POSIX shell. Unlike ssh, the command keeps the
# caller's environment.
[ $# -ge 2 ] || { echo "usage: $0 HOST COMMAND..." >&2; exit 2; }
shift
exec sh -c "$*"
