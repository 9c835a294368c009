#!/bin/sh
# torch_compare.sh - frost and PyTorch train the same small nets from the same
# --init weights on the same data in the same order (--no-shuffle); they must
# agree on every step's loss (within 1e-4) and on the final weights and
# buffers (BatchNorm's running statistics; num_batches_tracked exactly), and
# the frozen parameters (and a frozen BatchNorm's buffers) must keep the bits
# of the --init file in both.
#
# Needs a python3 that can `import torch` (Debian's python3-torch belongs to
# /usr/bin/python3, tried first, then $PYTHON3); without one every case is
# reported as skipped.  tests/torch_reference.py is the PyTorch side.  Its
# jobs run in two processes in all (initial weights, then training), because
# importing torch alone takes seconds.
. "$TOP_SRCDIR/tests/common.sh"
REF="$TOP_SRCDIR/tests/torch_reference.py"

STEPS=30
BATCH=32
# 500 samples at batch 32 are 15 full batches and one of 20 per epoch: the
# 30 steps include a short batch and cross into the second epoch.
SAMPLES=500

MLP='fc1 = linear(784, 64); relu; fc2 = linear(64, 10)'
# conv1 -> 4x14x14, conv2 -> 8x14x14, maxpool -> 8x7x7 = 392
CNN='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; conv2 = conv2d(4, 8, 3, padding=1); relu; maxpool2d(2); flatten; fc1 = linear(392, 10)'
# The pooling kinds and conv2d without bias: conv1 -> 4x14x14, maxpool with
# padding -> 4x7x7, conv2 -> 8x7x7, avgpool with padding -> 8x4x4, adaptive
# average -> 8x2x2 = 32
POOLS='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1, bias=False); relu; maxpool2d(3, 2, 1); conv2 = conv2d(4, 8, 3, padding=1); relu; avgpool2d(3, stride=2, padding=1); adaptive_avgpool2d(2); flatten; fc1 = linear(32, 10)'
# Residual blocks: conv1 -> 4x14x14, layer1.0 with the identity shortcut,
# layer2.0 downsampling -> 8x7x7 with a 1x1 convolution as its shortcut and a
# nested identity block in its body = 392
RES='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; residual layer1.0 { conv1 = conv2d(4, 4, 3, padding=1, bias=False); relu; conv2 = conv2d(4, 4, 3, padding=1, bias=False) }; relu; residual layer2.0 { conv1 = conv2d(4, 8, 3, stride=2, padding=1, bias=False); relu; residual inner { conv = conv2d(8, 8, 1) }; shortcut { downsample.0 = conv2d(4, 8, 1, stride=2, bias=False) } }; relu; flatten; fc = linear(392, 10)'

# BatchNorm in train mode (batch statistics, running statistics updated,
# saved as buffers): conv1 -> 4x14x14, conv2 -> 8x14x14, maxpool -> 8x7x7 = 392.
# Frozen, a BatchNorm runs in eval mode in both (its buffers keep their bits).
BN='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1, bias=False); bn1 = batchnorm2d(4); relu; conv2 = conv2d(4, 8, 3, padding=1, bias=False); bn2 = batchnorm2d(8, eps=0.001, momentum=0.2); relu; maxpool2d(2); flatten; fc1 = linear(392, 10)'
# NAME|MODEL|FROZEN|OPTIONS.  FROZEN: --freeze patterns separated by spaces,
# or "-".  OPTIONS: the same words for frost train and torch_reference.py.
CASES="mlp-sgd-momentum|$MLP|-|--optimizer sgd --lr 0.01 --momentum 0.9
mlp-adam|$MLP|-|--optimizer adam --lr 0.001
mlp-adamw|$MLP|-|--optimizer adamw --lr 0.001 --weight-decay 0.1
cnn-sgd-nesterov-freeze-conv1|$CNN|conv1|--optimizer sgd --lr 0.02 --momentum 0.9 --nesterov --weight-decay 0.01
mlp-adam-l2-freeze-fc1|$MLP|fc1|--optimizer adam --lr 0.002 --weight-decay 0.01
cnn-sgd-freeze-biases|$CNN|*.bias|--optimizer sgd --lr 0.05
pools-adam|$POOLS|-|--optimizer adam --lr 0.003
residual-sgd-momentum|$RES|-|--optimizer sgd --lr 0.01 --momentum 0.9
residual-sgd-freeze-layer1|$RES|conv1 layer1.0|--optimizer sgd --lr 0.02 --momentum 0.9
batchnorm-sgd-momentum|$BN|-|--optimizer sgd --lr 0.01 --momentum 0.9
batchnorm-adam-freeze-bn1|$BN|conv1 bn1|--optimizer adam --lr 0.003"

# each_case FUNCTION: calls FUNCTION NAME MODEL FROZEN OPTIONS for every case.
# A here-document, not a pipe, so that the loop runs in this shell and the
# TAP counters of common.sh see its results.
each_case() {
    while IFS='|' read -r name model frozen options; do
        "$1" "$name" "$model" "$frozen" "$options" </dev/null
    done <<CASES_END
$CASES
CASES_END
}

# q WORD: WORD quoted for a job file (torch_reference.py reads it with shlex).
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# freeze_words FROZEN: "--freeze 'P'" for each pattern, for a job file.
freeze_words() {
    [ "$1" = - ] && return 0
    set -f
    for p in $1; do printf -- "--freeze %s " "$(q "$p")"; done
    set +f
}

PY=
for candidate in /usr/bin/python3 "$PYTHON3"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import torch' >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    skip_case() { skip "$1: torch not installed"; }
    each_case skip_case
    done_testing
fi
PYTHON3=$PY # make_idx uses it
diag "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) under $PY"

mkdir -p "$WORK/data" && make_idx "$WORK/data" "$SAMPLES" 7
ok $? "make_idx wrote $SAMPLES training samples"

# 1. Initial weights: PyTorch's default initialisation, one file per case.
init_job() {
    echo "init --model $(q "$2") --seed 42 --out $(q "$WORK/$1.init.safetensors")"
}
each_case init_job > "$WORK/init.jobs"
"$PY" "$REF" batch "$WORK/init.jobs"
ok $? "torch_reference.py wrote the initial weights"

# 2. frost, single-threaded.
frost_case() {
    name=$1 model=$2 frozen=$3 options=$4
    set -f
    # shellcheck disable=SC2086 # the options and patterns are split on purpose
    set -- --model "$model" --data "$WORK/data" --init "$WORK/$name.init.safetensors" \
        --no-shuffle --steps $STEPS --batch-size $BATCH --threads 1 --log-every 1 \
        --metrics "$WORK/$name.frost.csv" --save "$WORK/$name.frost.safetensors" $options
    if [ "$frozen" != - ]; then
        for p in $frozen; do set -- "$@" --freeze "$p"; done
    fi
    set +f
    "$FROST" train "$@" > "$WORK/$name.frost.log" 2>&1
    echo $? > "$WORK/$name.frost.rc"
}
each_case frost_case

# 3. PyTorch, every case in one process.
train_job() {
    echo "train --model $(q "$2") --data $(q "$WORK/data")" \
         "--init $(q "$WORK/$1.init.safetensors") --steps $STEPS --batch-size $BATCH" \
         "$(freeze_words "$3") $4" \
         "--losses $(q "$WORK/$1.torch.txt") --save $(q "$WORK/$1.torch.safetensors")"
}
each_case train_job > "$WORK/train.jobs"
"$PY" "$REF" batch "$WORK/train.jobs"
ok $? "torch_reference.py trained every case"

# 4. Compare.
compare_case() {
    name=$1 frozen=$3
    w="$WORK/$name"
    if [ "$(cat "$w.frost.rc")" != 0 ]; then
        ok 1 "$name: frost train failed: $(tail -n 1 "$w.frost.log")"
        return
    fi
    out=$("$PY" "$REF" compare-losses --tol 1e-4 "$w.frost.csv" "$w.torch.txt" $STEPS 2>&1)
    ok $? "$name: per-step loss, $out"
    out=$("$PY" "$REF" compare-weights --tol 1e-4 "$w.frost.safetensors" \
          "$w.torch.safetensors" 2>&1)
    ok $? "$name: final weights, $out"
    [ "$frozen" = - ] && return
    set -f
    # shellcheck disable=SC2086
    a=$("$PY" "$REF" same-bits "$w.init.safetensors" "$w.frost.safetensors" $frozen 2>&1)
    ra=$?
    # shellcheck disable=SC2086
    b=$("$PY" "$REF" same-bits "$w.init.safetensors" "$w.torch.safetensors" $frozen 2>&1)
    rb=$?
    set +f
    ok $((ra || rb)) "$name: frozen parameters keep their --init bits (frost $a; torch $b)"
}
each_case compare_case
done_testing
