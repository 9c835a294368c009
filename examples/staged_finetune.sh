#!/bin/sh
# staged_finetune.sh - gradual unfreezing under data parallelism.
#
#   1. pretrain examples/resnet_small.txt on Fashion-MNIST classes 0-4
#      (T-shirt, trouser, pullover, dress, coat), or take PRETRAINED weights;
#   2. fine-tune it on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
#      three ways, each for 3 x STAGE_STEPS steps under mpirun -np RANKS:
#        head only      fc alone, the rest frozen throughout;
#        staged         fc alone for STAGE_STEPS steps, then layer2.0 too
#                       (--unfreeze-at sSTAGE_STEPS:layer2.0), then the rest
#                       (--unfreeze-at s2xSTAGE_STEPS:'*'): every rank
#                       re-plans its gradients at each point, the allreduce
#                       grows with the trainable set, and the frozen-prefix
#                       feature cache shortens with the frozen prefix;
#        everything     every parameter trains from the start;
#      each evaluating on the test images every STAGE_STEPS steps;
#   3. print a table: test accuracy on 5-9, and the bytes each rank sent into
#      the gradient allreduce per step in each phase (from --metrics).
#
# The staged run in PyTorch Lightning is BackboneFinetuning-style unfreezing
# (requires_grad plus a new optimizer param group at each stage), which under
# DDP needs find_unused_parameters or lr=0 tricks that still send every
# gradient; here the allreduce carries only what trains.
# Discriminative rates in the staged run (--lr-for, the last matching rule
# wins): the head at LR, layer2.0 at LR/10, the stem and layer1 at LR/100,
# so what was pretrained longest moves least once it is unfrozen.
#
# Usage: sh examples/staged_finetune.sh [NAME=VALUE]...  (or set them in the environment)
#   FROST           the frost binary (default: ./src/frost, else frost on PATH)
#   DATA            Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)
#   STAGE_STEPS     steps per stage (default 300); each fine-tuning run has 3 x that
#   PRETRAIN_STEPS  pretraining steps (default 2 x STAGE_STEPS)
#   PRETRAINED      weights to start from instead of pretraining (resnet_small.txt's)
#   BATCH           global batch size (default 64)
#   LR              SGD learning rate, momentum 0.9 (default 0.05)
#   RANKS           MPI ranks of the fine-tuning runs (default 2; 1 runs without mpirun)
#   THREADS         threads per rank (default 1)
#   MPIRUN          the mpirun to use (default mpirun)
#   OUT             directory for weights, metrics and logs (default: a temporary one, removed)
set -eu

for arg in "$@"; do
    case $arg in
    FROST=* | DATA=* | STAGE_STEPS=* | PRETRAIN_STEPS=* | PRETRAINED=* | BATCH=* | LR=* | \
        RANKS=* | THREADS=* | MPIRUN=* | OUT=*)
        export "${arg%%=*}=${arg#*=}"
        ;;
    *)
        echo "staged_finetune.sh: unknown argument '$arg' (expected NAME=VALUE; see the top of $0)" >&2
        exit 2
        ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${FROST:-}" ]; then
    if [ -x "$here/../src/frost" ]; then
        FROST="$here/../src/frost"
    elif command -v frost > /dev/null 2>&1; then
        FROST=frost
    else
        echo "staged_finetune.sh: no frost in ./src or on PATH; set FROST=/path/to/frost" >&2
        exit 2
    fi
fi
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
STAGE_STEPS=${STAGE_STEPS:-300}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-$((2 * STAGE_STEPS))}
BATCH=${BATCH:-64}
LR=${LR:-0.05}
RANKS=${RANKS:-2}
THREADS=${THREADS:-1}
MPIRUN=${MPIRUN:-mpirun}
STEPS=$((3 * STAGE_STEPS))
MODEL="$here/resnet_small.txt"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tmp=$OUT
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/frost-staged.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
fi
trap 'exit 130' INT TERM

launch=
if [ "$RANKS" -gt 1 ]; then
    launch="$MPIRUN -np $RANKS --oversubscribe -x OMP_NUM_THREADS=$THREADS"
    [ "$(id -u)" -ne 0 ] || launch="$launch --allow-run-as-root"
fi

# run NAME LAUNCH frost-arguments...: run frost, keep its output in
# $tmp/NAME.log and show it indented; on failure show it on stderr and stop.
run() {
    name=$1 with=$2
    shift 2
    # shellcheck disable=SC2086 # the launcher's words are split on purpose
    if ! $with "$FROST" "$@" > "$tmp/$name.log" 2>&1; then
        cat "$tmp/$name.log" >&2
        echo "staged_finetune.sh: frost $1 failed ($name)" >&2
        exit 1
    fi
    sed 's/^/   /' "$tmp/$name.log"
}

common="--data $DATA --batch-size $BATCH --lr $LR --momentum 0.9 --seed 1 --threads $THREADS"
if [ -z "${PRETRAINED:-}" ]; then
    echo "== pretrain: frost train --model examples/resnet_small.txt --classes 0-4 --steps $PRETRAIN_STEPS"
    # shellcheck disable=SC2086
    run pretrain "" train --model "$MODEL" $common --classes 0-4 --steps "$PRETRAIN_STEPS" \
        --log-every 100 --save "$tmp/pre.safetensors"
    PRETRAINED="$tmp/pre.safetensors"
fi

finetune() {
    name=$1
    shift
    echo "== $name: ${launch:+$launch }frost train --classes 5-9 --steps $STEPS $*"
    # shellcheck disable=SC2086
    run "$name" "$launch" train --model "$MODEL" $common --classes 5-9 --steps "$STEPS" \
        --init "$PRETRAINED" --log-every 100 --eval-every "$STAGE_STEPS" \
        --metrics "$tmp/$name.csv" --save "$tmp/$name.safetensors" "$@"
}
finetune head --freeze '*' --unfreeze fc
LR_MIDDLE=$(awk -v lr="$LR" 'BEGIN { print lr / 10 }')
LR_STEM=$(awk -v lr="$LR" 'BEGIN { print lr / 100 }')
finetune staged --freeze '*' --unfreeze fc \
    --unfreeze-at "s$STAGE_STEPS:layer2.0" --unfreeze-at "s$((2 * STAGE_STEPS)):*" \
    --lr-for "layer2.0*=$LR_MIDDLE" --lr-for "conv1*=$LR_STEM" --lr-for "bn1*=$LR_STEM" \
    --lr-for "layer1*=$LR_STEM"
finetune everything

# Numbers from the logs and metrics: the test line, and each phase's bytes per
# step (the allreduce_bytes column's values in order; 0 on one rank).
accuracy() { sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*%\).*/\1/p' "$tmp/$1.log"; }
trainable() { sed -n 's/^parameters [0-9]*, trainable \([0-9]*\) .*/\1/p' "$tmp/$1.log"; }
final_trainable() {
    sed -n 's/^step [0-9]*: .*trainable parameters [0-9]* -> \([0-9]*\),.*/\1/p' "$tmp/$1.log" |
        tail -n 1
}
bytes() {
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "allreduce_bytes") c = i; next }
        NR == 2 || $c != last { printf "%s%s", sep, $c; sep = " / "; last = $c }' "$tmp/$1.csv"
}
rate() { sed -n 's/^done: .*, \([0-9.]*\) samples\/s,.*/\1/p' "$tmp/$1.log"; }

echo
printf '%-50s %6s %10s %10s %-24s %8s\n' "fine-tuning on 5-9 ($RANKS rank(s))" steps trainable samples/s \
    'allreduce bytes/step' 'test acc'
printf '%-50s %6s %10s %10s %-24s %8s\n' 'head only (fc)' "$STEPS" "$(trainable head)" \
    "$(rate head)" "$(bytes head)" "$(accuracy head)"
printf '%-50s %6s %10s %10s %-24s %8s\n' \
    "staged: fc, +layer2.0 after $STAGE_STEPS, +all after $((2 * STAGE_STEPS))" "$STEPS" \
    "$(trainable staged)->$(final_trainable staged)" "$(rate staged)" "$(bytes staged)" \
    "$(accuracy staged)"
printf '%-50s %6s %10s %10s %-24s %8s\n' 'everything' "$STEPS" "$(trainable everything)" \
    "$(rate everything)" "$(bytes everything)" "$(accuracy everything)"
