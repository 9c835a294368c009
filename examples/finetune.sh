#!/bin/sh
# finetune.sh - the main job: pretrain the DESIGN.md CNN briefly on
# Fashion-MNIST, then fine-tune its classifier with the convolutions frozen
# (PyTorch's `for p in conv.parameters(): p.requires_grad = False`).
#
#   examples/finetune.sh                 # one process, OMP_NUM_THREADS threads
#   RANKS=2 examples/finetune.sh         # the fine-tuning step under mpirun -np 2
#
# Environment: FROST (the frost binary; default ./src/frost, else frost on
# PATH), DATA (default /usr/share/datasets/fashion-mnist), PRETRAIN_STEPS
# (default 400), FINETUNE_STEPS (default 400), BATCH (64), OUT (a directory
# for the weights and metrics; default a temporary one), RANKS (1).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${FROST:-}" ]; then
    if [ -x "$here/../src/frost" ]; then FROST="$here/../src/frost"; else FROST=frost; fi
fi
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-400}
FINETUNE_STEPS=${FINETUNE_STEPS:-400}
BATCH=${BATCH:-64}
RANKS=${RANKS:-1}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/frost-finetune.XXXXXX")}
MODEL="$here/cnn.txt"
mkdir -p "$OUT"

echo "== pretraining the whole network ($PRETRAIN_STEPS steps, batch $BATCH)"
"$FROST" train --model "$MODEL" --data "$DATA" --steps "$PRETRAIN_STEPS" \
    --batch-size "$BATCH" --lr 0.05 --momentum 0.9 --log-every 100 \
    --save "$OUT/pretrained.safetensors"

echo "== fine-tuning fc1 and fc2 with conv* frozen ($FINETUNE_STEPS steps, $RANKS rank(s))"
launch=""
if [ "$RANKS" -gt 1 ]; then
    launch="mpirun --allow-run-as-root --oversubscribe -np $RANKS -x OMP_NUM_THREADS=1"
fi
$launch "$FROST" train --model "$MODEL" --data "$DATA" --init "$OUT/pretrained.safetensors" \
    --freeze 'conv*' --steps "$FINETUNE_STEPS" --batch-size "$BATCH" --lr 0.02 --momentum 0.9 \
    --log-every 100 --metrics "$OUT/finetune.csv" --save "$OUT/finetuned.safetensors"

echo "== weights and metrics are in $OUT"
