#!/bin/sh
# netns.sh - frost on an emulated 2-node cluster: one network namespace per
# node on a bridge (bench/netns-lib.sh, the cluster bench/cluster.sh uses),
# mpirun in node 1 starting one rank per node through bench/netns-rsh.sh, TCP
# only between them.
#
#  - each rank runs in its own node's namespace;
#  - a 2-node run trains to final weights equal bit for bit to the same
#    command's 2-rank run on one host;
#  - SIGKILL of node 2's rank mid-run ends the job with a non-zero exit
#    within 60 s, and the last checkpoint (written every step) still loads;
#  - node 2's link going down mid-run ends the job (--comm-timeout 5, the
#    error says "stalled") with a non-zero exit within 60 s;
#  - no namespace is left behind;
#  - bench/cluster.sh runs, and cleans up also when stopped by SIGTERM.
# Skipped without MPI or where namespaces cannot be made (not root, no
# iproute2).  No timing assertion beyond the 60 s bounds.
. "$TOP_SRCDIR/tests/common.sh"

if [ -z "${MPIRUN:-}" ]; then
    echo "1..0 # SKIP frost was built without MPI (MPIRUN is empty)"
    exit 0
fi
. "$TOP_SRCDIR/bench/netns-lib.sh"
prefix="frt$$"
if ! why=$(netns_probe "$prefix" 2>&1); then
    echo "1..0 # SKIP cannot make network namespaces: $why"
    exit 0
fi

cleanup() {
    trap - EXIT INT TERM HUP
    NETNS_PREFIX=$prefix netns_destroy
    # The clusters of the bench/cluster.sh runs below, should one outlive its script.
    for log in "$WORK/bench.err" "$WORK/stop.err"; do
        [ -f "$log" ] || continue
        made=$(sed -n 's/^cluster: [0-9]* nodes \(frc[0-9]*\)n1\.\..*/\1/p' "$log")
        [ -z "$made" ] || netns_destroy "$made"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

netns_create "$prefix" 2 2> "$WORK/create.err"
status=$?
ok $status "a 2-node cluster of network namespaces is made ($(netns_node 1), $(netns_node 2) on a bridge in ${prefix}sw)"
if [ $status -ne 0 ]; then
    sed 's/^/#   /' "$WORK/create.err"
    done_testing
fi
export NETNS_PREFIX NETNS_SUBNET
RSH=$TOP_SRCDIR/bench/netns-rsh.sh
LIMIT=60 # seconds a failing job may take to end
MODEL=$WORK/model.txt
printf 'fc1 = linear(784, 32)\nrelu\nfc2 = linear(32, 10)\n' > "$MODEL"
mkdir -p "$WORK/data"
make_idx "$WORK/data" 256 5
TRAIN="train --model $MODEL --data $WORK/data --batch-size 32 --seed 7 --lr 0.05 --momentum 0.9"
set -f # $TRAIN is split on spaces (no path here has one), never globbed

# cluster_mpirun SECONDS ARGS...: mpirun in node 1, one rank per node, TCP
# between them, killed after SECONDS.
cluster_mpirun() {
    cluster_seconds=$1
    shift
    netns_exec 1 timeout -k 5 "$cluster_seconds" "$MPIRUN" --allow-run-as-root --oversubscribe \
        --mca plm_rsh_agent "$RSH" $NETNS_MPI_FLAGS --host "$(netns_hosts 2)" -np 2 \
        -x OMP_NUM_THREADS=1 "$@"
}

# ------------------------------------------- the ranks are on their nodes
expected=$(for i in 1 2; do netns_exec "$i" readlink /proc/self/ns/net; done | sort | tr '\n' ' ')
got=$(cluster_mpirun $LIMIT readlink /proc/self/ns/net 2> "$WORK/where.err" | sort | tr '\n' ' ')
[ -n "$got" ] && [ "$got" = "$expected" ]
ok $? "mpirun in node 1 starts one rank in each node's namespace (nodes: $expected; ranks: ${got:-none})"
[ -n "$got" ] || sed 's/^/#   /' "$WORK/where.err"

# --------------------------------------- the same weights as on one host
timeout -k 5 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    -x OMP_NUM_THREADS=1 "$FROST" $TRAIN --steps 8 --save "$WORK/host.safetensors" \
    > "$WORK/host.out" 2> "$WORK/host.err"
status=$?
ok $status "2 ranks on one host train (exit $status)"
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/host.err"
cluster_mpirun 120 "$FROST" $TRAIN --steps 8 --save "$WORK/nodes.safetensors" \
    > "$WORK/nodes.out" 2> "$WORK/nodes.err"
status=$?
ok $status "2 ranks on 2 nodes train (exit $status)"
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/nodes.err"
cmp -s "$WORK/host.safetensors" "$WORK/nodes.safetensors"
ok $? "2 nodes (TCP) and one host give bit-identical final weights (cmp of the --save files)"
# The nodes are namespaces of one machine: frost sees them share its CPUs
# (the kernel's boot id), so it places their threads as on one host.
[ "$(grep '^threads:\|^communication thread:' "$WORK/host.out")" = \
    "$(grep '^threads:\|^communication thread:' "$WORK/nodes.out")" ]
ok $? "ranks in namespaces of one machine are placed and scheduled as on one host ($(grep '^threads:' "$WORK/nodes.out" | tr '\n' ' '))"

# ------------------------------------------------------ failures mid-run
# start_job NAME FLAGS...: a long run in the background, checkpointing every
# step; returns once the first checkpoint exists (training is under way).
# Sets job (its process id).
start_job() {
    name=$1
    shift
    cluster_mpirun $((LIMIT + 60)) "$FROST" $TRAIN --steps 1000000 --log-every 1000 \
        --checkpoint "$WORK/$name.ckpt" --checkpoint-every 1 "$@" \
        > "$WORK/$name.out" 2> "$WORK/$name.err" &
    job=$!
    waited=0
    while [ ! -f "$WORK/$name.ckpt" ] && [ $waited -lt 300 ] && kill -0 $job 2> /dev/null; do
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -f "$WORK/$name.ckpt" ]
}
# end_job: wait for the job (killed 60 s after LIMIT at the latest); sets
# status and elapsed (seconds since the failure was made).
end_job() {
    wait $job
    status=$?
    elapsed=$(($(date +%s) - failed_at))
}
# node_frost I: the process id of frost in node I's namespace.
node_frost() {
    for pid in $(netns_pids "$1"); do
        case $(cat "/proc/$pid/comm" 2> /dev/null) in frost | lt-frost) echo "$pid" && return 0 ;; esac
    done
    return 1
}
# reap_node I: whatever a failed job left in node I (its orted, a blocked rank).
reap_node() {
    for pid in $(netns_pids "$1"); do kill -KILL "$pid" 2> /dev/null; done
}

# Node 2's rank dies (SIGKILL: a crash, no checkpoint of its own).
start_job kill
ok $? "a long 2-node run is under way: its first checkpoint is written"
victim=$(node_frost 2)
ok $? "node 2's frost rank is found in its namespace (pid ${victim:-none})"
failed_at=$(date +%s)
[ -n "$victim" ] && kill -KILL "$victim"
end_job
# (mpirun's status is the killed rank's, 137; the job is killed only at LIMIT + 60 s.)
[ $status -ne 0 ] && [ $elapsed -lt $LIMIT ]
ok $? "killing node 2's rank ends the job with a non-zero exit within $LIMIT s (exit $status after $elapsed s)"
[ $elapsed -lt $LIMIT ] || sed 's/^/#   /' "$WORK/kill.err" | tail -n 10
"$FROST" eval --model "$MODEL" --init "$WORK/kill.ckpt" --data "$WORK/data" > "$WORK/eval.out" 2>&1
status=$?
ok $status "the last checkpoint of the killed job loads (frost eval --init: $(grep '^test:' "$WORK/eval.out" || tail -n 1 "$WORK/eval.out"))"
reap_node 2

# Node 2's link goes down: no process fails, every rank waits for the other.
# frost's --comm-timeout ends its ranks; mpirun then needs the out-of-band
# keepalive of NETNS_MPI_FLAGS to give up on node 2's daemon (without it
# mpirun would hang in its abort for minutes), and that keepalive alone ends
# the job too, later and without frost's message.
start_job down --comm-timeout 5
ok $? "a long 2-node run is under way again (--comm-timeout 5)"
failed_at=$(date +%s)
ip -n "$(netns_node 2)" link set "$NETNS_IF" down
end_job
[ $status -ne 0 ] && [ $elapsed -lt $LIMIT ]
ok $? "taking node 2's link down ends the job with a non-zero exit within $LIMIT s (exit $status after $elapsed s)"
line=$(grep '^frost: ' "$WORK/down.err" | head -n 1)
printf '%s\n' "$line" | grep -q stalled
ok $? "the job's error says the communication stalled (got: ${line:-nothing})"
reap_node 2
reap_node 1

NETNS_PREFIX=$prefix netns_destroy
left=$(ip netns list | awk -v p="$prefix" 'index($1, p) == 1 { print $1 }' | tr '\n' ' ')
[ -z "$left" ]
ok $? "no network namespace of this test is left behind (left: '$left')"

# ---------------------------------------------------- bench/cluster.sh
# The benchmark on a cluster of its own (frost rows only, this test's data):
# a short run prints its table; a run stopped by SIGTERM cleans up too.
# cluster_left LOG: the namespaces still there of the cluster.sh run whose
# stderr is LOG (it names them: "cluster: 2 nodes frc<pid>n1..frc<pid>n2 ...").
cluster_left() {
    made=$(sed -n 's/^cluster: [0-9]* nodes \(frc[0-9]*\)n1\.\..*/\1/p' "$1")
    [ -n "$made" ] || { echo "(no cluster named in $(basename "$1"))" && return; }
    ip netns list | awk -v p="$made" '$1 == p "sw" || index($1, p "n") == 1 { print $1 }' | tr '\n' ' '
}
BENCH="--frost $FROST --data $WORK/data --nodes 2 --workloads 1 --no-ddp --tcp-seconds 0.3"
timeout -k 30 300 "$TOP_SRCDIR/bench/cluster.sh" $BENCH --steps 4 --log-every 2 \
    > "$WORK/bench.out" 2> "$WORK/bench.err" &
bench=$!
wait $bench
status=$?
grep -q '^- 1gbit: raw TCP one way [0-9.]* MB/s' "$WORK/bench.out" &&
    grep -q '^| 1 MLP.* | 1gbit | 2 | frost | [0-9][0-9]* | 11.65 |' "$WORK/bench.out"
table=$?
[ $status -eq 0 ] && [ $table -eq 0 ]
ok $? "bench/cluster.sh: a short run prints the raw TCP rate and a table row for frost (exit $status)"
if [ $status -ne 0 ] || [ $table -ne 0 ]; then
    sed 's/^/#   /' "$WORK/bench.err" | tail -n 10
fi
left=$(cluster_left "$WORK/bench.err")
[ -z "$left" ]
ok $? "bench/cluster.sh: its namespaces are gone after the run (left: '$left')"

timeout -k 30 300 "$TOP_SRCDIR/bench/cluster.sh" $BENCH --steps 100000 --log-every 1000 \
    > "$WORK/stop.out" 2> "$WORK/stop.err" &
bench=$!
waited=0
while ! grep -q '^link none' "$WORK/stop.err" && [ $waited -lt 600 ] && kill -0 $bench 2> /dev/null; do
    sleep 0.1
    waited=$((waited + 1))
done
sleep 1 # into the first frost run
# To cluster.sh itself (its namespaces are named after its process id):
# through timeout, the TERM would arm timeout's SIGKILL 30 s later.
made=$(sed -n 's/^cluster: [0-9]* nodes frc\([0-9]*\)n1\.\..*/\1/p' "$WORK/stop.err")
stopped_at=$(date +%s)
kill -TERM "${made:-$bench}"
wait $bench
status=$?
diag "bench/cluster.sh took $(($(date +%s) - stopped_at)) s to clean up and exit"
left=$(cluster_left "$WORK/stop.err")
[ $status -ne 0 ] && [ -z "$left" ] && ! grep -q '^cluster: work directory kept' "$WORK/stop.err"
ok $? "bench/cluster.sh: stopped by SIGTERM mid-run, it exits non-zero and leaves no namespace behind (exit $status, left: '$left')"

done_testing
