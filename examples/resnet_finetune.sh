#!/bin/sh
# resnet_finetune.sh - transfer learning with a residual net and BatchNorm.
#
#   1. pretrain examples/resnet_small.txt on Fashion-MNIST classes 0-4
#      (T-shirt, trouser, pullover, dress, coat) and save its weights;
#   2. fine-tune it on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
#      with the trunk frozen (conv1, bn1 and the block layer1.0), so layer2.0
#      and fc train; the frozen BatchNorms run in eval mode, on the running
#      statistics of the pretraining (torchvision's FrozenBatchNorm2d);
#   3. for comparison, train the same net from scratch on 5-9 for as many steps;
#   4. evaluate both on the test images of classes 5-9 and print a table.
#
# Step 2 in PyTorch, with the weights converted by examples/torch_state.py:
#     model.load_state_dict(torch.load("pre.pt"))
#     for name, p in model.named_parameters():
#         if name.split(".")[0] in ("conv1", "bn1", "layer1"): p.requires_grad = False
#     model.train(); model.bn1.eval(); model.layer1.apply(lambda m: m.eval())
#
# Usage: sh examples/resnet_finetune.sh [NAME=VALUE]...  (or set them in the environment)
#   FROST           the frost binary (default: ./src/frost, else frost on PATH)
#   DATA            Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)
#   STEPS           fine-tuning steps, also those of the from-scratch run (default 200)
#   PRETRAIN_STEPS  pretraining steps (default 2 x STEPS)
#   BATCH           global batch size (default 64)
#   LR              SGD learning rate, momentum 0.9 (default 0.05)
#   THREADS         threads of each run (default OMP_NUM_THREADS, else 2)
#   OUT             directory for the weights (default: a temporary one, removed at the end)
set -eu

for arg in "$@"; do
    case $arg in
    FROST=* | DATA=* | STEPS=* | PRETRAIN_STEPS=* | BATCH=* | LR=* | THREADS=* | OUT=*)
        export "${arg%%=*}=${arg#*=}"
        ;;
    *)
        echo "resnet_finetune.sh: unknown argument '$arg' (expected NAME=VALUE; see the top of $0)" >&2
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
        echo "resnet_finetune.sh: no frost in ./src or on PATH; set FROST=/path/to/frost" >&2
        exit 2
    fi
fi
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
STEPS=${STEPS:-200}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-$((2 * STEPS))}
BATCH=${BATCH:-64}
LR=${LR:-0.05}
THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
MODEL="$here/resnet_small.txt"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tmp=$OUT
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/frost-resnet.XXXXXX")
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
        echo "resnet_finetune.sh: frost $1 failed ($name)" >&2
        exit 1
    fi
    sed 's/^/   /' "$tmp/$name.log"
}

train() {
    name=$1
    shift
    echo "== $name: frost train --model examples/resnet_small.txt $*"
    run "$name" train --model "$MODEL" --data "$DATA" --batch-size "$BATCH" --lr "$LR" \
        --momentum 0.9 --threads "$THREADS" --seed 1 --log-every 100 "$@"
}

evaluate() {
    echo "== $1: frost eval --model examples/resnet_small.txt --init $2 --classes 5-9"
    run "$1" eval --model "$MODEL" --data "$DATA" --init "$2" --classes 5-9 --threads "$THREADS"
}

train pretrain --classes 0-4 --steps "$PRETRAIN_STEPS" --save "$tmp/pre.safetensors"
train finetune --classes 5-9 --steps "$STEPS" --init "$tmp/pre.safetensors" \
    --freeze conv1 --freeze bn1 --freeze 'layer1*' --save "$tmp/finetune.safetensors"
train scratch --classes 5-9 --steps "$STEPS" --save "$tmp/scratch.safetensors"
evaluate finetune-eval "$tmp/finetune.safetensors"
evaluate scratch-eval "$tmp/scratch.safetensors"

# Numbers from the logs: the train header and summary, and eval's test line.
trainable() { sed -n 's/^parameters [0-9]*, trainable \([0-9]*\) .*/\1/p' "$tmp/$1.log"; }
rate() { sed -n 's/^done: .*, \([0-9.]*\) samples\/s,.*/\1/p' "$tmp/$1.log"; }
accuracy() { sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*%\).*/\1/p' "$tmp/$1.log"; }

echo
printf '%-42s %6s %10s %10s %16s\n' run steps trainable samples/s 'test accuracy'
printf '%-42s %6s %10s %10s %16s\n' 'pretrain on 0-4' "$PRETRAIN_STEPS" \
    "$(trainable pretrain)" "$(rate pretrain)" "$(accuracy pretrain) (0-4)"
printf '%-42s %6s %10s %10s %16s\n' 'fine-tune on 5-9, conv1 bn1 layer1 frozen' "$STEPS" \
    "$(trainable finetune)" "$(rate finetune)" "$(accuracy finetune-eval) (5-9)"
printf '%-42s %6s %10s %10s %16s\n' 'from scratch on 5-9' "$STEPS" \
    "$(trainable scratch)" "$(rate scratch)" "$(accuracy scratch-eval) (5-9)"
