#!/bin/sh
# mpi_layouts.sh - MPI ranks x OpenMP threads compute the same update as one
# process (DESIGN.md), and the gradient allreduce carries the trainable
# parameters only.
#
# Layouts 1x1, 1x2, 1x3, 2x1, 2x2 and 4x1 (ranks x threads) of the same global
# batch and seed give the same per-step losses and final weights within 1e-5
# relative; frozen tensors stay bit-identical.  On 2 and 4 ranks every step
# sends 4 x (trainable parameters) bytes into the allreduce (the metrics
# column allreduce_bytes and the final summary), for several frozen sets, so
# the ratio frozen/full is the trainable fraction; on 1 rank nothing is sent.
# The runs succeed, which means frost's cross-rank weight checksum (taken at
# every logged step, here every step) found the replicas identical.  Only
# rank 0 prints and writes files.
#
# The global batch (50) is divisible by neither 3 nor 4 and the dataset (502
# samples) ends an epoch with a batch of 2, so in that step two of 4 ranks
# have no rows, and with 2x2 one thread has none.  The same holds with
# batchnorm2d layers (statistics over the global batch) at the end.
. "$TOP_SRCDIR/tests/common.sh"
set -f # freeze patterns like 'conv*' travel in unquoted variables

if [ -z "${MPIRUN:-}" ]; then
    echo "1..0 # SKIP frost was built without MPI (MPIRUN is empty)"
    exit 0
fi

# The checks are counted up front: the per-run lines come from reading
# compare_runs.py's output, a loop that would pass silently if it read nothing.
plan 166
# tests/compare_runs.py REF INIT RUN... checks losses and weights of each run
# against REF (see its docstring for the tolerances).
layout_fixture
STEPS=12 # 10 batches of 50, one of 2, then the first of epoch 2
TRAIN_FLAGS="--batch-size 50 --steps $STEPS --seed 11 --lr 0.02 --momentum 0.9 --log-every 1"
# 4 ranks, or 2 ranks x 2 threads, share 2 cores: waiting threads should sleep.
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"

# mpi_train OUT RANKS THREADS FLAGS...: one mpirun; OUT.dir gets m.csv and w.safetensors.
mpi_train() {
    out=$1 ranks=$2 threads=$3
    shift 3
    mkdir -p "$out.dir"
    began=$(date +%s)
    timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -np "$ranks" \
        "$FROST" train --model "$MODEL" --data "$WORK/data" $TRAIN_FLAGS --threads "$threads" \
        --metrics "$out.dir/m.csv" --save "$out.dir/w.safetensors" "$@" \
        > "$out.out" 2> "$out.err"
    status=$?
    diag "$(basename "$out"): mpirun took $(($(date +%s) - began)) s"
    [ $status -eq 0 ] || sed 's/^/#   /' "$out.err"
    return $status
}

# metrics_column CSV NAME: the distinct values of a column, space-separated.
metrics_column() {
    awk -F, -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        c { print $c }' "$1" 2> /dev/null | sort -u | tr '\n' ' ' | sed 's/ $//'
}

# frozen_set NAME DESCRIPTION "LAYOUTS" "EXPECTED UNCHANGED TENSORS" FREEZE-FLAGS...:
# run each RANKSxTHREADS layout and compare it with the first one.
full_bytes=
full_total=
frozen_set() {
    name=$1 what=$2 layouts=$3 frozen=$4
    shift 4
    "$FROST" inspect --model "$MODEL" "$@" > "$WORK/$name.inspect" 2>&1
    ok $? "$what: frost inspect accepts the frozen set"
    total=$(sed -n 's/^total parameters: \([0-9]*\)$/\1/p' "$WORK/$name.inspect")
    trainable=$(sed -n 's/^trainable parameters: \([0-9]*\) .*/\1/p' "$WORK/$name.inspect")
    planned=$(sed -n 's/^allreduce bytes per step: \([0-9]*\)$/\1/p' "$WORK/$name.inspect")
    expected=$((4 * ${trainable:-0}))
    [ -n "$trainable" ] && [ "$planned" = "$expected" ]
    ok $? "$what: inspect plans 4 x trainable ($trainable of $total) = $expected allreduce bytes per step (says '$planned')"

    ref=${layouts%% *} runs=
    for l in $layouts; do
        ranks=${l%x*} threads=${l#*x}
        out=$WORK/$name.$l
        [ "$l" = "$ref" ] || runs="$runs $out.dir"
        mpi_train "$out" "$ranks" "$threads" "$@"
        ok $? "$what, ${l}: $ranks rank(s) x $threads thread(s) train to the end (replica weights are checked equal at every step)"
        grep -q "^frost [^ ]*: $ranks ranks\{0,1\} x $threads threads\{0,1\}, global batch 50," "$out.out"
        ok $? "$what, ${l}: the header reports $ranks rank(s) x $threads thread(s), global batch 50"
        column=$(metrics_column "$out.dir/m.csv" allreduce_bytes)
        summary=$(sed -n 's/^allreduce: \([0-9]*\) bytes per step, \([0-9]*\) bytes in all;.*/\1 \2/p' "$out.out")
        if [ "$ranks" -eq 1 ]; then
            [ "$column" = 0 ] && [ "$summary" = "$expected 0" ]
            ok $? "$what, ${l}: one rank sends nothing (metrics allreduce_bytes: '$column'; summary per step and in all: '$summary')"
        else
            [ "$column" = "$expected" ] && [ "$summary" = "$expected $((STEPS * expected))" ]
            ok $? "$what, ${l}: every step sends 4 x trainable = $expected bytes (metrics allreduce_bytes: '$column'; summary per step and in all: '$summary')"
            [ "$(grep -c '^done: ' "$out.out")" -eq 1 ] &&
                [ "$(grep -c '^frost [^ ]*: [0-9]* rank' "$out.out")" -eq 1 ] &&
                [ "$(grep -c '^saved ' "$out.out")" -eq 1 ]
            ok $? "$what, ${l}: only rank 0 prints (one header, one 'done:' line, one 'saved' line)"
            leftovers=$(ls -A "$out.dir" | grep -v -x -e m.csv -e w.safetensors | tr '\n' ' ')
            [ -z "$leftovers" ]
            ok $? "$what, ${l}: the output directory holds m.csv and w.safetensors and nothing else (others: '$leftovers')"
        fi
    done

    "$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/$name.$ref.dir" "$WORK/init.safetensors" $runs \
        > "$WORK/$name.cmp"
    ok $? "$what: the runs' losses and weights can be compared"
    while read -r label kind status detail; do
        case $kind in
        losses) ok "$status" "$what, ${label#*.}: per-step losses equal ${ref}'s within 1e-5 relative ($detail)" ;;
        weights) ok "$status" "$what, ${label#*.}: final weights equal ${ref}'s within 1e-5 relative, frozen ones bit-identical ($detail)" ;;
        unchanged)
            [ "$detail" = "$frozen" ]
            ok $? "$what: exactly the frozen tensors are bit-identical to the initial weights, the rest trained (expected '$frozen', got '$detail')" ;;
        esac
    done < "$WORK/$name.cmp"

    # The ratio frozen/full of the bytes measured on 2 ranks is the trainable fraction.
    measured=$(sed -n 's/^allreduce: \([0-9]*\) bytes per step.*/\1/p' "$WORK/$name.2x1.out")
    if [ -z "$full_bytes" ]; then
        full_bytes=$measured full_total=$total
    else
        [ -n "$measured" ] && [ -n "$full_bytes" ] &&
            [ $((measured * full_total)) -eq $((full_bytes * trainable)) ]
        ok $? "$what: allreduce bytes on 2 ranks, frozen/full = $measured/$full_bytes, equal the trainable fraction $trainable/$full_total"
    fi
}

# Every layout for two frozen sets (the first must be "none": the others'
# byte ratios are taken against it); for two more, 2 and 4 ranks (2x1 first).
# Threads alone, with frozen prefixes, are covered by threads.sh.
ALL="1x1 1x2 1x3 2x1 2x2 4x1"
SOME="2x1 2x2 4x1"
frozen_set none "nothing frozen" "$ALL" ""
frozen_set fc1 "--freeze fc1 (frozen middle layer)" "$ALL" "fc1.bias fc1.weight" --freeze fc1
frozen_set conv "--freeze 'conv*' (frozen prefix)" "$SOME" \
    "conv1.bias conv1.weight conv2.bias conv2.weight" --freeze conv*
frozen_set head "--freeze '*' --unfreeze fc2 (all but the last layer)" "$SOME" \
    "conv1.bias conv1.weight conv2.bias conv2.weight fc1.bias fc1.weight" --freeze * --unfreeze fc2

# Ranks may run different thread counts (MPMD): the update does not change.
out=$WORK/mixed
mkdir -p "$out.dir"
timeout -k 10 120 "$MPIRUN" $MPI_FLAGS \
    -np 1 "$FROST" train --model "$MODEL" --data "$WORK/data" $TRAIN_FLAGS \
    --threads 1 --metrics "$out.dir/m.csv" --save "$out.dir/w.safetensors" : \
    -np 1 "$FROST" train --model "$MODEL" --data "$WORK/data" $TRAIN_FLAGS \
    --threads 3 --metrics "$out.dir/m.csv" --save "$out.dir/w.safetensors" \
    > "$out.out" 2> "$out.err"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$out.err"
ok $status "2 ranks running 1 and 3 threads (MPMD): training succeeds"
"$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/none.1x1.dir" "$WORK/init.safetensors" "$out.dir" \
    > "$WORK/mixed.cmp"
[ "$(grep -c '^mixed [a-z]* 0 ' "$WORK/mixed.cmp")" -eq 2 ]
ok $? "2 ranks running 1 and 3 threads: losses and weights equal 1x1's within 1e-5 relative ($(grep '^mixed' "$WORK/mixed.cmp" | cut -d' ' -f4- | tr '\n' ' '))"

# Residual blocks (identity and downsampling shortcuts): 2 ranks, and 2 x 2,
# train as 1 rank x 2 threads, with everything trained and with a frozen
# prefix that runs through the first block.
MODEL=$WORK/residual.txt
cat > "$MODEL" <<'MODEL_END'
input 1 28 28
conv1 = conv2d(1, 4, 3, stride=2, padding=1)
relu
residual layer1.0 {
    conv1 = conv2d(4, 4, 3, padding=1, bias=False)
    relu
    conv2 = conv2d(4, 4, 3, padding=1, bias=False)
}
relu
residual layer2.0 {
    conv1 = conv2d(4, 8, 3, stride=2, padding=1, bias=False)
    relu
    conv2 = conv2d(8, 8, 3, padding=1, bias=False)
    shortcut {
        downsample.0 = conv2d(4, 8, 1, stride=2, bias=False)
    }
}
relu
flatten
fc = linear(392, 10)
MODEL_END
"$FROST" train --model "$MODEL" --data "$WORK/data" --steps 1 --lr 0 --seed 11 \
    --save "$WORK/residual.init.safetensors" > "$WORK/residual.init.out" 2>&1
ok $? "the residual model trains; a run with --lr 0 writes its seeded initial weights"
residual_set() {
    name=$1 what=$2 frozen=$3
    shift 3
    init=${INIT:-$WORK/residual.init.safetensors}
    for l in 1x2 2x1 2x2; do
        mpi_train "$WORK/$name.$l" "${l%x*}" "${l#*x}" "$@"
        ok $? "$what, ${l}: ${l%x*} rank(s) x ${l#*x} thread(s) train to the end"
    done
    "$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/$name.1x2.dir" \
        "$init" "$WORK/$name.2x1.dir" "$WORK/$name.2x2.dir" \
        > "$WORK/$name.cmp"
    ok $? "$what: the runs' losses and weights can be compared"
    while read -r label kind status detail; do
        case $kind in
        losses | weights) ok "$status" "$what, ${label#*.}: $kind equal 1x2's within 1e-5 relative ($detail)" ;;
        unchanged)
            [ "$detail" = "$frozen" ]
            ok $? "$what: exactly the frozen tensors keep their initial bits (expected '$frozen', got '$detail')" ;;
        esac
    done < "$WORK/$name.cmp"
}
residual_set residual "residual blocks" ""
residual_set residual_frozen "residual blocks, --freeze conv1 --freeze layer1.0" \
    "conv1.bias conv1.weight layer1.0.conv1.weight layer1.0.conv2.weight" \
    --freeze conv1 --freeze layer1.0

# BatchNorm with statistics over the global batch (SyncBatchNorm): each
# layer's per-channel sums meet across the threads and then the ranks inside
# the step, so 2 ranks and 2 x 2 train as 1 rank x 2 threads, running
# statistics and num_batches_tracked included.  A frozen BatchNorm runs in
# eval mode: its buffers keep their initial bits on every layout.
MODEL=$WORK/batchnorm.txt
cat > "$MODEL" <<'MODEL_END'
input 1 28 28
conv1 = conv2d(1, 4, 3, stride=2, padding=1, bias=False)
bn1 = batchnorm2d(4)
relu
residual layer1.0 {
    conv1 = conv2d(4, 4, 3, padding=1, bias=False)
    bn1 = batchnorm2d(4, momentum=0.2)
}
relu
maxpool2d(2)
flatten
fc = linear(196, 10)
MODEL_END
# All frozen, the one step moves no buffer either: the file holds the seeded
# initial state the runs below start from.
"$FROST" train --model "$MODEL" --data "$WORK/data" --steps 1 --lr 0 --seed 11 --freeze '*' \
    --save "$WORK/batchnorm.init.safetensors" > "$WORK/batchnorm.init.out" 2>&1
ok $? "the batchnorm model trains; an all-frozen run writes its seeded initial weights and buffers"
INIT=$WORK/batchnorm.init.safetensors
residual_set batchnorm "batchnorm2d" ""
residual_set batchnorm_frozen "batchnorm2d, --freeze conv1 --freeze bn1" \
    "bn1.bias bn1.num_batches_tracked bn1.running_mean bn1.running_var bn1.weight conv1.weight" \
    --freeze conv1 --freeze bn1

done_testing
