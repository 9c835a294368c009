#!/bin/sh
# netns-rsh.sh - Open MPI's remote shell for the emulated cluster of bench/netns-lib.sh:
#   mpirun --mca plm_rsh_agent bench/netns-rsh.sh --host 10.213.0.1,10.213.0.2 ...
# Open MPI calls it as it would call ssh: `netns-rsh.sh [OPTIONS] HOST COMMAND...`;
# HOST is a node's address ($NETNS_SUBNET.I) and COMMAND (words joined, run by a
# shell, as ssh does) is started in node I's namespace, PREFIXnI.  NETNS_PREFIX
# and NETNS_SUBNET come from the environment mpirun was started with.
set -u
while [ $# -gt 0 ]; do
    case $1 in
    -*) shift ;; # ssh-style options: nothing to do here
    *) break ;;
    esac
done
if [ $# -lt 2 ] || [ -z "${NETNS_PREFIX:-}" ] || [ -z "${NETNS_SUBNET:-}" ]; then
    echo "netns-rsh.sh: usage: NETNS_PREFIX=P NETNS_SUBNET=A.B.C netns-rsh.sh HOST COMMAND..." >&2
    exit 255
fi
host=$1
shift
node=${host#"$NETNS_SUBNET".}
case $node in
'' | *[!0-9]*)
    echo "netns-rsh.sh: host '$host' is not a node address $NETNS_SUBNET.N" >&2
    exit 255
    ;;
esac
exec ip netns exec "${NETNS_PREFIX}n$node" /bin/sh -c "$*"
