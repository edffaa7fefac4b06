#!/usr/bin/env bash
# local_rsh.sh - a "remote shell" that runs on this machine: DDP_RSH=tools/local_rsh.sh
# lets ./launch.sh start several nodes here (make demo-multinode, the tests).
#   local_rsh.sh HOST CMD...    runs CMD, ignoring HOST
[ $# -ge 2 ] || { echo "usage: $0 HOST CMD..." >&2; exit 2; }
shift
exec "$@"
