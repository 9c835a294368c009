#!/bin/sh
# slurm.sh - a frost training run that survives Slurm's time limit.
#
#   sbatch examples/slurm.sh                 (from a directory on a shared filesystem)
#   INIT=pretrained.safetensors sbatch examples/slurm.sh    (fine-tune from weights)
#
# How it works:
#   - Slurm sends SIGUSR1 to every task (every frost rank) 120 s before the
#     time limit (--signal).  frost, told so by --stop-signal USR1, finishes
#     the step in progress, the ranks agree to stop after that same step,
#     rank 0 writes --checkpoint, and every rank exits with status 75
#     (EX_TEMPFAIL); srun passes 75 on.  (SIGTERM, what scancel and
#     preemption send, stops frost the same way.)
#   - On 75 this script requeues the job (--requeue makes that allowed).  The
#     job starts again from the top, and --resume-if-exists finds the
#     checkpoint: the run continues where it stopped with the same data order,
#     optimizer state and step count (bit for bit on the same number of ranks
#     and threads; within float rounding on another).  The first part, with no
#     checkpoint yet, starts afresh (from $INIT if given).
#   - --checkpoint-every 200 bounds what a crash or a node failure can lose.
#   - --open-mode=append keeps the output of every requeued part in one file.
# Every part must be started with the same settings (model, data, batch size,
# seed, frozen set): frost refuses to resume a checkpoint otherwise.
# tests/slurm.sh runs this script on a private one-node cluster (with MODEL,
# DATA, TRAIN_ARGS and SAVE set to something small).
#
#SBATCH --job-name=frost
#SBATCH --nodes=2
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
# USR1 without "B:" goes to the job step's tasks (the frost ranks), not to
# this shell, which has to stay alive to requeue.  (B:USR1 would signal only
# this shell and leave forwarding the signal to the script.)  Slurm may send
# the signal up to a minute earlier than asked; 120 s leaves time for the step
# in progress and the checkpoint.  TERM@120 works too, with --stop-signal TERM
# (the default).
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=frost-%j.out

# frost's data parallelism: MPI ranks across nodes, started by srun (Open MPI
# through PMIx: --mpi=pmix, which a site may make the default), and OpenMP
# threads within each rank.  Without --threads or OMP_NUM_THREADS each rank
# runs one thread per CPU Slurm gave it (its share of them if ranks share CPUs)
# and pins them.  srun does not take --cpus-per-task from sbatch in every
# Slurm version, so it is passed on.
FROST=${FROST:-frost}
MODEL=${MODEL:-examples/cnn.txt}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
CKPT=${CKPT:-ckpt.safetensors} # on a filesystem every node sees: rank 0 writes it
SAVE=${SAVE:-final.safetensors}
TRAIN_ARGS=${TRAIN_ARGS:---epochs 10 --batch-size 256 --lr 0.05 --momentum 0.9 --seed 1 --log-every 50}

echo "part ${SLURM_RESTART_COUNT:-0} of job ${SLURM_JOB_ID:-?}"
# $TRAIN_ARGS is unquoted on purpose: it is several words; so is $START.
START=
[ -n "${INIT:-}" ] && START="--init $INIT"
srun --mpi=pmix --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    "$FROST" train --model "$MODEL" --data "$DATA" $TRAIN_ARGS --save "$SAVE" \
    --checkpoint "$CKPT" --checkpoint-every 200 --resume-if-exists --stop-signal USR1 $START
status=$?

case $status in
0)
    echo "training finished: $SAVE (checkpoint $CKPT)"
    ;;
75)
    # Stopped by the time-limit signal after writing the checkpoint: run again.
    echo "stopped before the time limit; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    ;;
*)
    # A real error (frost printed one line saying what): do not loop on it.
    echo "frost failed with status $status; not requeueing" >&2
    ;;
esac
exit $status
