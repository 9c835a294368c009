#!/bin/sh
# mpi_allreduce.sh - frost's gradient allreduce (the ring of src/comm/allreduce.c):
# exact sums and identical bits on 2, 3 and 4 ranks; the bytes it puts on the
# wire, counted by an independent MPI profiling layer, are exactly what the
# ring must send (4 x trainable per rank on 2 ranks, 2 x with bf16); bf16
# gradients train close to float32; a rank that stops answering ends the job
# with one clear error within the --comm-timeout, not a hang.
. "$TOP_SRCDIR/tests/common.sh"

if [ -z "${MPIRUN:-}" ]; then
    plan 1
    skip "frost was built without MPI"
    done_testing
fi
plan 18
MPI="$MPIRUN --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1"
TESTS_DIR=$(dirname "$FROST")/../tests
PRELOAD=$TESTS_DIR/.libs/libpmpicount.so
# In a sanitizer build the preloaded counter comes before AddressSanitizer's
# runtime in the library list, which ASan refuses unless told it is fine.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
export ASAN_OPTIONS

for np in 2 3 4; do
    timeout 120 $MPI -np $np "$TESTS_DIR/test_allreduce" > "$WORK/ring$np.out" 2> "$WORK/ring$np.err"
    status=$?
    lines=$(grep -c '^ok - ' "$WORK/ring$np.out")
    bad=$(grep -c '^not ok' "$WORK/ring$np.out")
    [ $status -eq 0 ] && [ "$bad" -eq 0 ] && [ "$lines" -eq 49 ]
    ok $? "$np ranks: the allreduce's 49 checks pass (exact sums, same bits, bf16 rounding; ring, doubling, halving)"
    [ $status -eq 0 ] && [ "$bad" -eq 0 ] || sed 's/^/#   /' "$WORK/ring$np.out" "$WORK/ring$np.err" | grep -v '^#   ok' | head -20
done

DATA="$WORK/data"
mkdir -p "$DATA"
make_idx "$DATA" 300 5
MODEL='input 1 28 28; flatten; fc1 = linear(784, 64); relu; fc2 = linear(64, 32); relu; fc3 = linear(32, 10)'
STEPS=6
train() { # train NAME NP [frost args]: PMPI counts in $WORK/NAME.count.RANK
    name=$1 np=$2
    shift 2
    timeout 120 $MPI -np "$np" -x LD_PRELOAD="$PRELOAD" -x PMPI_COUNT_FILE="$WORK/$name.count" \
        "$FROST" train --model "$MODEL" --data "$DATA" --steps $STEPS --batch-size 60 --lr 0.05 \
        --momentum 0.9 --log-every 1 --metrics "$WORK/$name.csv" --save "$WORK/$name.safetensors" \
        "$@" > "$WORK/$name.out" 2>&1
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$name.out"
    return $status
}
# The counter's second field: bytes sent with tag 0, the gradient buckets.
counted() { cat "$WORK/$1".count.* | awk '{ s += $2 } END { print s + 0 }'; }
trainable() { "$FROST" inspect --model "$MODEL" "$@" | sed -n 's/^trainable parameters: \([0-9]*\).*/\1/p'; }
full=$(trainable)
head=$(trainable --freeze '*' --unfreeze fc3)

train f32 2
ok $? "2 ranks train with the LD_PRELOADed byte counter"
for r in 0 1; do
    [ "$(cut -d' ' -f2 "$WORK/f32.count.$r")" = $((STEPS * 4 * full)) ]
    ok $? "2 ranks: rank $r put exactly $STEPS x 4 x $full bytes on the wire (counted by PMPI: $(cut -d' ' -f2 "$WORK/f32.count.$r"))"
done
train bf16 2 --grad-dtype bf16
ok $? "2 ranks train with --grad-dtype bf16"
[ "$(counted bf16)" = $((2 * STEPS * 2 * full)) ]
ok $? "bf16: each rank put exactly $STEPS x 2 x $full bytes on the wire ($(counted bf16) in all)"
awk -F, -v want=$((2 * full)) 'NR > 1 && $6 != want { bad = 1 } END { exit bad }' "$WORK/bf16.csv"
ok $? "bf16: the metrics show 2 x $full bytes per step"
grep -q "allreduce: $((2 * full)) bytes per step" "$WORK/bf16.out"
ok $? "bf16: the summary says 2 x trainable bytes per step"
# bfloat16 keeps 8 significant bits: each gradient value is off by at most
# 2^-9 of itself, so after 6 steps of lr 0.05 the loss moves by far less
# than 1% of itself; a bf16 path that dropped or doubled a bucket, or summed
# garbage, is off by much more.
awk -F, 'NR == FNR { loss[$1] = $3; next } FNR > 1 { d = loss[$1] - $3; if (d < 0) d = -d; if (d > 0.01 * loss[$1]) bad = 1 } END { exit bad }' \
    "$WORK/f32.csv" "$WORK/bf16.csv"
ok $? "bf16: every step's loss is within 1% of float32's"
cmp -s "$WORK/f32.safetensors" "$WORK/bf16.safetensors"
[ $? -ne 0 ]
ok $? "bf16 really changes the numbers (the weights differ from float32's)"

train head 2 --freeze '*' --unfreeze fc3
ok $? "2 ranks, only fc3 trained (a small head: one exchange)"
[ "$(counted head)" = $((2 * STEPS * 4 * head)) ]
ok $? "a frozen trunk: exactly 4 x $head trainable bytes per rank and step on the wire"
train four 4
ok $? "4 ranks train with the byte counter"
# The ring sends every value n-1 times in each of its two phases.
[ "$(counted four)" = $((STEPS * 2 * 3 * 4 * full)) ]
ok $? "4 ranks: the ranks together sent 2 x 3 x 4 x $full bytes a step, what a ring must ($(counted four))"

# A rank that stops answering (SIGSTOP) ends the job within --comm-timeout
# with a message naming the rank it waited for, not a hang.
timeout 120 $MPI -np 2 "$FROST" train --model "$MODEL" --data "$DATA" --steps 100000 \
    --batch-size 60 --log-every 1 --comm-timeout 3 > "$WORK/stall.out" 2>&1 &
job=$!
stopped=""
for _ in $(seq 100); do
    if grep -q '^epoch 1 step 3/' "$WORK/stall.out" 2>/dev/null; then
        # timeout's child is mpirun, whose children are the ranks.
        stopped=$(pgrep -P "$(pgrep -P $job | head -1)" | tail -1)
        [ -n "$stopped" ] && kill -STOP "$stopped"
        break
    fi
    sleep 0.2
done
start=$(date +%s)
wait $job
status=$?
elapsed=$(($(date +%s) - start))
[ -n "$stopped" ] && kill -KILL "$stopped" 2>/dev/null
[ -n "$stopped" ] && [ $status -ne 0 ] && [ $status -ne 124 ]
ok $? "a stopped rank ends the job with a failure, not a hang (exit $status after ${elapsed} s)"
grep -q "stalled: nothing from rank [01] for 3 s" "$WORK/stall.out" || grep -q "stalled: the other ranks did not answer for 3 s" "$WORK/stall.out"
ok $? "the error says the allreduce stalled and which rank it waited for"
[ $status -ne 0 ] || sed 's/^/#   /' "$WORK/stall.out"
done_testing
