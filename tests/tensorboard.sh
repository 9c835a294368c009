#!/bin/sh
# tensorboard.sh - `frost train --tensorboard DIR` writes TensorBoard event
# files, read here by an independent reader (tests/tfevents.py: CRC-32C and
# protobuf decoding of its own, python3's standard library only):
#   - DIR is made when missing, and holds one file
#     events.out.tfevents.<unix time>.<hostname>, whose every record's CRCs
#     are right: the file version, the run's start at step 1, then at each
#     --log-every point the loss, accuracy, learning rate, samples/s and
#     allreduce bytes per step of that point's --metrics row, then the test
#     loss and accuracy frost printed;
#   - a resumed run adds a second file, starting at its next step (which
#     TensorBoard takes as a restart), and leaves the first as it was;
#   - a DIR that is a file or whose parent is missing stops the run before
#     training, and a refused write is one error naming the event file;
#   - on 2 MPI ranks only rank 0 writes: one file, matching rank 0's metrics.
. "$TOP_SRCDIR/tests/common.sh"

plan 13
DATA="$WORK/data"
mkdir -p "$DATA"
make_idx "$DATA" 300 3
MODEL='input 1 28 28; flatten; fc1 = linear(784, 16); relu; fc2 = linear(16, 10)'
LR=0.05
FLAGS="--batch-size 32 --seed 5 --lr $LR --log-every 2"
HOST=$(uname -n)

# A single process needs no Open MPI runtime daemon or network transport.
solo() {
    OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self \
        OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx "$FROST" "$@"
}
# train OUT FLAGS...: frost train on the test data; OUT.out gets its output.
train() {
    out=$1
    shift
    solo train --model "$MODEL" --data "$DATA" $FLAGS "$@" > "$out.out" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$out.out"
    return $status
}
# test_result OUT: "LOSS PERCENT" of the "test: loss ... accuracy ...%" line.
test_result() { sed -n 's/^test: loss \([0-9.]*\) accuracy \([0-9.]*\)% .*/\1 \2/p' "$1"; }
# event_files DIR: the event files in DIR, in the order TensorBoard reads them.
event_files() { ls "$1" | grep tfevents | LC_ALL=C sort; }
# check EVENTS CSV START ARGS...: tests/tfevents.py's verdict.
check() {
    events=$1 csv=$2
    shift 2
    "$PYTHON3" "$TOP_SRCDIR/tests/tfevents.py" check "$events" "$csv" "$LR" "$@"
}

# ------------------------------------------------------------- one run
TB="$WORK/tb"
train "$WORK/a" --steps 9 --metrics "$WORK/a.csv" --tensorboard "$TB"
ok $? "frost train --tensorboard DIR trains, making the missing DIR"
files=$(event_files "$TB")
[ "$(ls "$TB" | wc -l)" -eq 1 ] &&
    echo "$files" | grep -Eq "^events\.out\.tfevents\.[0-9]{10}\.$HOST\$"
ok $? "DIR holds one file, events.out.tfevents.<10-digit unix time>.$HOST ($files)"
# Log points at steps 2, 4, 6, 8 and 9 (the last step).
result=$(check "$TB/$files" "$WORK/a.csv" 1 --eval $(test_result "$WORK/a.out") 2>&1)
ok $? "its records' CRCs are right; the file version, the start (SessionLog START) at step 1, then each metrics row's loss, accuracy, learning rate, samples/s and allreduce bytes at its step, then the printed test loss and accuracy ($result)"

# ------------------------------------------------------------- resumed
TB="$WORK/resumed"
train "$WORK/b1" --steps 4 --checkpoint "$WORK/c.safetensors" --metrics "$WORK/b1.csv" \
    --tensorboard "$TB"
ok $? "a run of 4 steps with --checkpoint and --tensorboard"
first=$(event_files "$TB")
cp "$TB/$first" "$WORK/first.copy"
train "$WORK/b2" --steps 9 --resume "$WORK/c.safetensors" --metrics "$WORK/b2.csv" \
    --tensorboard "$TB"
ok $? "resumed to 9 steps with the same --tensorboard DIR"
second=$(event_files "$TB" | tail -n 1)
[ "$(event_files "$TB" | wc -l)" -eq 2 ] && [ "$second" != "$first" ] &&
    cmp -s "$TB/$first" "$WORK/first.copy" &&
    check "$TB/$first" "$WORK/b1.csv" 1 --eval $(test_result "$WORK/b1.out") > /dev/null
ok $? "the resumed run adds a second file, read after the first ($first, $second), and leaves the first as it was (started at step 1)"
result=$(check "$TB/$second" "$WORK/b2.csv" 5 --eval $(test_result "$WORK/b2.out") 2>&1)
ok $? "the second file: the file version, the start at step 5 (a restart for TensorBoard, which drops the first file's points from step 5 on), then the resumed run's rows ($result)"

# ------------------------------------------------------------- failures
touch "$WORK/plain"
solo train --model "$MODEL" --data "$DATA" $FLAGS --steps 2 --tensorboard "$WORK/plain" \
    > "$WORK/plain.out" 2>&1
[ $? -ne 0 ] && grep -q "^frost: --tensorboard $WORK/plain: exists and is not a directory\$" "$WORK/plain.out" &&
    ! grep -q '^epoch' "$WORK/plain.out"
ok $? "a --tensorboard DIR that is a file stops the run before training ($(grep '^frost' "$WORK/plain.out"))"

solo train --model "$MODEL" --data "$DATA" $FLAGS --steps 2 --tensorboard "$WORK/no/such" \
    > "$WORK/deep.out" 2>&1
[ $? -ne 0 ] && grep -q "^frost: --tensorboard $WORK/no/such: cannot create the directory: No such file or directory\$" "$WORK/deep.out" &&
    ! grep -q '^epoch' "$WORK/deep.out" && [ ! -e "$WORK/no" ]
ok $? "only DIR itself is made, not its parents: a missing parent is an error before training ($(grep '^frost' "$WORK/deep.out"))"

# A file-size limit refuses the writes past 1 KB (SIGXFSZ ignored, so a
# write fails with EFBIG instead of killing frost); stdout goes to a device,
# which the limit does not touch.
(
    trap '' XFSZ
    ulimit -f 2
    exec env OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self \
        OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx "$FROST" train --model "$MODEL" --data "$DATA" \
        $FLAGS --log-every 1 --steps 30 --tensorboard "$WORK/full"
) > /dev/null 2> "$WORK/full.err"
status=$?
full=$(event_files "$WORK/full")
[ $status -eq 1 ] && [ "$(wc -l < "$WORK/full.err")" -eq 1 ] &&
    grep -q "^frost: --tensorboard $WORK/full/$full: cannot write: File too large\$" "$WORK/full.err"
ok $? "a refused write is one error naming the event file, and a failed exit (status $status: $(cat "$WORK/full.err"))"

# ------------------------------------------------------------- MPI
if [ -n "${MPIRUN:-}" ]; then
    timeout -k 10 120 "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np 2 \
        -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE \
        "$FROST" train --model "$MODEL" --data "$DATA" $FLAGS --steps 5 \
        --metrics "$WORK/mpi.csv" --tensorboard "$WORK/mpi" > "$WORK/mpi.out" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/mpi.out"
    files=$(event_files "$WORK/mpi")
    [ $status -eq 0 ] && [ "$(ls "$WORK/mpi" | wc -l)" -eq 1 ]
    ok $? "2 MPI ranks with --tensorboard write exactly one event file, from rank 0 ($files)"
    result=$(check "$WORK/mpi/$files" "$WORK/mpi.csv" 1 --eval $(test_result "$WORK/mpi.out") 2>&1) &&
        awk -F, 'NR > 1 && $6 > 0 { n++ } END { exit !(NR > 1 && n == NR - 1) }' "$WORK/mpi.csv"
    ok $? "it matches rank 0's metrics, allreduce bytes (not 0 on 2 ranks) included ($result)"
else
    skip "frost was built without MPI"
    skip "frost was built without MPI"
fi

"$FROST" train --help | grep -q -- '--tensorboard DIR'
ok $? "frost train --help shows --tensorboard DIR"
done_testing
