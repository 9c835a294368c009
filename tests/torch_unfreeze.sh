#!/bin/sh
# torch_unfreeze.sh - frost and PyTorch train the same nets from the same
# --init weights on the same data in the same order (--no-shuffle) across
# --unfreeze-at and --freeze-at points, PyTorch adding a fresh optimizer param
# group at each unfreezing point (as Lightning's BackboneFinetuning does):
# every step's loss agrees within 1e-4, and so do the final weights and
# BatchNorm buffers.
#
# Needs a python3 that can `import torch` (Debian's python3-torch belongs to
# /usr/bin/python3, tried first, then $PYTHON3); without one every case is
# skipped.  tests/torch_unfreeze.py is the PyTorch side; tests/torch_reference.py
# writes the initial weights and compares.
. "$TOP_SRCDIR/tests/common.sh"
REF="$TOP_SRCDIR/tests/torch_reference.py"
UNFREEZE="$TOP_SRCDIR/tests/torch_unfreeze.py"

STEPS=30
BATCH=32
SAMPLES=500 # 16 batches per epoch (the last one 20): epoch 2 begins after step 16

MLP='fc1 = linear(784, 64); relu; fc2 = linear(64, 10)'
CNN='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; conv2 = conv2d(4, 8, 3, padding=1); relu; maxpool2d(2); flatten; fc1 = linear(392, 10)'
RES='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; residual layer1.0 { conv1 = conv2d(4, 4, 3, padding=1, bias=False); relu; conv2 = conv2d(4, 4, 3, padding=1, bias=False) }; relu; flatten; fc = linear(784, 10)'
BN='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1, bias=False); bn1 = batchnorm2d(4); relu; conv2 = conv2d(4, 8, 3, padding=1, bias=False); bn2 = batchnorm2d(8); relu; maxpool2d(2); flatten; fc1 = linear(392, 10)'
# NAME|MODEL|OPTIONS: the same words for frost train and torch_unfreeze.py.
CASES="mlp-sgd-head-then-fc1|$MLP|--freeze fc1 --unfreeze-at s10:fc1 --optimizer sgd --lr 0.05 --momentum 0.9
cnn-adam-epoch2|$CNN|--freeze * --unfreeze fc1 --unfreeze-at 2:conv2 --optimizer adam --lr 0.003
cnn-sgd-nesterov-two-points-freeze-at|$CNN|--freeze conv1 --freeze conv2 --unfreeze-at s8:conv2 --unfreeze-at s20:conv1 --freeze-at s25:fc1 --optimizer sgd --lr 0.02 --momentum 0.9 --nesterov --weight-decay 0.01
residual-adamw-block|$RES|--freeze conv1 --freeze layer1.0 --unfreeze-at 2:layer1.0 --optimizer adamw --lr 0.002 --weight-decay 0.1
batchnorm-sgd-unfreeze-bn1|$BN|--freeze conv1 --freeze bn1 --unfreeze-at s12:bn1 --unfreeze-at s12:conv1 --optimizer sgd --lr 0.01 --momentum 0.9"

each_case() {
    while IFS='|' read -r name model options; do
        "$1" "$name" "$model" "$options" < /dev/null
    done << CASES_END
$CASES
CASES_END
}

# q WORD: WORD quoted for a job file (read with shlex).
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
# words OPTIONS: each word quoted (patterns like * must reach python as they are).
words() {
    set -f
    for w in $1; do printf '%s ' "$(q "$w")"; done
    set +f
}

PY=
for candidate in /usr/bin/python3 "$PYTHON3"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import torch' > /dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
plan 17
if [ -z "$PY" ]; then
    for i in $(seq 1 17); do skip "torch not installed"; done
    done_testing
fi
PYTHON3=$PY
diag "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) under $PY"

mkdir -p "$WORK/data" && make_idx "$WORK/data" "$SAMPLES" 7
init_job() { echo "init --model $(q "$2") --seed 42 --out $(q "$WORK/$1.init.safetensors")"; }
each_case init_job > "$WORK/init.jobs"
"$PY" "$REF" batch "$WORK/init.jobs"
ok $? "torch_reference.py wrote the initial weights"

frost_case() {
    name=$1 model=$2 options=$3
    set -f
    # shellcheck disable=SC2086 # the options are split on purpose
    "$FROST" train --model "$model" --data "$WORK/data" --init "$WORK/$name.init.safetensors" \
        --no-shuffle --steps $STEPS --batch-size $BATCH --threads 1 --log-every 1 \
        --metrics "$WORK/$name.frost.csv" --save "$WORK/$name.frost.safetensors" $options \
        > "$WORK/$name.frost.log" 2>&1
    echo $? > "$WORK/$name.frost.rc"
    set +f
}
each_case frost_case

train_job() {
    echo "train --model $(q "$2") --data $(q "$WORK/data") --init $(q "$WORK/$1.init.safetensors")" \
        "--steps $STEPS --batch-size $BATCH $(words "$3")" \
        "--losses $(q "$WORK/$1.torch.txt") --save $(q "$WORK/$1.torch.safetensors")"
}
each_case train_job > "$WORK/train.jobs"
"$PY" "$UNFREEZE" batch "$WORK/train.jobs"
ok $? "torch_unfreeze.py trained every case"

compare_case() {
    name=$1
    w="$WORK/$name"
    if [ "$(cat "$w.frost.rc")" != 0 ]; then
        ok 1 "$name: frost train failed: $(tail -n 1 "$w.frost.log")"
        ok 1 "$name: (no weights to compare)"
        ok 1 "$name: (no schedule to check)"
        return
    fi
    out=$("$PY" "$REF" compare-losses --tol 1e-4 "$w.frost.csv" "$w.torch.txt" $STEPS 2>&1)
    ok $? "$name: per-step loss across the points, $out"
    out=$("$PY" "$REF" compare-weights --tol 1e-4 "$w.frost.safetensors" "$w.torch.safetensors" 2>&1)
    ok $? "$name: final weights, $out"
    changes=$(grep -c '^step [0-9]*: --[a-z]*-at ' "$w.frost.log")
    [ "$changes" -ge 1 ]
    ok $? "$name: frost applied the schedule ($(grep '^step [0-9]*: --' "$w.frost.log" | cut -d: -f1-2 | tr '\n' ';'))"
}
each_case compare_case
done_testing
