# netns-lib.sh - an emulated cluster on one machine, made of network namespaces.
#
# Sourced (POSIX sh, safe under `set -u`) by bench/cluster.sh and tests/netns.sh,
# so the benchmark and the test build the same cluster:
#
#   switch namespace PREFIXsw     holds the bridge br0 and one veth end pI per node
#   node namespaces  PREFIXn1..N  each has lo and eth0 (the other veth end),
#                                 address $NETNS_SUBNET.I/24
#
# Nothing is made in, or attached to, the namespace the caller runs in: traffic
# between nodes goes node eth0 -> switch pI -> br0 -> switch pJ -> node eth0 and
# never leaves the namespaces made here.  Each node's link can be shaped in both
# directions (tbf on both veth ends: the node's eth0 shapes what it sends, the
# switch's pI what it receives) and given a one-way latency (netem on the
# node's eth0, so a packet between two nodes is delayed once).
#
# Functions (each returns non-zero with a one-line message on stderr):
#   netns_probe PREFIX          can namespaces, veth pairs and a bridge be made here?
#   netns_create PREFIX N       the switch and N nodes
#   netns_shape RATE [DELAY]    RATE: none, or tc's rate (100mbit, 1gbit, 10gbit);
#                               DELAY: none or tc's time (1ms); on every node's link
#   netns_destroy [PREFIX]      kill every process left in the namespaces, delete them
#   netns_node I / netns_addr I the namespace name / the address of node I (from 1)
#   netns_exec I CMD...         run CMD in node I's namespace
#   netns_pids I                the processes in node I's namespace
#   netns_hosts N               mpirun's --host list for nodes 1..N
# After netns_create: NETNS_PREFIX, NETNS_NODES, NETNS_SWITCH are set.
#
# mpirun runs in node 1's namespace and reaches the others through
# bench/netns-rsh.sh (its plm_rsh_agent), which reads NETNS_PREFIX and
# NETNS_SUBNET from the environment (export them); the hosts are the nodes'
# addresses, so Open MPI sees node 1 as local.  NETNS_MPI_FLAGS holds the rest
# of what every cluster job needs:
#   NETNS_PREFIX=... NETNS_SUBNET=... netns_exec 1 mpirun --allow-run-as-root \
#       --mca plm_rsh_agent .../bench/netns-rsh.sh $NETNS_MPI_FLAGS \
#       --host "$(netns_hosts 2)" -np 2 ...

NETNS_SUBNET=${NETNS_SUBNET:-10.213.0} # private, only ever inside these namespaces
NETNS_IF=eth0
NETNS_PREFIX=${NETNS_PREFIX:-}
NETNS_NODES=0
NETNS_SWITCH=
NETNS_INODES= # of the namespaces netns_create made: netns_destroy finds their processes even if
              # someone else has deleted the names
# One rank per node, and only TCP between them (no shared memory: pml ob1 with
# the tcp and self BTLs), on the nodes' subnet for MPI and for Open MPI's own
# out-of-band channel; orted started by mpirun itself, not by other orteds;
# no binding (every "node" is this machine: Open MPI would bind each rank to
# core 0 of it).  TCP keepalive on the out-of-band channel, so that mpirun
# notices a node that vanished (link down) within 10-20 s: by default (300 s
# idle, then 9 probes 20 s apart) it waits 8 minutes, even after a rank has
# aborted the job, trying to reach that node's daemon.  Ranks yield the CPU
# while they wait in MPI (mpi_yield_when_idle): every node shares this
# machine's cores, and a rank polling in MPI_Allreduce would take them from
# the other nodes' ranks and from the kernel's network processing, which on a
# real cluster it cannot (4 nodes on 2 cores: half the speed without it).
# Each node's TCP gives up on unacknowledged data after 5 retransmissions
# (about 12 s; net.ipv4.tcp_retries2, per namespace) instead of the kernel's
# 15 (about 15 minutes): once a rank has ended the job (frost's
# --comm-timeout), mpirun's abort sends to the lost node's daemon, and that
# unacknowledged send, not the keepalive, is what it then waits on.
# shellcheck disable=SC2034 # for the scripts that source this file
NETNS_MPI_FLAGS="--bind-to none --mca plm_rsh_no_tree_spawn 1 --mca mpi_yield_when_idle 1 \
--mca pml ob1 --mca btl tcp,self \
--mca btl_tcp_if_include $NETNS_SUBNET.0/24 --mca oob_tcp_if_include $NETNS_SUBNET.0/24 \
--mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 5"

netns_node() { echo "${NETNS_PREFIX}n$1"; }
netns_addr() { echo "$NETNS_SUBNET.$1"; }
netns_exec() {
    netns_exec_node=$(netns_node "$1")
    shift
    ip netns exec "$netns_exec_node" "$@"
}
netns_pids() { ip netns pids "$(netns_node "$1")" 2> /dev/null; }
netns_hosts() {
    netns_hosts_i=2
    netns_hosts_list=$(netns_addr 1)
    while [ "$netns_hosts_i" -le "$1" ]; do
        netns_hosts_list="$netns_hosts_list,$(netns_addr "$netns_hosts_i")"
        netns_hosts_i=$((netns_hosts_i + 1))
    done
    echo "$netns_hosts_list"
}

# netns_fail MESSAGE [FILE]: MESSAGE, plus FILE's last line (a tool's error), on stderr.
netns_fail() {
    if [ $# -gt 1 ] && [ -s "$2" ]; then
        echo "$1: $(tail -n 1 "$2")" >&2
    else
        echo "$1" >&2
    fi
    return 1
}

netns_probe() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "network namespaces need root (running as uid $(id -u))" >&2
        return 1
    fi
    if ! command -v ip > /dev/null 2>&1 || ! command -v tc > /dev/null 2>&1; then
        echo "no 'ip' or 'tc' command (Debian package iproute2)" >&2
        return 1
    fi
    netns_probe_err=$(mktemp "${TMPDIR:-/tmp}/netns-probe.XXXXXX") || return 1
    netns_probe_ns="${1}probe"
    netns_probe_ok=1
    if ! ip netns add "$netns_probe_ns" 2> "$netns_probe_err"; then
        netns_fail "cannot make a network namespace ('ip netns add')" "$netns_probe_err"
    elif ! ip -n "$netns_probe_ns" link add p1 type veth peer name p2 2> "$netns_probe_err"; then
        netns_fail "cannot make a veth pair in a namespace" "$netns_probe_err"
    elif ! ip -n "$netns_probe_ns" link add br0 type bridge 2> "$netns_probe_err"; then
        netns_fail "cannot make a bridge in a namespace" "$netns_probe_err"
    else
        netns_probe_ok=0
    fi
    ip netns del "$netns_probe_ns" 2> /dev/null
    rm -f "$netns_probe_err"
    return $netns_probe_ok
}

netns_create() {
    NETNS_PREFIX=$1
    NETNS_SWITCH="${1}sw"
    netns_create_err=$(mktemp "${TMPDIR:-/tmp}/netns-create.XXXXXX") || return 1
    # Made in order; netns_destroy removes whatever exists, so a failure
    # half-way leaves nothing behind once the caller's trap runs.
    if ! { ip netns add "$NETNS_SWITCH" &&
        NETNS_INODES=$(netns_inode "$NETNS_SWITCH") &&
        ip -n "$NETNS_SWITCH" link set lo up &&
        ip -n "$NETNS_SWITCH" link add br0 type bridge &&
        ip -n "$NETNS_SWITCH" link set br0 up; } 2> "$netns_create_err"; then
        netns_fail "cannot make the switch namespace $NETNS_SWITCH" "$netns_create_err"
        rm -f "$netns_create_err"
        return 1
    fi
    netns_create_i=1
    while [ "$netns_create_i" -le "$2" ]; do
        netns_create_node=$(netns_node "$netns_create_i")
        if ! { ip netns add "$netns_create_node" &&
            NETNS_NODES=$netns_create_i &&
            NETNS_INODES="$NETNS_INODES $(netns_inode "$netns_create_node")" &&
            ip -n "$netns_create_node" link set lo up &&
            ip -n "$NETNS_SWITCH" link add "p$netns_create_i" type veth \
                peer name "$NETNS_IF" netns "$netns_create_node" &&
            ip -n "$NETNS_SWITCH" link set "p$netns_create_i" master br0 up &&
            ip -n "$netns_create_node" addr add "$(netns_addr "$netns_create_i")/24" dev "$NETNS_IF" &&
            ip -n "$netns_create_node" link set "$NETNS_IF" up &&
            ip netns exec "$netns_create_node" sysctl -qw net.ipv4.tcp_retries2=5; } 2> "$netns_create_err"; then
            netns_fail "cannot make node $netns_create_i ($netns_create_node)" "$netns_create_err"
            rm -f "$netns_create_err"
            return 1
        fi
        netns_create_i=$((netns_create_i + 1))
    done
    rm -f "$netns_create_err"
}

# netns_inode NAME: the inode number of a named network namespace (readlink /proc/PID/ns/net
# of a process in it says net:[INODE]).
netns_inode() { stat -L -c %i "/run/netns/$1"; }

# netns_inode_pids "INODE...": the processes whose network namespace is one of these.
netns_inode_pids() {
    [ -n "$1" ] || return 0
    # shellcheck disable=SC2012 # ls -l shows each link's target in one call
    ls -l /proc/[0-9]*/ns/net 2> /dev/null | awk -v want=" $1 " '$(NF - 1) == "->" {
        ino = $NF; gsub(/[^0-9]/, "", ino)
        if (index(want, " " ino " ")) { split($(NF - 2), path, "/"); print path[3] } }'
}

# netns_rate_bytes RATE: tc's rate (bit/s with k/m/g, or bps for bytes) in bytes per second.
netns_rate_bytes() {
    echo "$1" | awk '{
        r = tolower($0)
        if (match(r, /^[0-9.]+/) == 0) exit 1
        n = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1)
        if (u == "bit") m = 1 / 8; else if (u == "kbit") m = 1e3 / 8;
        else if (u == "mbit") m = 1e6 / 8; else if (u == "gbit") m = 1e9 / 8;
        else if (u == "bps") m = 1; else if (u == "kbps") m = 1e3; else if (u == "mbps") m = 1e6;
        else if (u == "gbps") m = 1e9; else exit 1
        printf "%.0f\n", n * m
    }'
}

# netns_tc NAMESPACE DEVICE RATE DELAY: the link's queueing discipline, replacing any.
netns_tc() {
    tc -n "$1" qdisc del dev "$2" root 2> /dev/null
    if [ "$3" != none ]; then
        netns_tc_bytes=$(netns_rate_bytes "$3") || {
            echo "bad link rate '$3' (expected e.g. 100mbit, 1gbit, 10gbit)" >&2
            return 1
        }
        # The bucket holds 4 ms of traffic (at least 256 KiB: veth hands tbf
        # GSO packets of up to 64 KiB) and the queue 20 ms more, so TCP sees
        # a full link without drops while the average rate is the one asked.
        netns_tc_burst=$(awk -v b="$netns_tc_bytes" 'BEGIN { x = b * 0.004; if (x < 262144) x = 262144; printf "%.0f", x }')
        netns_tc_limit=$(awk -v b="$netns_tc_bytes" -v u="$netns_tc_burst" 'BEGIN { printf "%.0f", u + b * 0.020 }')
    fi
    if [ "$4" != none ]; then
        tc -n "$1" qdisc add dev "$2" root handle 1: netem delay "$4" limit 100000 || return 1
        [ "$3" = none ] && return 0
        tc -n "$1" qdisc add dev "$2" parent 1:1 handle 10: tbf rate "$3" \
            burst "$netns_tc_burst" limit "$netns_tc_limit"
    elif [ "$3" != none ]; then
        tc -n "$1" qdisc add dev "$2" root handle 1: tbf rate "$3" \
            burst "$netns_tc_burst" limit "$netns_tc_limit"
    fi
}

netns_shape() {
    netns_shape_rate=$1
    netns_shape_delay=${2:-none}
    netns_shape_err=$(mktemp "${TMPDIR:-/tmp}/netns-shape.XXXXXX") || return 1
    netns_shape_i=1
    while [ "$netns_shape_i" -le "$NETNS_NODES" ]; do
        # What node I sends (its eth0, with the delay), what it receives (switch side).
        if ! netns_tc "$(netns_node "$netns_shape_i")" "$NETNS_IF" "$netns_shape_rate" \
            "$netns_shape_delay" 2> "$netns_shape_err" ||
            ! netns_tc "$NETNS_SWITCH" "p$netns_shape_i" "$netns_shape_rate" none \
                2>> "$netns_shape_err"; then
            if [ "$netns_shape_delay" != none ] && grep -q 'kind is unknown' "$netns_shape_err"; then
                netns_fail "cannot shape node $netns_shape_i's link to rate $netns_shape_rate, delay $netns_shape_delay (this kernel may lack the netem qdisc)" "$netns_shape_err"
            else
                netns_fail "cannot shape node $netns_shape_i's link to rate $netns_shape_rate, delay $netns_shape_delay" "$netns_shape_err"
            fi
            rm -f "$netns_shape_err"
            return 1
        fi
        netns_shape_i=$((netns_shape_i + 1))
    done
    rm -f "$netns_shape_err"
}

# netns_destroy [PREFIX]: every namespace named PREFIXsw or PREFIXn<digits>,
# after ending the processes in them: TERM, then KILL, in rounds until none is
# left (a daemon that forks as it is signalled is caught by the next round).
# For the cluster this shell made, the processes are found by namespace inode
# too, so that none survives another script deleting the names (one that
# deletes every namespace matching 'fr*', say).
netns_destroy() {
    netns_destroy_prefix=${1:-$NETNS_PREFIX}
    [ -n "$netns_destroy_prefix" ] || return 0
    netns_destroy_inodes=
    [ "$netns_destroy_prefix" != "$NETNS_PREFIX" ] || netns_destroy_inodes=$NETNS_INODES
    netns_destroy_list=$(ip netns list 2> /dev/null | awk -v p="$netns_destroy_prefix" '
        { n = $1; if (n == p "sw" || (index(n, p "n") == 1 && substr(n, length(p) + 2) ~ /^[0-9]+$/)) print n }')
    [ -n "$netns_destroy_list$netns_destroy_inodes" ] || return 0
    netns_destroy_signal=TERM
    netns_destroy_round=0
    while [ $netns_destroy_round -lt 5 ]; do
        netns_destroy_pids=
        for netns_destroy_ns in $netns_destroy_list; do
            netns_destroy_pids="$netns_destroy_pids $(ip netns pids "$netns_destroy_ns" 2> /dev/null | tr '\n' ' ')"
        done
        netns_destroy_pids="$netns_destroy_pids $(netns_inode_pids "$netns_destroy_inodes" | tr '\n' ' ')"
        case $netns_destroy_pids in *[0-9]*) ;; *) netns_destroy_pids= && break ;; esac
        # shellcheck disable=SC2086 # a list of process ids
        kill -$netns_destroy_signal $netns_destroy_pids 2> /dev/null
        netns_destroy_t=0
        while [ $netns_destroy_t -lt 20 ]; do # up to 2 s for them to end
            netns_destroy_alive=
            for netns_destroy_pid in $netns_destroy_pids; do
                kill -0 "$netns_destroy_pid" 2> /dev/null && netns_destroy_alive=yes
            done
            [ -n "$netns_destroy_alive" ] || break
            sleep 0.1
            netns_destroy_t=$((netns_destroy_t + 1))
        done
        netns_destroy_signal=KILL
        netns_destroy_round=$((netns_destroy_round + 1))
    done
    [ -z "$netns_destroy_pids" ] ||
        echo "processes $netns_destroy_pids are still in the namespaces of $netns_destroy_prefix" >&2
    for netns_destroy_ns in $netns_destroy_list; do
        ip netns del "$netns_destroy_ns" 2> /dev/null ||
            echo "could not delete network namespace $netns_destroy_ns" >&2
    done
}
