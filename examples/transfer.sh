#!/bin/sh
# transfer.sh - transfer learning on Fashion-MNIST with the frost command.
#
#   1. pretrain a net on classes 0-4 (T-shirt, trouser, pullover, dress,
#      coat) and save its weights;
#   2. fine-tune it on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
#      with part of it frozen: by default a small conv net with its
#      convolutions frozen, so only the classifier (fc1, fc2) trains;
#   3. for comparison, train the same net from scratch on classes 5-9 for the
#      same number of steps;
#   4. evaluate both on the test images of classes 5-9 and print a table.
#
# Step 2 in PyTorch:
#     model.load_state_dict(safetensors.torch.load_file("pre.safetensors"))
#     for name, p in model.named_parameters():
#         if fnmatch(name, "conv*"): p.requires_grad = False
#
# examples/resnet_finetune.sh runs this script with a residual net.
#
# Usage: sh examples/transfer.sh [NAME=VALUE]...  (or set them in the environment)
#   FROST           the frost binary (default: src/frost of this tree, else frost on PATH)
#   DATA            Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)
#   MODEL           the net: a model file or inline text (default: the conv net below)
#   FREEZE          what fine-tuning freezes: --freeze patterns, separated by spaces
#                   (default 'conv*')
#   STEPS           fine-tuning steps, also those of the from-scratch run (default 100)
#   PRETRAIN_STEPS  pretraining steps (default PRETRAIN_FACTOR x STEPS)
#   PRETRAIN_FACTOR (default 3)
#   BATCH           global batch size (default 64)
#   LR              SGD learning rate, momentum 0.9 (default 0.05)
#   THREADS         threads of each run (default OMP_NUM_THREADS, else 2)
#   LOG_EVERY       steps between progress lines (default 50)
#   OUT             directory for the weights (default: a temporary one, removed at the end)
set -eu

for arg in "$@"; do
    case $arg in
    FROST=* | DATA=* | MODEL=* | FREEZE=* | STEPS=* | PRETRAIN_STEPS=* | PRETRAIN_FACTOR=* | \
        BATCH=* | LR=* | THREADS=* | LOG_EVERY=* | OUT=*)
        export "${arg%%=*}=${arg#*=}"
        ;;
    *)
        echo "transfer.sh: unknown argument '$arg' (expected NAME=VALUE; see the top of $0)" >&2
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
        echo "transfer.sh: no frost in ./src or on PATH; set FROST=/path/to/frost" >&2
        exit 2
    fi
fi
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
STEPS=${STEPS:-100}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-$((${PRETRAIN_FACTOR:-3} * STEPS))}
BATCH=${BATCH:-64}
LR=${LR:-0.05}
THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
LOG_EVERY=${LOG_EVERY:-50}
FREEZE=${FREEZE:-conv*}

# 1x28x28 -> conv 16x26x26 -> pool 16x13x13 -> conv 32x11x11 -> pool 32x5x5 = 800
# (check with: frost inspect --model "$MODEL")
if [ -z "${MODEL:-}" ]; then
    MODEL='input 1 28 28; conv1 = conv2d(1, 16, 3); relu; maxpool2d(2);
           conv2 = conv2d(16, 32, 3); relu; maxpool2d(2); flatten;
           fc1 = linear(800, 64); relu; fc2 = linear(64, 10)'
    shown='$MODEL'
else
    shown=$MODEL
fi

# FREEZE as --freeze flags, in "$@" (the patterns are not expanded as file names).
set -f
set --
for pattern in $FREEZE; do
    set -- "$@" --freeze "$pattern"
done
set +f

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tmp=$OUT
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/frost-transfer.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
fi
trap 'exit 130' INT TERM

# run NAME frost-arguments...: run frost, keep its output in $tmp/NAME.log and
# show it indented; on failure show it on stderr and stop.
run() {
    name=$1
    shift
    if ! "$FROST" "$@" > "$tmp/$name.log" 2>&1; then
        cat "$tmp/$name.log" >&2
        echo "transfer.sh: frost $1 failed ($name)" >&2
        exit 1
    fi
    sed 's/^/   /' "$tmp/$name.log"
}

train() {
    name=$1
    shift
    echo "== $name: frost train --model $shown $*"
    run "$name" train --model "$MODEL" --data "$DATA" --batch-size "$BATCH" --lr "$LR" \
        --momentum 0.9 --threads "$THREADS" --seed 1 --log-every "$LOG_EVERY" "$@"
}

evaluate() {
    echo "== $1: frost eval --model $shown --init $2 --classes 5-9"
    run "$1" eval --model "$MODEL" --data "$DATA" --init "$2" --classes 5-9 --threads "$THREADS"
}

train pretrain --classes 0-4 --steps "$PRETRAIN_STEPS" --save "$tmp/pre.safetensors"
train finetune --classes 5-9 --steps "$STEPS" --init "$tmp/pre.safetensors" "$@" \
    --save "$tmp/finetune.safetensors"
train scratch --classes 5-9 --steps "$STEPS" --save "$tmp/scratch.safetensors"
evaluate finetune-eval "$tmp/finetune.safetensors"
evaluate scratch-eval "$tmp/scratch.safetensors"

# Numbers from the logs: the train header and summary, and eval's test line.
trainable() { sed -n 's/^parameters [0-9]*, trainable \([0-9]*\) .*/\1/p' "$tmp/$1.log"; }
rate() { sed -n 's/^done: .*, \([0-9.]*\) samples\/s,.*/\1/p' "$tmp/$1.log"; }
accuracy() { sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*%\).*/\1/p' "$tmp/$1.log"; }

tuned="fine-tune on 5-9, $FREEZE frozen"
width=${#tuned}
[ "$width" -ge 34 ] || width=34
echo
printf "%-${width}s %6s %10s %10s %16s\n" run steps trainable samples/s 'test accuracy'
printf "%-${width}s %6s %10s %10s %16s\n" 'pretrain on 0-4' "$PRETRAIN_STEPS" \
    "$(trainable pretrain)" "$(rate pretrain)" "$(accuracy pretrain) (0-4)"
printf "%-${width}s %6s %10s %10s %16s\n" "$tuned" "$STEPS" \
    "$(trainable finetune)" "$(rate finetune)" "$(accuracy finetune-eval) (5-9)"
printf "%-${width}s %6s %10s %10s %16s\n" 'from scratch on 5-9' "$STEPS" \
    "$(trainable scratch)" "$(rate scratch)" "$(accuracy scratch-eval) (5-9)"
