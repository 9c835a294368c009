#!/bin/sh
# schedule.sh - gradual unfreezing (--unfreeze-at, --freeze-at) and
# evaluation during training (--eval-every, --val-split, --save-best).
#
#   - phases: at each point the run checks the parameters frozen during the
#     phase that ends (one line per phase), changes the frozen set and
#     re-plans; the feature cache follows the new, shorter frozen prefix;
#   - layouts: 1x1, 1x2 and 2x1 (ranks x threads) give the same per-step
#     losses and weights within float rounding across the points; on 2 ranks
#     the metrics' allreduce_bytes is 4 x the trainable count of each phase,
#     exactly; ranks given different schedules refuse to start;
#   - resume: checkpoints taken one step before, at and one step after a
#     point (FROST_STOP_AFTER_STEP stops a run as a signal would) resume to
#     the uninterrupted run's weights bit for bit, on 1 process and on 2
#     ranks; a checkpoint whose frozen set is not the schedule's at its step
#     is refused;
#   - evaluation: rows at every --eval-every step (and the last) carry
#     eval_loss and eval_accuracy, other rows leave them empty; --save-best
#     holds the weights of the best row (frost eval gives its accuracy);
#     evaluating does not change training; --val-split evaluates on the
#     training set's held-out tail; the best survives a resume;
#   - bad input: one `frost: ...` line, exit status 1, nothing on stdout, no
#     file written.
. "$TOP_SRCDIR/tests/common.sh"
set -f # patterns like 'conv*' travel in unquoted variables
: "${MPIRUN:=}"
plan 55

# One process needs no Open MPI runtime daemon or network transport.
solo() {
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self \
        OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx "$FROST" "$@"
}
mpi() {
    timeout -k 10 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np 2 \
        -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE -x FROST_STOP_AFTER_STEP "$FROST" "$@"
}
FROST_STOP_AFTER_STEP=
export FROST_STOP_AFTER_STEP
show() { sed 's/^/#   /' "$@"; }

D="$WORK/data"
mkdir -p "$D"
make_idx "$D" 400 5 # 13 batches of 32 per epoch (the last one 16)
MODEL=$TOP_SRCDIR/tests/layout_model.txt
# Only fc2 trains in epoch 1; fc1 from epoch 2 (after step 13), conv2 from
# step 31 (after step 30); conv1 stays frozen.
HEAD="--freeze * --unfreeze fc2"
SCHEDULE="--unfreeze-at 2:fc1 --unfreeze-at s30:conv2"
TRAIN="--model $MODEL --data $D --batch-size 32 --epochs 3 --seed 3 --lr 0.05 --momentum 0.9 $HEAD"

# trainable FLAGS...: the trainable count frost inspect gives for a frozen set.
trainable() {
    "$FROST" inspect --model "$MODEL" "$@" | sed -n 's/^trainable parameters: \([0-9]*\) .*/\1/p'
}
t1=$(trainable $HEAD)
t2=$(trainable $HEAD --unfreeze fc1)
t3=$(trainable $HEAD --unfreeze fc1 --unfreeze conv2)
total=$(trainable --unfreeze '*')
diag "trainable per phase: $t1, $t2, $t3 of $total"

# ---------------------------------------------------------------- phases
solo train $TRAIN $SCHEDULE --threads 1 --log-every 1 --metrics "$WORK/p.csv" \
    --save "$WORK/p.st" > "$WORK/p.out" 2> "$WORK/p.err"
status=$?
[ $status -eq 0 ] || show "$WORK/p.err"
ok $status "a run with two --unfreeze-at points trains to the end"
grep -q "^schedule: unfreeze 'fc1' after step 13 (--unfreeze-at 2:fc1)$" "$WORK/p.out" &&
    grep -q "^schedule: unfreeze 'conv2' after step 30 (--unfreeze-at s30:conv2)$" "$WORK/p.out"
ok $? "the header lists the points: epoch 2 is after step 13, s30 after step 30"
grep -q "^step 13: --unfreeze-at 2:fc1: trainable parameters $t1 -> $t2, allreduce $((4 * t2)) bytes per step$" "$WORK/p.out" &&
    grep -q "^step 30: --unfreeze-at s30:conv2: trainable parameters $t2 -> $t3, allreduce $((4 * t3)) bytes per step$" "$WORK/p.out"
ok $? "each point says what it changed: trainable $t1 -> $t2 -> $t3, allreduce 4 x that"
grep -q "^phase 1, steps 1-13: $((total - t1)) frozen parameters unchanged " "$WORK/p.out" &&
    grep -q "^phase 2, steps 14-30: $((total - t2)) frozen parameters unchanged " "$WORK/p.out" &&
    grep -q "^phase 3, steps 31-39: $((total - t3)) frozen parameters unchanged " "$WORK/p.out"
ok $? "the parameters frozen in each phase are checked unchanged at its end: $(grep '^phase' "$WORK/p.out" | cut -d: -f1 | tr '\n' ' ')"
# The prefix before the first trainable layer: through relu (layer 7) while
# only fc2 trains, through flatten (5) with fc1, through relu (1) with conv2.
grep -q '^phase 1, .*; feature cache [0-9.]* MB through layer 7 (relu)$' "$WORK/p.out" &&
    grep -q '^phase 2, .*; feature cache [0-9.]* MB through layer 5 (flatten)$' "$WORK/p.out" &&
    grep -q '^phase 3, .*; feature cache [0-9.]* MB through layer 1 (relu)$' "$WORK/p.out"
ok $? "the feature cache follows the frozen prefix, shortened at each point: $(sed -n 's/^phase \([0-9]\).*through layer \([0-9]*\).*/\1:\2/p' "$WORK/p.out" | tr '\n' ' ')"
[ "$(sed 1d "$WORK/p.csv" | cut -d, -f1 | tr '\n' ' ')" = "$(seq 1 39 | tr '\n' ' ')" ]
ok $? "--log-every 1 logs every step across the points"

# A point at the start is part of the starting frozen set; --freeze-at.
solo train $TRAIN --threads 1 --unfreeze-at 1:fc1 --unfreeze-at s0:conv2 --freeze-at s20:fc1 \
    --log-every 100 --save "$WORK/f.st" > "$WORK/f.out" 2> "$WORK/f.err"
status=$?
[ $status -eq 0 ] || show "$WORK/f.err"
grep -q "^parameters $total, trainable $t3 " "$WORK/f.out" &&
    grep -q "^step 20: --freeze-at s20:fc1: trainable parameters $t3 -> $((t3 - t2 + t1)), " "$WORK/f.out" &&
    ! grep -q '^step 0' "$WORK/f.out"
ok $? "points at epoch 1 and s0 apply before the first step; --freeze-at s20 freezes fc1 after step 20"

# --------------------------------------------------------------- layouts
if [ -n "$MPIRUN" ]; then
    solo train $TRAIN --steps 1 --lr 0 --save "$WORK/init.st" > /dev/null 2>&1
    for l in 1x1 1x2 2x1; do
        mkdir -p "$WORK/$l.dir"
        launch=solo
        [ "${l%x*}" = 2 ] && launch=mpi
        $launch train $TRAIN $SCHEDULE --threads "${l#*x}" --log-every 1 \
            --metrics "$WORK/$l.dir/m.csv" --save "$WORK/$l.dir/w.safetensors" \
            > "$WORK/$l.out" 2> "$WORK/$l.err"
        status=$?
        [ $status -eq 0 ] || show "$WORK/$l.err"
        ok $status "$l: ${l%x*} rank(s) x ${l#*x} thread(s) train across both points (ranks check their weights equal at every step)"
    done
    "$PYTHON3" "$TOP_SRCDIR/tests/compare_runs.py" "$WORK/1x1.dir" "$WORK/init.st" \
        "$WORK/1x2.dir" "$WORK/2x1.dir" > "$WORK/layouts.cmp"
    while read -r label kind status detail; do
        case $kind in
        losses | weights) ok "$status" "$label: $kind equal 1x1's within 1e-5 relative ($detail)" ;;
        unchanged)
            [ "$detail" = "conv1.bias conv1.weight" ]
            ok $? "conv1, frozen throughout, keeps its initial bits; everything else trained ($detail)" ;;
        esac
    done < "$WORK/layouts.cmp"
    # allreduce_bytes by step on 2 ranks: 4 x the phase's trainable count.
    expected=$(awk -v a=$((4 * t1)) -v b=$((4 * t2)) -v c=$((4 * t3)) \
        'BEGIN { for (s = 1; s <= 39; s++) print s "," (s <= 13 ? a : s <= 30 ? b : c) }')
    got=$(awk -F, 'NR > 1 { print $1 "," $6 }' "$WORK/2x1.dir/m.csv")
    [ "$got" = "$expected" ]
    ok $? "2 ranks: allreduce_bytes is $((4 * t1)) for steps 1-13, $((4 * t2)) for 14-30, $((4 * t3)) for 31-39 (4 x trainable)"
    [ "$(awk -F, 'NR > 1 { print $6 }' "$WORK/1x1.dir/m.csv" | sort -u)" = 0 ]
    ok $? "1 rank: allreduce_bytes is 0 throughout"
    sent=$(sed -n 's/^allreduce: [0-9]* bytes per step, \([0-9]*\) bytes in all.*/\1/p' "$WORK/2x1.out")
    [ "$sent" = $((4 * (13 * t1 + 17 * t2 + 9 * t3))) ]
    ok $? "2 ranks: the summary's bytes in all add up the phases ($sent)"
    # Ranks started with different schedules stop before the first step.
    timeout -k 10 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none \
        -x OMP_NUM_THREADS=1 -np 1 "$FROST" train $TRAIN $SCHEDULE : \
        -np 1 "$FROST" train $TRAIN --unfreeze-at 3:fc1 --unfreeze-at s30:conv2 \
        > "$WORK/disagree.out" 2> "$WORK/disagree.err"
    status=$?
    [ $status -ne 0 ] && grep -q '^frost: ranks disagree on the hyper-parameters and run settings' "$WORK/disagree.err" &&
        ! grep -q '^epoch' "$WORK/disagree.out"
    ok $? "ranks given different schedules refuse to start: $(head -n 1 "$WORK/disagree.err")"
else
    for i in 1 2 3 4 5 6 7 8 9 10 11 12; do skip "layouts: frost was built without MPI"; done
fi

# ---------------------------------------------------------------- resume
# resume_at K LAUNCH LABEL: stop after step K with a checkpoint, resume, and
# compare with the uninterrupted run's weights ($WORK/LABEL-full.st).
resume_at() {
    k=$1 launch=$2 label=$3
    FROST_STOP_AFTER_STEP=$k
    $launch train $TRAIN $SCHEDULE --threads 1 --log-every 100 \
        --checkpoint "$WORK/$label-ck$k.st" > "$WORK/$label-stop$k.out" 2>&1
    stopped=$?
    FROST_STOP_AFTER_STEP=
    $launch train $TRAIN $SCHEDULE --threads 1 --log-every 100 --resume "$WORK/$label-ck$k.st" \
        --save "$WORK/$label-res$k.st" > "$WORK/$label-res$k.out" 2>&1 &&
        [ $stopped -eq 75 ] && cmp -s "$WORK/$label-full.st" "$WORK/$label-res$k.st"
}
solo train $TRAIN $SCHEDULE --threads 1 --log-every 100 --save "$WORK/solo-full.st" \
    > "$WORK/solo-full.out" 2>&1
for k in 12 13 14; do
    resume_at $k solo solo
    ok $? "1 process: a checkpoint after step $k (the point is after step 13) resumes bit-identically"
done
grep -q '^step 13: --unfreeze-at 2:fc1' "$WORK/solo-res13.out" &&
    ! grep -q '^step 13: ' "$WORK/solo-res14.out" && grep -q '^step 30: ' "$WORK/solo-res14.out"
ok $? "resumed at step 13 the run applies the point; resumed at 14 only the later one"
resume_at 30 solo solo
ok $? "1 process: a checkpoint at the second point (step 30) resumes bit-identically"
if [ -n "$MPIRUN" ]; then
    mpi train $TRAIN $SCHEDULE --threads 1 --log-every 100 --save "$WORK/mpi-full.st" \
        > "$WORK/mpi-full.out" 2>&1
    for k in 12 13 14; do
        resume_at $k mpi mpi
        ok $? "2 ranks: a checkpoint after step $k resumes bit-identically"
    done
else
    for k in 12 13 14; do skip "2 ranks: frost was built without MPI"; done
fi
# Another schedule than the checkpoint's frozen set says: refused, one line.
solo train $TRAIN --unfreeze-at s30:conv2 --resume "$WORK/solo-ck14.st" \
    > "$WORK/r1.out" 2> "$WORK/r1.err"
status=$?
[ $status -eq 1 ] && [ "$(wc -l < "$WORK/r1.err")" -eq 1 ] &&
    grep -q "^frost: .*solo-ck14.st: the checkpoint has 'fc1.weight' trainable, this run freezes it .*this run's frozen set at step 14 is --freeze and --unfreeze, then the schedule's points before that step" "$WORK/r1.err"
ok $? "a step-14 checkpoint with the epoch-2 point left out is refused: $(cat "$WORK/r1.err")"
solo train $TRAIN --unfreeze-at s10:fc1 --unfreeze-at s30:conv2 --resume "$WORK/solo-ck12.st" \
    > "$WORK/r2.out" 2> "$WORK/r2.err"
[ $? -eq 1 ] && grep -q "^frost: .*the checkpoint has 'fc1.weight' frozen, this run trains it" "$WORK/r2.err"
ok $? "a step-12 checkpoint with the point moved to s10 is refused: $(cat "$WORK/r2.err")"

# ------------------------------------------------------------ evaluation
EVAL="--eval-every 10 --save-best $WORK/best.st"
solo train $TRAIN $SCHEDULE --threads 1 --log-every 5 $EVAL --metrics "$WORK/e.csv" \
    --save "$WORK/e.st" > "$WORK/e.out" 2> "$WORK/e.err"
status=$?
[ $status -eq 0 ] || show "$WORK/e.err"
ok $status "--eval-every 10 --save-best: the run trains to the end"
[ "$(head -n 1 "$WORK/e.csv")" = "step,epoch,loss,accuracy,samples_per_s,allreduce_bytes,eval_loss,eval_accuracy,lr" ]
ok $? "the metrics header has the eval columns after allreduce_bytes, then lr"
with=$(awk -F, 'NR > 1 && $7 != "" && $8 != "" { print $1 }' "$WORK/e.csv" | tr '\n' ' ')
without=$(awk -F, 'NR > 1 && $7 == "" && $8 == "" { print $1 }' "$WORK/e.csv" | tr '\n' ' ')
[ "$with" = "10 20 30 39 " ] && [ "$without" = "5 13 15 25 35 " ]
ok $? "evaluated rows: steps 10, 20, 30 and the last (got '$with'); the others empty (got '$without'; 13 is the row before the point)"
[ "$(grep -c '^eval at step [0-9]*: test loss [0-9.]* accuracy [0-9.]*% (100 samples)' "$WORK/e.out")" -eq 4 ]
ok $? "each evaluation is printed, on the 100 test samples"
# The best row before the last: 20 steps, fc1 unfrozen at epoch 2.
solo train $TRAIN --unfreeze-at 2:fc1 --steps 20 --threads 1 --log-every 100 --eval-every 5 \
    --save-best "$WORK/b-best.st" --metrics "$WORK/b.csv" > "$WORK/b.out" 2> "$WORK/b.err"
best=$(awk -F, 'NR > 1 && $8 != "" && (b == "" || $8 > b) { b = $8; s = $1 } END { print s, b }' "$WORK/b.csv")
grep -q "^best evaluation: step ${best% *}, accuracy " "$WORK/b.out" && [ "${best% *}" != 20 ]
ok $? "the summary names the best row, not the last (step ${best% *}, accuracy ${best#* }): $(grep '^best' "$WORK/b.out")"
solo eval --model "$MODEL" --data "$D" --init "$WORK/b-best.st" > "$WORK/best.out" 2>&1
got=$(sed -n 's/^test: loss [0-9.]* accuracy \([0-9.]*\)%.*/\1/p' "$WORK/best.out")
want=$(awk -v a="${best#* }" 'BEGIN { printf "%.2f", 100 * a }')
[ -n "$got" ] && [ "$got" = "$want" ]
ok $? "frost eval of the --save-best file gives the best row's accuracy ($got% vs $want%)"
ls "$WORK" | grep -q 'best.st.tmp' && leftover=1 || leftover=0
ok $leftover "--save-best leaves no temporary file"
cmp -s "$WORK/e.st" "$WORK/p.st"
ok $? "evaluating during training does not change it: the final weights equal the run without"
solo train $TRAIN --threads 1 --log-every 100 --eval-every 1e --val-split 0.25 \
    --metrics "$WORK/v.csv" > "$WORK/v.out" 2> "$WORK/v.err"
status=$?
[ $status -eq 0 ] || show "$WORK/v.err"
grep -q '^frost [^ ]*: 1 rank x 1 thread, global batch 32, 300 training samples$' "$WORK/v.out" &&
    grep -q '^evaluation: every 10 steps and at the end, on the held-out tail of the training set (100 samples)$' "$WORK/v.out" &&
    [ "$(awk -F, 'NR > 1 && $8 != "" { print $1 }' "$WORK/v.csv" | tr '\n' ' ')" = "10 20 30 " ]
ok $? "--val-split 0.25 trains on the first 300 samples and evaluates the last 100 every epoch (1e: 10 steps)"
# The best so far travels in the checkpoint: resumed after it, a run that
# does no better keeps it, and its file.
B="$TRAIN --unfreeze-at 2:fc1 --steps 20 --threads 1 --log-every 100 --eval-every 5"
FROST_STOP_AFTER_STEP=17
solo train $B --save-best "$WORK/b2-best.st" --checkpoint "$WORK/b-ck.st" > /dev/null 2>&1
FROST_STOP_AFTER_STEP=
solo train $B --save-best "$WORK/b2-best.st" --resume "$WORK/b-ck.st" > "$WORK/b-res.out" 2>&1
[ "$(grep '^best evaluation' "$WORK/b-res.out" | cut -d, -f1-2)" = "$(grep '^best evaluation' "$WORK/b.out" | cut -d, -f1-2)" ] &&
    cmp -s "$WORK/b-best.st" "$WORK/b2-best.st"
ok $? "resumed after step 17, the run keeps the best of step ${best% *} and its weights file"

# ------------------------------------------------------------- bad input
# bad PATTERN ARGS...: exit status 1, one stderr line matching PATTERN,
# nothing on stdout, no file in $O.
O="$WORK/out"
bad() {
    pattern=$1
    shift
    rm -rf "$O" && mkdir -p "$O"
    solo train $TRAIN "$@" --metrics "$O/m.csv" --save "$O/w.st" --checkpoint "$O/c.st" \
        > "$WORK/bad.out" 2> "$WORK/bad.err"
    status=$?
    [ $status -eq 1 ] && [ "$(wc -l < "$WORK/bad.err")" -eq 1 ] &&
        grep -q "^frost: $pattern" "$WORK/bad.err" && [ ! -s "$WORK/bad.out" ] &&
        [ -z "$(ls -A "$O")" ]
    ok $? "$* -> $(cat "$WORK/bad.err")"
}
bad "--unfreeze-at 2:fc9: pattern 'fc9' matches no parameter" --unfreeze-at 2:fc9
bad "--freeze-at s5:layer4\*: pattern 'layer4\*' matches no parameter" --freeze-at 's5:layer4*'
bad "--unfreeze-at 4:fc1: the run has 39 steps (13 per epoch), so epoch 4 never starts" --unfreeze-at 4:fc1
bad "--unfreeze-at s39:fc1: the run has 39 steps, so no step comes after step 39" --unfreeze-at s39:fc1
bad "--unfreeze-at s20:fc1: the run has 15 steps" --steps 15 --unfreeze-at s20:fc1
bad "--unfreeze-at 'x:fc1': the point 'x' is neither an epoch (2) nor a step (s500)" --unfreeze-at x:fc1
bad "--unfreeze-at '0:fc1': epochs count from 1" --unfreeze-at 0:fc1
bad "--freeze-at '2': expected POINT:PATTERN" --freeze-at 2
bad "--unfreeze-at '2:': no pattern after the colon" --unfreeze-at 2:
bad "--unfreeze-at 's-1:fc1': the point 's-1' is neither" --unfreeze-at s-1:fc1
bad "--eval-every '0': expected a number of steps (200) or of epochs (1e)" --eval-every 0
bad "--eval-every '2x': expected a number of steps" --eval-every 2x
bad "--save-best needs --eval-every N" --save-best "$O/b.st"
bad "--val-split 1: expected the fraction to hold out, above 0 and below 1" --eval-every 5 --val-split 1
bad "--val-split 0.001 of 400 training samples holds out 0: none to evaluate" --eval-every 5 --val-split 0.001
bad "--save-best $WORK/nowhere/b.st: directory $WORK/nowhere does not exist" --eval-every 5 --save-best "$WORK/nowhere/b.st"

done_testing
