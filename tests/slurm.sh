#!/bin/sh
# slurm.sh - frost under a real Slurm.  The test starts its own one-node
# cluster (munged, slurmctld and slurmd on 127.0.0.1, with its own key,
# socket, ports, config and state under $WORK: nothing of a system-wide Slurm
# or MUNGE is used or touched) and stops it at the end.  Then:
#   - sbatch examples/slurm.sh; `scancel -s USR1` (what --signal=USR1@120
#     sends) stops the step: frost checkpoints and exits 75, the script
#     requeues the job, the next part resumes (--resume-if-exists) and the
#     final weights equal an uninterrupted run's, bit for bit;
#   - srun -n 2 --mpi=pmix starts an MPI frost run: each rank runs its share
#     of the node's CPUs as threads, and the weights equal mpirun's.
# Skipped, with the reason, without Slurm and MUNGE (Debian: slurm-wlm munge),
# when not root (slurmd must be), or when the daemons do not start.
. "$TOP_SRCDIR/tests/common.sh"

PATH=$PATH:/usr/sbin:/sbin
for tool in munged slurmctld slurmd sbatch srun scancel scontrol sinfo squeue; do
    if ! command -v $tool > /dev/null 2>&1; then
        skip "no $tool: install slurm-wlm and munge"
        done_testing
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    skip "slurmd of a private cluster must run as root"
    done_testing
fi
# Nothing of a Slurm job this test may itself be running in.
for var in $(env | sed -n 's/^\(SLURM_[A-Z0-9_]*\)=.*/\1/p'); do unset "$var"; done

C=$WORK/cluster
mkdir -p "$C/munge" "$C/state" "$C/spool" "$C/tmp"
chmod 700 "$C/munge"
export SLURM_CONF="$C/slurm.conf"

# Every process of this cluster (daemons, step daemons, job processes) has
# this SLURM_CONF in its environment: stop exactly those.
cluster_pids() {
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        case $(cat "/proc/$pid/comm" 2> /dev/null) in tr | grep | cat | "") continue ;; esac
        tr '\0' '\n' 2> /dev/null < "$environ" | grep -qxF "SLURM_CONF=$SLURM_CONF" && echo "$pid"
    done
}
stop_cluster() {
    squeue -h -o %i 2> /dev/null | xargs -r scancel 2> /dev/null
    pids=$(cluster_pids)
    [ -n "$pids" ] && kill -TERM $pids 2> /dev/null
    [ -n "${munged_pid:-}" ] && kill -TERM "$munged_pid" 2> /dev/null
    i=0
    while [ -n "$(cluster_pids)" ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    pids=$(cluster_pids)
    [ -n "$pids" ] && kill -KILL $pids 2> /dev/null
    [ -n "${munged_pid:-}" ] && wait "$munged_pid" 2> /dev/null
}
trap 'stop_cluster; rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM HUP

# MUNGE: a fresh key, our own socket; --force because root runs it.
dd if=/dev/urandom of="$C/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$C/munge/munge.key"
munged -F --force --socket="$C/munge/munge.sock" --key-file="$C/munge/munge.key" \
    --pid-file="$C/munge/munged.pid" --seed-file="$C/munge/munged.seed" \
    --log-file="$C/munged.log" > "$C/munged.out" 2>&1 &
munged_pid=$!

# Two free TCP ports on 127.0.0.1; the node as slurmd sees this machine.
set -- $("$PYTHON3" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
ctld_port=$1 slurmd_port=$2
node=$(slurmd -C 2> /dev/null | sed -n 's/^NodeName=\([^ ]*\) .*/\1/p')
hardware=$(slurmd -C 2> /dev/null | sed -n 's/^NodeName=[^ ]* \(CPUs=.*\) RealMemory=.*/\1/p')
cat > "$SLURM_CONF" <<EOF
ClusterName=frosttest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$C/munge/munge.sock
StateSaveLocation=$C/state
SlurmdSpoolDir=$C/spool
TmpFS=$C/tmp
SlurmctldPidFile=$C/slurmctld.pid
SlurmdPidFile=$C/slurmd.pid
SlurmctldLogFile=$C/slurmctld.log
SlurmdLogFile=$C/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=frost Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
up=1
if [ -n "$node" ] && [ -n "$hardware" ]; then
    slurmctld -D -i > "$C/slurmctld.out" 2>&1 &
    slurmd -D -N "$node" > "$C/slurmd.out" 2>&1 &
    i=0
    until sinfo -h -o %t 2> /dev/null | grep -qx idle || [ $i -ge 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    sinfo -h -o %t 2> /dev/null | grep -qx idle && up=0
fi
if [ $up -ne 0 ]; then
    for log in munged.log slurmctld.log slurmd.log slurmctld.out slurmd.out; do
        [ -f "$C/$log" ] && tail -n 5 "$C/$log" | sed "s/^/# $log: /"
    done
    skip "the private Slurm cluster (munged, slurmctld, slurmd) did not start: see the log lines above"
    done_testing
fi
cpus=$(sinfo -h -o %c)
ok 0 "a private one-node cluster is up: node $node with $cpus CPUs, ports $ctld_port and $slurmd_port on 127.0.0.1"

# scontrol_field JOB NAME: one field of `scontrol show job`.
scontrol_field() { scontrol show job "$1" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

D=$WORK/data
mkdir -p "$D"
make_idx "$D" 400 5
# A model that takes milliseconds a step, so the run is still going when the
# signal comes: it is sent some 0.2 s after step 10, and the run has 1300
# steps (13 an epoch, the last one 16 samples); here it lands near step 130
# on one process, step 30 on two ranks.
export MODEL='fc1 = linear(784, 256); relu; fc2 = linear(256, 256); relu; fc3 = linear(256, 10)'
export DATA=$D CKPT=$WORK/ckpt.safetensors SAVE=$WORK/final.safetensors FROST
export TRAIN_ARGS='--epochs 100 --batch-size 32 --lr 0.01 --momentum 0.9 --seed 1 --log-every 10'
# Two ranks with MPI, one without; one CPU each (OMP_NUM_THREADS=1 from make check).
ranks=1
[ -n "${MPIRUN:-}" ] && [ "$cpus" -ge 2 ] && ranks=2

# ----------------------------------------------- sbatch, signal, requeue
# The uninterrupted run: the same command, the same layout.
srun -n $ranks --cpus-per-task=1 --mpi=pmix "$FROST" train --model "$MODEL" --data "$DATA" \
    $TRAIN_ARGS --save "$WORK/straight.safetensors" > "$WORK/straight.out" 2>&1
status=$?
[ $status -eq 0 ] || tail -n 5 "$WORK/straight.out" | sed 's/^/#   /'
ok $status "srun -n $ranks: the uninterrupted run"

job=$(sbatch --parsable --nodes=1 --ntasks=$ranks --cpus-per-task=1 --time=10 --chdir="$WORK" \
    --output="$WORK/job.out" "$TOP_SRCDIR/examples/slurm.sh")
ok $? "sbatch examples/slurm.sh: job $job"
i=0
until grep -q '^epoch ' "$WORK/job.out" 2> /dev/null || [ $i -ge 2400 ]; do
    sleep 0.05
    i=$((i + 1))
done
# Without -b, scancel signals the job's steps (the frost ranks), not the
# batch shell: what #SBATCH --signal=USR1@120 does at the time limit.
scancel -s USR1 "$job"
ok $? "scancel -s USR1 $job, once the step trains"
# Slurm holds a requeued job for two minutes (its BeginTime); make that 3 s.
# (Not 0: slurmd refuses to start the job with a credential made in the same
# second as it revoked the first part's: "Job credential revoked".)  Then
# wait for the end (5 minutes at most): the second part completing, or a
# final state that lasts (while the first part is being requeued the job may
# show one for a moment).
i=0 final=0 released=0
while [ $i -lt 3000 ]; do
    state=$(scontrol_field "$job" JobState)
    [ "$state" = COMPLETED ] && [ "$(scontrol_field "$job" Restarts)" = 1 ] && break
    case $state in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) final=$((final + 1)) ;;
    *) final=0 ;;
    esac
    [ $final -ge 25 ] && break
    if [ $released -eq 0 ] && [ "$(scontrol_field "$job" Reason)" = BeginTime ]; then
        scontrol update JobId="$job" StartTime=now+3 2> /dev/null && released=1
    fi
    sleep 0.2
    i=$((i + 2))
done
sed 's/^/#   job.out: /' "$WORK/job.out"
step=$(sed -n 's/^frost: stopped by a signal after step \([0-9]*\); checkpoint written to .*/\1/p' "$WORK/job.out")
[ -n "$step" ] && grep -q "^stopped before the time limit; requeueing job $job\$" "$WORK/job.out"
ok $? "USR1 stops the step after step $step with exit status 75, and the script requeues the job"
[ "$state" = COMPLETED ] && [ "$(scontrol_field "$job" Restarts)" = 1 ] &&
    [ "$(scontrol_field "$job" ExitCode)" = 0:0 ]
status=$?
if [ $status -ne 0 ]; then
    scontrol show job "$job" | sed 's/^/#   /'
    grep -h -i -E "JobId=$job|error" "$C/slurmctld.log" "$C/slurmd.log" | tail -n 20 | sed 's/^/#   /'
fi
ok $status "the job ran twice and completed (state $state, restarts $(scontrol_field "$job" Restarts), exit code $(scontrol_field "$job" ExitCode))"
grep -q "^resumed from $CKPT at step $step\$" "$WORK/job.out" &&
    grep -q "^training finished: $SAVE" "$WORK/job.out"
ok $? "the requeued part resumes from the checkpoint at step $step and finishes"
cmp "$WORK/straight.safetensors" "$SAVE" > /dev/null 2>&1
ok $? "the final weights equal the uninterrupted run's, bit for bit"

# ------------------------------------------------- srun --mpi=pmix, threads
why=
[ -z "${MPIRUN:-}" ] && why="frost was built without MPI"
[ "$cpus" -lt 2 ] && why="one CPU: no room for two tasks"
if [ -n "$why" ]; then
    skip "$why"
    skip "$why"
    skip "$why"
    done_testing
fi
# Without OMP_NUM_THREADS or --threads, each of 2 ranks sharing the node's
# CPUs (task/none binds nothing) runs half of them; mpirun --bind-to none
# gives the ranks the same mask, so the same layout and the same weights.
share=$("$PYTHON3" -c 'import os; print(max(1, len(os.sched_getaffinity(0)) // 2))')
SMALL='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
SMALL_ARGS="--steps 20 --batch-size 32 --lr 0.05 --seed 2"
env -u OMP_NUM_THREADS srun -n 2 --mpi=pmix "$FROST" train --model "$SMALL" --data "$D" $SMALL_ARGS \
    --save "$WORK/srun.safetensors" > "$WORK/srun.out" 2> "$WORK/srun.err"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/srun.err"
grep -q "^frost .*: 2 ranks x $share thread" "$WORK/srun.out"
ok $((status + $?)) "srun -n 2 --mpi=pmix frost train: 2 ranks x $share thread(s): $(head -n 1 "$WORK/srun.out")"
grep -q "^threads: $share (the rank's share of CPUs [0-9,-]*), " "$WORK/srun.out" && [ ! -s "$WORK/srun.err" ]
ok $? "each rank runs its share of the CPUs, no warning: $(grep '^threads:' "$WORK/srun.out")"
env -u OMP_NUM_THREADS timeout 120 "$MPIRUN" --allow-run-as-root --bind-to none -np 2 \
    "$FROST" train --model "$SMALL" --data "$D" $SMALL_ARGS --save "$WORK/mpirun.safetensors" \
    > "$WORK/mpirun.out" 2>&1 &&
    cmp "$WORK/srun.safetensors" "$WORK/mpirun.safetensors" > /dev/null 2>&1
ok $? "the weights equal those of mpirun -np 2 --bind-to none, bit for bit"
done_testing
