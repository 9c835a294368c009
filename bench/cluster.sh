#!/bin/sh
# bench/cluster.sh - frost against PyTorch DDP on a cluster emulated on this machine: one network
# namespace per node on a bridge in a "switch" namespace, each node's link shaped (tc), one rank
# per node. Prints a markdown table. See bench/README.md.
#   bench/cluster.sh [--nodes 2,4] [--link 1gbit] [--delay 1ms] [--workloads 1,2,3,4,5,g,gl]
#                    [--steps N] [--log-every K] [--frost-args '--grad-dtype bf16'] ...
#   bench/cluster.sh --help
# Needs root and iproute2 (ip netns, tc), Open MPI, python3; PyTorch for the DDP rows.
# Everything it makes (namespaces frc<pid>*, their processes, the work directory) is removed
# on exit, also when a run fails or the script is interrupted.
set -u
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "cluster: python3 not found" >&2; exit 1; }

# The options are cluster.py's; it answers --help and checks them before anything is made.
for arg in "$@"; do
    case $arg in -h | --help) exec "$py" "$here/cluster.py" --help ;; esac
done
max_nodes=$("$py" "$here/cluster.py" --check "$@") || exit 2
keep=no
for arg in "$@"; do [ "$arg" = --keep ] && keep=yes; done

. "$here/netns-lib.sh"
prefix="frc$$"
if ! why=$(netns_probe "$prefix" 2>&1); then
    echo "cluster: cannot build the emulated cluster: $why" >&2
    exit 1
fi

work=
driver=
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$driver" ]; then
        kill -TERM "$driver" 2> /dev/null
        wait "$driver" 2> /dev/null
    fi
    NETNS_PREFIX=$prefix netns_destroy
    if [ -n "$work" ] && [ $keep = no ]; then
        rm -rf "$work"
    elif [ -n "$work" ]; then
        echo "cluster: work directory kept: $work" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

work=$(mktemp -d "${TMPDIR:-/tmp}/frost-cluster.XXXXXX") || exit 1
netns_create "$prefix" "$max_nodes" 2> "$work/create.err" || {
    echo "cluster: cannot build the emulated cluster: $(tail -n 1 "$work/create.err")" >&2
    exit 1
}
echo "cluster: $max_nodes nodes ${prefix}n1..${prefix}n$max_nodes on bridge br0 in ${prefix}sw," \
    "addresses $(netns_addr 1)..$(netns_addr "$max_nodes")" >&2

# In the background so that a signal reaches the trap at once (the driver ignores SIGINT then;
# the trap ends it and everything it started inside the namespaces).
NETNS_PREFIX=$prefix NETNS_SUBNET=$NETNS_SUBNET NETNS_NODES=$max_nodes \
    NETNS_MPI_FLAGS=$NETNS_MPI_FLAGS NETNS_LIB="$here/netns-lib.sh" "$py" "$here/cluster.py" --work "$work" "$@" &
driver=$!
wait "$driver"
status=$?
driver=
exit $status
