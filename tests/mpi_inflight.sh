#!/bin/sh
# mpi_inflight.sh - on several ranks a step returns with its update still in
# flight; tests/test_inflight.c reads the model after steps through the API
# (checksum, a parameter, evaluate, a checkpoint and its restore, a
# frozen-set change, a stop request from one rank) and records what it saw.
# The record must be the same as when each step applies its update before
# returning (config.sync_updates): the same arithmetic in the same order.
. "$TOP_SRCDIR/tests/common.sh"

if [ -z "${MPIRUN:-}" ]; then
    plan 1
    skip "frost was built without MPI"
    done_testing
fi
plan 7
MPI="$MPIRUN --allow-run-as-root --oversubscribe"
PROGRAM=$(dirname "$FROST")/../tests/test_inflight

run() { # run NAME NP THREADS MODE [BUCKET_MB]
    timeout 120 $MPI -np "$2" -x OMP_NUM_THREADS="$3" "$PROGRAM" "$3" "$WORK/$1.ckpt" "$4" "${5:-0.05}" \
        > "$WORK/$1.out" 2> "$WORK/$1.err"
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$1.out" "$WORK/$1.err"
    return $status
}
same() { # same A B: identical records
    diff "$WORK/$1.out" "$WORK/$2.out" > "$WORK/diff.out"
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/diff.out"
    return $status
}
run sync 2 1 sync
ok $? "2 ranks, each step's update applied before it returns: steps, reads, a frozen-set change, evaluate, a checkpoint and its restore"
run inflight 2 1 in-flight
ok $? "2 ranks, each step's update left in flight: the same calls"
[ "$(grep -c ' weights ' "$WORK/inflight.out")" -eq 10 ]
ok $? "the record has its 10 lines"
same sync inflight
ok $? "with updates in flight every read sees what it sees with them applied (a stop asked by the last rank only reaches both)"
run inflight2t 2 2 in-flight && run sync2t 2 2 sync && same sync2t inflight2t
ok $? "the same on 2 ranks x 2 threads"
run inflight1b 2 1 in-flight 100 && run sync1b 2 1 sync 100 && same sync1b inflight1b
ok $? "the same with one bucket (every row block of fc3 sent as it is done)"
grep -q '^stop before 7 .* value 0$' "$WORK/inflight.out" && grep -q '^stop after 10 .* value 1$' "$WORK/inflight.out"
ok $? "the stop asked for before step 9 is agreed after it, not before"
done_testing
