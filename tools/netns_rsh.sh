#!/bin/sh
# netns_rsh.sh - a "remote shell" into a network namespace of this machine, as ssh is into
# another machine: DDP_RSH=tools/netns_rsh.sh lets ./launch.sh run each node in a network
# namespace of its own (ip netns add; as root), with a network stack of its own.
#   netns_rsh.sh NAMESPACE COMMAND...    runs COMMAND with sh -c in NAMESPACE
# Like ssh, it joins its COMMAND words with spaces into one shell command string. launch.sh
# names the master to every node by its --master-node, here a namespace's name: that name
# must resolve to the master's address inside every namespace (a line of /etc/hosts, or of
# /etc/netns/NAMESPACE/hosts, which `ip netns exec` puts in its place).
[ $# -ge 2 ] || { echo "usage: $0 NAMESPACE COMMAND..." >&2; exit 2; }
namespace=$1
shift
exec ip netns exec "$namespace" sh -c "$*"
