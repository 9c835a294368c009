#!/bin/sh
# slurm.sh - a frost training run that survives Slurm's time limit.
#
#   sbatch examples/slurm.sh                 (from a directory on a shared filesystem)
#   INIT=pretrained.safetensors sbatch examples/slurm.sh    (fine-tune from weights)
#
# How it works:
#   - Slurm sends SIGTERM to every task (every frost rank) 120 s before the
#     time limit (--signal).  frost finishes the step in progress, the ranks
#     agree to stop after that same step, rank 0 writes --checkpoint, and every
#     rank exits with status 75 (EX_TEMPFAIL); srun passes 75 on.
#   - On 75 this script requeues the job (--requeue makes that allowed).  The
#     job starts again from the top, finds the checkpoint and adds --resume:
#     the run continues where it stopped with the same data order, optimizer
#     state and step count (bit for bit on the same number of ranks and
#     threads; within float rounding on another).
#   - --checkpoint-every 200 bounds what a crash or a node failure can lose.
#   - --open-mode=append keeps the output of every requeued part in one file.
# Every part must be started with the same settings (model, data, batch size,
# seed, frozen set): frost refuses to resume a checkpoint otherwise.
#
#SBATCH --job-name=frost
#SBATCH --nodes=2
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
# TERM without "B:" goes to the job step's tasks (the frost ranks), not to this
# shell, which has to stay alive to requeue.  (B:TERM would signal only this
# shell and leave forwarding the signal to the script.)  Slurm may send the
# signal up to a minute earlier than asked; 120 s leaves time for the step in
# progress and the checkpoint.
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=frost-%j.out

# frost's data parallelism: MPI ranks across nodes, started by srun (which
# needs an Open MPI that Slurm can launch; with PMIx, `srun --mpi=pmix`), and
# OpenMP threads within each rank.  --threads defaults to OMP_NUM_THREADS.
OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
OMP_PROC_BIND=close
export OMP_NUM_THREADS OMP_PROC_BIND

FROST=${FROST:-frost}
MODEL=${MODEL:-examples/cnn.txt}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
CKPT=${CKPT:-ckpt.safetensors} # on a filesystem every node sees: rank 0 writes it

# The first part starts from seeded initialisation (or from $INIT); every
# requeued part resumes from the checkpoint.  --resume and --init exclude each
# other: the checkpoint already holds the weights.
if [ -f "$CKPT" ]; then
    START="--resume $CKPT"
    echo "part ${SLURM_RESTART_COUNT:-0} of job ${SLURM_JOB_ID:-?}: resuming from $CKPT"
elif [ -n "${INIT:-}" ]; then
    START="--init $INIT"
else
    START=
fi

# $START is unquoted on purpose: it is empty or two words.
srun "$FROST" train --model "$MODEL" --data "$DATA" \
    --epochs 10 --batch-size 256 --lr 0.05 --momentum 0.9 --seed 1 \
    --log-every 50 --save final.safetensors \
    --checkpoint "$CKPT" --checkpoint-every 200 $START
status=$?

case $status in
0)
    echo "training finished: final.safetensors (checkpoint $CKPT)"
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
