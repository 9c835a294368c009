#!/bin/sh
# threads.sh - in-process data parallelism: for the same global batch and seed,
# --threads 1, 2 and 3 compute the same update (DESIGN.md: "N ranks x T threads
# at global batch B compute the same update as one process at batch B, up to
# float summation order").  Per-step losses (--metrics) and final weights
# (--save) agree within 1e-5 relative, with and without frozen layers, and
# frozen tensors stay bit-identical.
#
# The global batch (50) is not divisible by 3 and the dataset (502 samples)
# ends an epoch with a batch of 2, so thread slices are uneven and, with 3
# threads, one thread gets no rows at all in that step.
. "$TOP_SRCDIR/tests/common.sh"
set -f # freeze patterns like '*.bias' travel in unquoted variables

# tests/compare_runs.py REF INIT RUN... checks losses and weights of each run
# against REF (see its docstring for the tolerances).
layout_fixture
STEPS=12 # 10 batches of 50, one of 2, then the first of epoch 2
TRAIN_FLAGS="--batch-size 50 --steps $STEPS --seed 11 --log-every 1"

# train OUT THREADS FLAGS...: one run; OUT.dir gets m.csv and w.safetensors.
train() {
    out=$1 threads=$2
    shift 2
    mkdir -p "$out.dir"
    "$FROST" train --model "$MODEL" --data "$WORK/data" $TRAIN_FLAGS --threads "$threads" \
        --metrics "$out.dir/m.csv" --save "$out.dir/w.safetensors" "$@" > "$out.out" 2> "$out.err"
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$out.err"
    return $status
}

# variant NAME DESCRIPTION "EXPECTED UNCHANGED TENSORS" FLAGS...: threads 1,
# 2 and 3 agree on losses and weights, and exactly the expected tensors stay
# bit-identical to the initial weights.
variant() {
    name=$1 what=$2 frozen=$3
    shift 3
    for t in 1 2 3; do
        train "$WORK/$name.t$t" $t "$@"
        ok $? "$what: training with --threads $t succeeds"
    done
    grep -q "^frost [^ ]*: 1 rank x 3 threads, global batch 50," "$WORK/$name.t3.out"
    ok $? "$what: with --threads 3 the header reports 1 rank x 3 threads, global batch 50"
    "$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/$name.t1.dir" "$WORK/init.safetensors" \
        "$WORK/$name.t2.dir" "$WORK/$name.t3.dir" > "$WORK/$name.cmp"
    ok $? "$what: the runs' losses and weights can be compared"
    while read -r label kind status detail; do
        case $kind in
        losses) ok "$status" "$what: per-step losses with --threads ${label##*.t} equal --threads 1's within 1e-5 relative ($detail)" ;;
        weights) ok "$status" "$what: final weights with --threads ${label##*.t} equal --threads 1's within 1e-5 relative, frozen ones bit-identical ($detail)" ;;
        unchanged)
            [ "$detail" = "$frozen" ]
            ok $? "$what: exactly the frozen tensors are bit-identical to the initial weights (expected '$frozen', got '$detail')" ;;
        esac
    done < "$WORK/$name.cmp"
}

variant sgd "SGD momentum 0.9, nothing frozen" "" --lr 0.02 --momentum 0.9
variant prefix "SGD momentum, --freeze conv1 (frozen prefix)" "conv1.bias conv1.weight" \
    --lr 0.02 --momentum 0.9 --freeze conv1
variant middle "SGD nesterov + weight decay, --freeze fc1 (frozen middle layer)" \
    "fc1.bias fc1.weight" --lr 0.02 --momentum 0.9 --nesterov --weight-decay 0.001 --freeze fc1
variant adam "Adam, --freeze 'conv*' --freeze '*.bias'" \
    "conv1.bias conv1.weight conv2.bias conv2.weight fc1.bias fc2.bias" \
    --optimizer adam --lr 0.002 --freeze conv* --freeze *.bias

# --threads defaults to OMP_NUM_THREADS.
mkdir -p "$WORK/omp.dir"
OMP_NUM_THREADS=3 "$FROST" train --model "$MODEL" --data "$WORK/data" $TRAIN_FLAGS \
    --lr 0.02 --momentum 0.9 --metrics "$WORK/omp.dir/m.csv" \
    --save "$WORK/omp.dir/w.safetensors" > "$WORK/omp.out" 2>&1 &&
    grep -q "^frost [^ ]*: 1 rank x 3 threads," "$WORK/omp.out"
ok $? "without --threads, OMP_NUM_THREADS=3 runs 3 threads"
"$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/sgd.t1.dir" "$WORK/init.safetensors" "$WORK/omp.dir" \
    > "$WORK/omp.cmp"
[ "$(grep -c '^omp [a-z]* 0 ' "$WORK/omp.cmp")" -eq 2 ]
ok $? "OMP_NUM_THREADS=3 gives --threads 1's losses and weights within 1e-5 relative ($(grep '^omp' "$WORK/omp.cmp" | cut -d' ' -f4- | tr '\n' ' '))"

done_testing
