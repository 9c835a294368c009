#!/bin/sh
# lr_schedules.sh - learning-rate schedules, per-parameter learning rates
# (--lr-for) and gradient clipping in real runs (tests/torch_lr_schedules.sh
# checks the numbers against PyTorch):
#   - layouts: 1x1, 1x2 and 1x3 (ranks x threads), and with MPI 2x1 and 2x2,
#     of a run whose rate changes every step (StepLR after a warmup, a group
#     of its own; on several ranks its updates are in flight, applied with
#     their own step's rate) and of a clipped one (cosine after a warmup,
#     --lr-for, --clip-grad-norm) agree on per-step losses and final weights
#     within 1e-5 relative, and the clipped runs on the gradient norms;
#   - --tensorboard logs each step's scheduled rate and gradient norm;
#   - resume: a checkpoint mid-warmup and one mid-cosine (and one of a
#     clipped run with a group of its own, on 2 threads and on 2 ranks)
#     continue bit-identically to the run that never stopped;
#   - a resumed run with another schedule, --lr or --lr-for is refused with
#     one line that names the difference; --allow-lr-change allows it;
#   - bad input (malformed schedules, a --lr-for pattern matching nothing,
#     negative or zero values): one `frost: ...` line on stderr, exit status 1,
#     no output file.
. "$TOP_SRCDIR/tests/common.sh"
set -f # patterns like 'fc*' travel in unquoted variables
: "${MPIRUN:=}"

solo() {
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self \
        OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx "$FROST" "$@"
}
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
mpi() { timeout -k 10 180 $MPIRUN $MPI_FLAGS -np 2 "$FROST" "$@"; }

# ------------------------------------------------------------- layouts
layout_fixture
STEPS=12 # 10 batches of 50, one of 2, then the first of epoch 2
LAYOUT_FLAGS="--batch-size 50 --steps $STEPS --seed 11 --log-every 1"

# layout OUT RANKSxTHREADS FLAGS...: one run; OUT.dir gets m.csv and w.safetensors.
layout() {
    out=$1 l=$2
    shift 2
    ranks=${l%x*} threads=${l#*x}
    mkdir -p "$out.dir"
    set -- --model "$MODEL" --data "$WORK/data" $LAYOUT_FLAGS --threads "$threads" \
        --metrics "$out.dir/m.csv" --save "$out.dir/w.safetensors" "$@"
    if [ "$ranks" -eq 1 ]; then
        solo train "$@" > "$out.out" 2> "$out.err"
    else
        timeout -k 10 180 $MPIRUN $MPI_FLAGS -np "$ranks" "$FROST" train "$@" > "$out.out" 2> "$out.err"
    fi
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$out.err"
    return $status
}

# column CSV NAME: that column's values, one per line.
column() {
    awk -F, -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        c { print $c }' "$1"
}

# same_norms A.csv B.csv: the grad_norm columns agree within 1e-5 relative.
same_norms() {
    column "$1" grad_norm > "$WORK/norms.a"
    column "$2" grad_norm > "$WORK/norms.b"
    [ "$(wc -l < "$WORK/norms.a")" -eq $STEPS ] &&
        paste -d' ' "$WORK/norms.a" "$WORK/norms.b" | awk '
            { d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad++; if (d / $1 > w) w = d / $1 }
            END { printf "worst relative difference %.2g\n", w; exit bad > 0 }'
}

# layouts NAME DESCRIPTION FLAGS...: 1x1 is the reference for the others, and
# must have trained every tensor (runs that all did nothing would agree too).
layouts() {
    name=$1 what=$2
    shift 2
    list="1x1 1x2 1x3"
    [ -n "$MPIRUN" ] && list="$list 2x1 2x2"
    runs=
    for l in $list; do
        layout "$WORK/$name.$l" "$l" "$@"
        ok $? "$what, $l: trains to the end"
        [ "$l" = 1x1 ] || runs="$runs $WORK/$name.$l.dir"
    done
    [ -n "$MPIRUN" ] || skip "$what: 2x1 and 2x2 need MPI (MPIRUN is empty)"
    "$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/$name.1x1.dir" "$WORK/init.safetensors" \
        $runs > "$WORK/$name.cmp"
    ok $? "$what: the runs' losses and weights can be compared"
    while read -r label kind status detail; do
        case $kind in
        losses) ok "$status" "$what, ${label##*.}: per-step losses equal 1x1's within 1e-5 relative ($detail)" ;;
        weights) ok "$status" "$what, ${label##*.}: final weights equal 1x1's within 1e-5 relative ($detail)" ;;
        unchanged) # nothing is frozen: 1x1 left no tensor at its initial bits
            [ -z "$detail" ]
            ok $? "$what: 1x1 trained every tensor, none keeps its initial bits (unchanged: '$detail')" ;;
        esac
    done < "$WORK/$name.cmp"
}

layouts stepped "StepLR every 2 steps after a 3-step warmup, conv1 at its own rate" \
    --lr 0.05 --momentum 0.9 --lr-schedule step:2:0.6 --warmup-steps 3 --lr-for conv1=0.01
column "$WORK/stepped.1x1.dir/m.csv" lr | tr '\n' ' ' > "$WORK/stepped.lrs"
# (k+1)/3 of 0.05 for k < 3, then StepLR from its own k = 0: 0.05 twice more.
[ "$(cat "$WORK/stepped.lrs")" = "0.0166666666667 0.0333333333333 0.05 0.05 0.05 0.03 0.03 0.018 0.018 0.0108 0.0108 0.00648 " ]
ok $? "the lr column shows the warmup then StepLR: $(cat "$WORK/stepped.lrs")"

layouts clipped "cosine after a 3-step warmup, fc* at their own rate, clipped to 0.15" \
    --lr 0.05 --momentum 0.9 --lr-schedule cosine --warmup-steps 3 --lr-for 'fc*=0.02' \
    --clip-grad-norm 0.15
for l in 1x2 1x3 2x1 2x2; do
    if [ -f "$WORK/clipped.$l.dir/m.csv" ]; then
        out=$(same_norms "$WORK/clipped.1x1.dir/m.csv" "$WORK/clipped.$l.dir/m.csv")
        ok $? "clipped, $l: the gradient norm of every step equals 1x1's within 1e-5 relative ($out)"
    elif [ -z "$MPIRUN" ] && [ "${l%x*}" = 2 ]; then
        skip "clipped, $l: needs MPI"
    else
        ok 1 "clipped, $l: no metrics"
    fi
done
column "$WORK/clipped.1x1.dir/m.csv" grad_norm | awk '$1 > 0.15 { n++ } END { exit n < 6 }'
ok $? "clipped: most steps' gradients were above the clipping norm (the clipping was exercised)"

# TensorBoard gets each logged step's scheduled rate and gradient norm.
layout "$WORK/tb" 1x1 --lr 0.05 --lr-schedule step:3:0.5 --warmup-steps 2 --clip-grad-norm 0.15 \
    --tensorboard "$WORK/tb.events"
events=$WORK/tb.events/$(ls "$WORK/tb.events" | grep tfevents) # set -f: no glob
out=$("$PYTHON3" "$TOP_SRCDIR/tests/tfevents.py" check "$events" \
    "$WORK/tb.dir/m.csv" 0.05 1 \
    --eval $(sed -n 's/^test: loss \([0-9.]*\) accuracy \([0-9.]*\)% .*/\1 \2/p' "$WORK/tb.out") 2>&1)
ok $? "--tensorboard: train/learning_rate is each step's scheduled rate and train/grad_norm its norm, as in the metrics ($out)"

# ------------------------------------------------------------- resume
D="$WORK/mlp"
mkdir -p "$D"
make_idx "$D" 400 5 # 13 batches of 32 per epoch: the resumes land mid-epoch
MLP='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
COMMON="--batch-size 32 --seed 3 --log-every 1000"

# split_equal LABEL LAUNCHER ARGS...: 40 steps in one run, and 20 steps with
# --checkpoint then --resume to 40, must write identical --save files.
split_equal() {
    label=$1 launch=$2
    shift 2
    $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 40 --save "$WORK/$label-full.st" \
        > "$WORK/$label-full.log" 2>&1 &&
        $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 20 --checkpoint "$WORK/$label-ck.st" \
            > "$WORK/$label-half.log" 2>&1 &&
        $launch train --model "$MLP" --data "$D" $COMMON "$@" --steps 40 --resume "$WORK/$label-ck.st" \
            --save "$WORK/$label-resumed.st" > "$WORK/$label-resumed.log" 2>&1 &&
        grep -q "^resumed from .*$label-ck.st at step 20" "$WORK/$label-resumed.log" &&
        cmp "$WORK/$label-full.st" "$WORK/$label-resumed.st" > "$WORK/cmp.out" 2>&1
    status=$?
    [ $status -eq 0 ] || tail -n 3 "$WORK/cmp.out" "$WORK/$label"-*.log | sed 's/^/# /'
    return $status
}

split_equal warmup solo --lr 0.05 --momentum 0.9 --warmup-steps 30 --lr-schedule cosine:10 --threads 1
ok $? "checkpoint at step 20 of a 30-step warmup: 20 + 20 resumed steps == 40 steps, bit for bit"
split_equal cosine solo --optimizer adam --lr 0.003 --warmup-steps 5 --lr-schedule cosine:35:0.0001 --threads 1
ok $? "checkpoint mid-cosine (Adam): the resumed run is bit-identical"
split_equal clipped solo --lr 0.05 --momentum 0.9 --lr-schedule step:7:0.5 --lr-for 'fc1*=0.01' \
    --clip-grad-norm 0.5 --threads 2
ok $? "StepLR, fc1 at its own rate, clipped, 2 threads: the resumed run is bit-identical"
if [ -n "$MPIRUN" ]; then
    split_equal mpi-inflight mpi --lr 0.05 --momentum 0.9 --warmup-steps 30 --lr-schedule cosine:10
    ok $? "2 MPI ranks, checkpoint mid-warmup (updates in flight): the resumed run is bit-identical"
    split_equal mpi-clipped mpi --lr 0.05 --momentum 0.9 --warmup-steps 5 --lr-schedule cosine:35 \
        --lr-for fc2=0.02 --clip-grad-norm 0.5
    ok $? "2 MPI ranks, mid-cosine, clipped, fc2 at its own rate: the resumed run is bit-identical"
else
    skip "2 MPI ranks mid-warmup: no mpirun"
    skip "2 MPI ranks clipped: no mpirun"
fi

# refused LABEL FRAGMENT ARGS...: resuming the mid-cosine checkpoint with ARGS
# fails with one line holding FRAGMENT and the flag that allows it.
CK="$WORK/cosine-ck.st"
BASE="--optimizer adam --lr 0.003 --warmup-steps 5 --lr-schedule cosine:35:0.0001"
refused() {
    label=$1 fragment=$2
    shift 2
    solo train --model "$MLP" --data "$D" $COMMON --threads 1 --steps 40 --resume "$CK" "$@" \
        > "$WORK/$label.out" 2> "$WORK/$label.err"
    status=$?
    msg=$(cat "$WORK/$label.err")
    [ $status -eq 1 ] && [ "$(wc -l < "$WORK/$label.err")" -eq 1 ] &&
        grep -q "^frost: .*$fragment.*; --allow-lr-change allows it$" "$WORK/$label.err"
    ok $? "resumed with $label: refused ($msg)"
}
refused "another T_max" "CosineAnnealingLR(T_max=35, eta_min=0.0001), this run has warmup 5 steps, then CosineAnnealingLR(T_max=30" \
    --optimizer adam --lr 0.003 --warmup-steps 5 --lr-schedule cosine:30:0.0001
refused "no warmup" "learning-rate schedule" --optimizer adam --lr 0.003 --lr-schedule cosine:35:0.0001
refused "another --lr" "learning rate 0.003, this run has 0.002" \
    --optimizer adam --lr 0.002 --warmup-steps 5 --lr-schedule cosine:35:0.0001
refused "an --lr-for rule" "the checkpoint has learning rate 0.003 for 'fc1.weight', this run 0.001" \
    $BASE --lr-for fc1=0.001
solo train --model "$MLP" --data "$D" $COMMON --threads 1 --steps 40 --resume "$CK" \
    --optimizer adam --lr 0.003 --lr-schedule step:5 --allow-lr-change > "$WORK/allowed.out" 2>&1
ok $? "--allow-lr-change resumes the checkpoint with another schedule"
# A cosine schedule's default T_max is the run's steps after the warmup: a
# run continued with a larger --steps anneals differently, and is told so.
solo train --model "$MLP" --data "$D" $COMMON --threads 1 --steps 20 --lr-schedule cosine \
    --checkpoint "$WORK/default-ck.st" > "$WORK/default.out" 2>&1 &&
    ! solo train --model "$MLP" --data "$D" $COMMON --threads 1 --steps 40 --lr-schedule cosine \
        --resume "$WORK/default-ck.st" > "$WORK/default-resumed.out" 2>&1 &&
    grep -q "T_max=20.*T_max=40" "$WORK/default-resumed.out"
ok $? "cosine without T_MAX anneals over --steps: continuing with more steps is refused ($(tail -n 1 "$WORK/default-resumed.out"))"

# ---------------------------------------------------------- bad input
# bad FRAGMENT ARGS...: one line on stderr holding FRAGMENT, exit status 1,
# nothing written.
bad() {
    fragment=$1
    shift
    rm -rf "$WORK/bad" && mkdir "$WORK/bad"
    solo train --model "$MLP" --data "$D" $COMMON --threads 1 --steps 10 \
        --save "$WORK/bad/w.st" --metrics "$WORK/bad/m.csv" --checkpoint "$WORK/bad/c.st" "$@" \
        > "$WORK/bad.out" 2> "$WORK/bad.err"
    status=$?
    msg=$(cat "$WORK/bad.err")
    [ $status -eq 1 ] && [ "$(wc -l < "$WORK/bad.err")" -eq 1 ] &&
        grep -qF -- "$fragment" "$WORK/bad.err" && grep -q '^frost: ' "$WORK/bad.err" &&
        [ -z "$(ls -A "$WORK/bad")" ]
    ok $? "$* is refused, nothing written: $msg"
}
bad "--lr-schedule: schedule 'linear': expected constant, step:STEP_SIZE[:GAMMA] or cosine[:T_MAX[:ETA_MIN]]" --lr-schedule linear
bad "step needs a step size" --lr-schedule step
bad "step size '0' must be a whole number >= 1" --lr-schedule step:0
bad "step size '-3' must be a whole number >= 1" --lr-schedule step:-3:0.5
bad "step size '2.5' must be a whole number >= 1" --lr-schedule step:2.5
bad "gamma '0' must be a number > 0" --lr-schedule step:10:0
bad "gamma '-0.5' must be a number > 0" --lr-schedule step:10:-0.5
bad "T_max '0' must be a whole number >= 1" --lr-schedule cosine:0
bad "eta_min '-1' must be a number >= 0" --lr-schedule cosine:10:-1
bad "too many values" --lr-schedule cosine:10:0:1
bad "constant takes no values" --lr-schedule constant:5
bad "an empty field" --lr-schedule step::0.5
bad "--warmup-steps -1: must be between 0 and" --warmup-steps -1
bad "no steps after the 10 warmup steps" --lr-schedule cosine --warmup-steps 10
bad "--clip-grad-norm '0': must be a number > 0" --clip-grad-norm 0
bad "--clip-grad-norm '-1': must be a number > 0" --clip-grad-norm -1
bad "--clip-grad-norm 'nan': must be a number > 0" --clip-grad-norm nan
bad "--lr-for 'layer4*=0.1': pattern 'layer4*' matches no parameter" --lr-for 'layer4*=0.1'
bad "--lr-for 'conv9=0.1': pattern 'conv9' matches no parameter" --lr-for fc1=0.1 --lr-for conv9=0.1
bad "--lr-for 'fc1': expected PATTERN=LR" --lr-for fc1
bad "--lr-for '=0.1': expected PATTERN=LR" --lr-for =0.1
bad "the learning rate '-0.1' must be a number between 0 and 1e6" --lr-for fc1=-0.1
bad "the learning rate 'abc' must be a number between 0 and 1e6" --lr-for fc1=abc
done_testing
