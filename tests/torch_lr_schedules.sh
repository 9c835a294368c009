#!/bin/sh
# torch_lr_schedules.sh - frost's learning-rate schedules, warmup, per-parameter
# learning rates (--lr-for) and gradient clipping against PyTorch's
# schedulers, param groups and clip_grad_norm_: from the same --init weights
# on the same data in the same order (--no-shuffle), every step's loss agrees
# within 1e-4, every step's learning rate (the metrics' lr column, the group
# at --lr in torch) within 1e-9 relative, every step's gradient norm before
# clipping (grad_norm, what clip_grad_norm_ returns) within 1e-4 relative,
# and the final weights within 1e-4.
#
# The torch side (tests/torch_reference.py train) builds StepLR,
# CosineAnnealingLR, and for --warmup-steps N
# SequentialLR([LambdaLR(lambda k: (k + 1) / N), SCHEDULE], milestones=[N]),
# stepping the scheduler after every optimizer step; one case builds the
# warmup as LinearLR(start_factor=1/N, total_iters=N-1) instead, the same
# factors.  Needs a python3 that can `import torch` (as torch_compare.sh);
# without one every case is reported as skipped.
. "$TOP_SRCDIR/tests/common.sh"
REF="$TOP_SRCDIR/tests/torch_reference.py"

STEPS=30
BATCH=32
SAMPLES=500 # 15 full batches and one of 20 per epoch: the run crosses into epoch 2

MLP='fc1 = linear(784, 64); relu; fc2 = linear(64, 10)'
CNN='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; conv2 = conv2d(4, 8, 3, padding=1); relu; maxpool2d(2); flatten; fc1 = linear(392, 10)'
RES='input 1 28 28; conv1 = conv2d(1, 4, 3, 2, 1); relu; residual layer1.0 { conv1 = conv2d(4, 4, 3, padding=1, bias=False); relu; conv2 = conv2d(4, 4, 3, padding=1, bias=False) }; relu; flatten; fc = linear(784, 10)'

# NAME|MODEL|FROZEN|OPTIONS|TORCH-ONLY.  FROZEN: --freeze patterns separated
# by spaces, or "-".  OPTIONS: the same words for frost train and
# torch_reference.py; TORCH-ONLY: words for torch_reference.py alone.
# Clipping cases use a max norm below the gradients' norm (about 1-3 here),
# so most steps are clipped.
CASES="step-sgd-momentum|$MLP|-|--optimizer sgd --lr 0.05 --momentum 0.9 --lr-schedule step:7:0.5|
step-default-gamma-adam|$MLP|-|--optimizer adam --lr 0.003 --lr-schedule step:10|
cosine-adam-past-tmax|$MLP|-|--optimizer adam --lr 0.003 --lr-schedule cosine:20:0.0001|
cosine-default-warmup-sgd|$MLP|-|--optimizer sgd --lr 0.08 --momentum 0.9 --lr-schedule cosine --warmup-steps 5|
warmup-constant-sgd|$MLP|-|--optimizer sgd --lr 0.1 --warmup-steps 8|
warmup-as-linearlr|$MLP|-|--optimizer sgd --lr 0.1 --lr-schedule step:6:0.5 --warmup-steps 8|--warmup-as linear
step-warmup-adamw-cnn|$CNN|-|--optimizer adamw --lr 0.004 --weight-decay 0.05 --lr-schedule step:5:0.7 --warmup-steps 4|
groups-cnn-sgd|$CNN|-|--optimizer sgd --lr 0.05 --momentum 0.9 --lr-for conv*=0.01 --lr-for conv2.bias=0.2|
groups-cosine-eta-min|$CNN|-|--optimizer sgd --lr 0.05 --momentum 0.9 --lr-schedule cosine:30:0.002 --lr-for conv1=0.005|
groups-adam-frozen-fc1|$MLP|fc1|--optimizer adam --lr 0.003 --lr-for fc1.weight=0.3 --lr-for fc2.bias=0.01|
clip-sgd-momentum|$MLP|-|--optimizer sgd --lr 0.1 --momentum 0.9 --clip-grad-norm 0.5|
clip-adam-frozen-cnn|$CNN|conv1|--optimizer adam --lr 0.003 --clip-grad-norm 0.3|
clip-all-residual|$RES|conv1|--optimizer sgd --lr 0.05 --momentum 0.9 --nesterov --lr-schedule cosine --warmup-steps 6 --lr-for layer1.0=0.02 --clip-grad-norm 0.8|"

each_case() {
    while IFS='|' read -r name model frozen options extra; do
        "$1" "$name" "$model" "$frozen" "$options" "$extra" </dev/null
    done <<CASES_END
$CASES
CASES_END
}

q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
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
PYTHON3=$PY
diag "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) under $PY"

mkdir -p "$WORK/data" && make_idx "$WORK/data" "$SAMPLES" 7
ok $? "make_idx wrote $SAMPLES training samples"

init_job() { echo "init --model $(q "$2") --seed 42 --out $(q "$WORK/$1.init.safetensors")"; }
each_case init_job > "$WORK/init.jobs"
"$PY" "$REF" batch "$WORK/init.jobs"
ok $? "torch_reference.py wrote the initial weights"

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

train_job() {
    echo "train --model $(q "$2") --data $(q "$WORK/data")" \
         "--init $(q "$WORK/$1.init.safetensors") --steps $STEPS --batch-size $BATCH" \
         "$(freeze_words "$3") $4 $5" \
         "--losses $(q "$WORK/$1.torch.txt") --lrs $(q "$WORK/$1.lrs.txt")" \
         "--grad-norms $(q "$WORK/$1.norms.txt") --save $(q "$WORK/$1.torch.safetensors")"
}
each_case train_job > "$WORK/train.jobs"
"$PY" "$REF" batch "$WORK/train.jobs"
ok $? "torch_reference.py trained every case"

compare_case() {
    name=$1 options=$4
    w="$WORK/$name"
    if [ "$(cat "$w.frost.rc")" != 0 ]; then
        ok 1 "$name: frost train failed: $(tail -n 1 "$w.frost.log")"
        return
    fi
    out=$("$PY" "$REF" compare-losses --tol 1e-4 "$w.frost.csv" "$w.torch.txt" $STEPS 2>&1)
    ok $? "$name: per-step loss within 1e-4 of torch's, $out"
    out=$("$PY" "$REF" compare-column --tol 1e-9 "$w.frost.csv" lr "$w.lrs.txt" $STEPS 2>&1)
    ok $? "$name: per-step learning rate equals torch's scheduler's, $out"
    case $options in
    *--clip-grad-norm*)
        out=$("$PY" "$REF" compare-column --tol 1e-4 "$w.frost.csv" grad_norm "$w.norms.txt" \
              $STEPS 2>&1)
        ok $? "$name: per-step gradient norm before clipping equals clip_grad_norm_'s, $out" ;;
    esac
    out=$("$PY" "$REF" compare-weights --tol 1e-4 "$w.frost.safetensors" \
          "$w.torch.safetensors" 2>&1)
    ok $? "$name: final weights, $out"
}
each_case compare_case
done_testing
