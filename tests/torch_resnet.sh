#!/bin/sh
# torch_resnet.sh - from PyTorch and back with torchvision's resnet18:
# examples/resnet18.txt names every parameter and buffer as torchvision does;
# with a 1-channel conv1 and 10 classes (input 1x32x32), frost and PyTorch
# train the same initial weights (a torchvision state_dict converted by
# examples/torch_state.py) for 5 steps of SGD with momentum on the same
# batches of 8, on 1 and on 2 threads, and agree on every step's loss (within
# 1e-4) and on the BatchNorm buffers (within 1e-4 of each tensor's largest
# value; num_batches_tracked exactly); the weights PyTorch trained, converted
# back, give `frost eval` PyTorch's eval-mode loss and accuracy; and frost's
# weights load into torchvision's model with strict=True.
#
# Needs a python3 with torch and torchvision (Debian's python3-torch and
# python3-torchvision belong to /usr/bin/python3, tried first, then
# $PYTHON3); without them every check is reported as skipped.
# tests/torch_resnet.py is the PyTorch side.
. "$TOP_SRCDIR/tests/common.sh"
plan 19
REF="$TOP_SRCDIR/tests/torch_resnet.py"
STATE="$TOP_SRCDIR/examples/torch_state.py"
STEPS=5
BATCH=8
# At this rate the 5 steps stay where float rounding is not amplified: with
# lr 0.01, or 0.001, the two runs drift apart by 1e-4 in the loss by step 5
# (after agreeing to 1e-6 on the first two steps): the last BatchNorms
# normalize 8 values (1x1 spatial), which makes the net sensitive to rounding.
LR=0.003
MOMENTUM=0.9

PY=
for candidate in /usr/bin/python3 "$PYTHON3"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import torch, torchvision' >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    i=0
    while [ $i -lt 19 ]; do skip "torch or torchvision not installed"; i=$((i + 1)); done
    done_testing
fi
diag "PyTorch $("$PY" -c 'import torch, torchvision; print(torch.__version__, "torchvision", torchvision.__version__)' 2>&1) under $PY"

# inspect_names MODEL: `name [shape]` for every parameter and buffer, sorted.
inspect_names() {
    "$FROST" inspect --model "$1" | sed -n 's/^\([^ ]*\) \(\[.*\]\) [0-9]* [a-z]*$/\1 \2/p' | LC_ALL=C sort
}

"$PY" "$REF" setup "$WORK"
ok $? "torch_resnet.py wrote the data, the initial state_dict and its names"

inspect_names "$TOP_SRCDIR/examples/resnet18.txt" > "$WORK/frost18.txt"
LC_ALL=C sort "$WORK/names18.txt" | cmp -s - "$WORK/frost18.txt"
ok $? "examples/resnet18.txt has torchvision resnet18's $(wc -l < "$WORK/names18.txt") state_dict names and shapes"
"$FROST" inspect --model "$TOP_SRCDIR/examples/resnet18.txt" | grep -qx 'total parameters: 11689512'
ok $? "examples/resnet18.txt has 11,689,512 parameters, as torchvision's resnet18"

# The test's model: examples/resnet18.txt with a 1-channel conv1 and 10 classes.
sed -e 's/^input 3 224 224$/input 1 32 32/' -e 's/conv2d(3, 64, 7,/conv2d(1, 64, 7,/' \
    -e 's/linear(512, 1000)/linear(512, 10)/' "$TOP_SRCDIR/examples/resnet18.txt" > "$WORK/model.txt"
inspect_names "$WORK/model.txt" > "$WORK/frost_names.txt"
LC_ALL=C sort "$WORK/names.txt" | cmp -s - "$WORK/frost_names.txt"
ok $? "the 1-channel, 10-class variant has the torch model's names and shapes"

out=$("$PY" "$STATE" to-safetensors "$WORK/init.pt" "$WORK/init.safetensors" 2>&1)
ok $? "torch_state.py to-safetensors converts the initial state_dict: $out"

# frost_train NAME THREADS: 5 steps from the converted weights, batches in order.
frost_train() {
    "$FROST" train --model "$WORK/model.txt" --data "$WORK/data" --init "$WORK/init.safetensors" \
        --no-shuffle --steps $STEPS --batch-size $BATCH --threads "$2" --log-every 1 \
        --optimizer sgd --lr $LR --momentum $MOMENTUM \
        --metrics "$WORK/$1.csv" --save "$WORK/$1.safetensors" > "$WORK/$1.log" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$1.log"
    ok $status "frost trains the resnet from the PyTorch weights on $2 thread(s)"
}
frost_train frost1 1
frost_train frost2 2

"$PY" "$REF" train "$WORK" $STEPS $BATCH $LR $MOMENTUM
ok $? "PyTorch trains the same $STEPS steps and evaluates"
out=$("$PY" "$STATE" to-safetensors "$WORK/torch.pt" "$WORK/torch.safetensors" 2>&1)
ok $? "torch_state.py to-safetensors converts the trained state_dict: $out"

# compare NAME THREADS: losses, BatchNorm buffers, all parameters.
compare() {
    out=$("$PY" "$REF" compare-losses "$WORK/$1.csv" "$WORK/torch.losses" 1e-4 2>&1)
    ok $? "$2 thread(s): per-step loss within 1e-4, $out"
    out=$("$PY" "$REF" compare-state "$WORK/$1.safetensors" "$WORK/torch.safetensors" 1e-4 \
        '*.running_mean,*.running_var' 2>&1) &&
        out2=$("$PY" "$REF" compare-state "$WORK/$1.safetensors" "$WORK/torch.safetensors" 0 \
            '*.num_batches_tracked' 2>&1)
    ok $? "$2 thread(s): running_mean and running_var within 1e-4 relative ($out), num_batches_tracked equal (${out2:-})"
    # Parameters as tests/torch_compare.sh compares them: relative to
    # max(1, the tensor's largest value) (BatchNorm's biases start at 0).
    out=$("$PY" "$REF" compare-state "$WORK/$1.safetensors" "$WORK/torch.safetensors" 1e-4 \
        '*.weight,*.bias' 1 2>&1)
    ok $? "$2 thread(s): parameters within 1e-4 of max(1, |largest|), $out"
}
compare frost1 1
compare frost2 2

"$FROST" eval --model "$WORK/model.txt" --data "$WORK/data" --init "$WORK/torch.safetensors" \
    > "$WORK/eval.log" 2>&1
ok $? "frost eval reads the weights PyTorch trained"
# frost prints the loss to 4 decimals and the accuracy to 2.
frost_eval=$(sed -n 's/^test: loss \([0-9.]*\) accuracy \([0-9.]*\)%.*/\1 \2/p' "$WORK/eval.log")
torch_eval=$(awk '{ printf "%.4f %.2f", $2, $4 }' "$WORK/torch.eval")
awk -v f="$frost_eval" -v t="$torch_eval" 'BEGIN {
    split(f, a, " "); split(t, b, " ")
    d = a[1] - b[1]; if (d < 0) d = -d
    exit !(f != "" && d <= 0.00011 && a[2] == b[2]) }'
ok $? "frost eval gives PyTorch's eval-mode loss and accuracy (frost: ${frost_eval:-none}, torch: $torch_eval)"

out=$("$PY" "$STATE" to-torch "$WORK/frost1.safetensors" "$WORK/frost1.pt" 2>&1)
ok $? "torch_state.py to-torch converts frost's weights: $out"
out=$("$PY" "$REF" load "$WORK/frost1.pt" 2>&1)
ok $? "frost's weights load into torchvision's resnet18: $out"
done_testing
