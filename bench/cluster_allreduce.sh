#!/bin/sh
# bench/cluster_allreduce.sh - frost's gradient allreduce alone (bench/allreduce)
# against Open MPI's MPI_Allreduce, on the emulated cluster of bench/netns-lib.sh:
# one rank per node namespace, each node's link shaped to RATE both ways.
#   bench/cluster_allreduce.sh [--nodes 2,4] [--link 1gbit] [--reps 20] [BYTES...]
# Prints, per node count, bench/allreduce's table: each size's median time for
# frost (float32 and bfloat16) and Open MPI, the ideal ring time 2(n-1)/n x
# bytes / link rate, the share of it reached, and the latency floor (an
# 8-byte MPI_Allreduce).  Needs root; removes what it made on any exit.
set -u
here=$(cd "$(dirname "$0")" && pwd) || exit 1
nodes_list=2,4
link=1gbit
reps=20
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) nodes_list=$2; shift 2 ;;
    --link) link=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "cluster_allreduce: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
bench=${ALLREDUCE:-$here/allreduce}
[ -x "$bench" ] || { echo "cluster_allreduce: $bench is not built (make)" >&2; exit 1; }
. "$here/netns-lib.sh"
rate=$(netns_rate_bytes "$link") || { echo "cluster_allreduce: bad link rate '$link'" >&2; exit 2; }
prefix="fra$$"
if ! why=$(netns_probe "$prefix" 2>&1); then
    echo "cluster_allreduce: cannot build the emulated cluster: $why" >&2
    exit 1
fi
trap 'NETNS_PREFIX=$prefix netns_destroy' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
most=$(echo "$nodes_list" | tr ',' '\n' | sort -n | tail -n 1)
netns_create "$prefix" "$most" || exit 1
netns_shape "$link" || exit 1
export NETNS_PREFIX NETNS_SUBNET
# TCP payload of full frames: what the link carries of the bytes sent.
mbps=$(awk -v b="$rate" 'BEGIN { printf "%.1f", b * 8 / 1e6 * 1448 / 1514 }')
echo "link $link both ways on every node; ideal ring times at its TCP payload rate, $mbps Mbit/s"
for n in $(echo "$nodes_list" | tr ',' ' '); do
    echo
    echo "### $n nodes"
    # shellcheck disable=SC2086 # NETNS_MPI_FLAGS is a list of flags
    netns_exec 1 timeout 600 mpirun --allow-run-as-root --oversubscribe \
        --mca plm_rsh_agent "$here/netns-rsh.sh" $NETNS_MPI_FLAGS --host "$(netns_hosts "$n")" \
        -np "$n" -x OMP_NUM_THREADS=1 "$bench" --link-mbps "$mbps" --reps "$reps" "$@" || exit 1
done
