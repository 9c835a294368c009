#!/bin/sh
# mpi_buckets.sh - the gradient allreduce split into buckets and overlapped
# with backward gives the same training as one allreduce per step, and the
# bytes sent stay exactly 4 x the trainable parameter count.
. "$TOP_SRCDIR/tests/common.sh"

if [ -z "${MPIRUN:-}" ]; then
    skip "frost was built without MPI"
    done_testing
fi
DATA="$WORK/data"
mkdir -p "$DATA"
make_idx "$DATA" 256 5
MODEL='input 1 28 28; conv1 = conv2d(1, 4, 3); relu; maxpool2d(2); flatten; fc1 = linear(676, 32); relu; fc2 = linear(32, 10)'
run() { # run NAME BUCKET_MB [extra args]
    name=$1 mb=$2
    shift 2
    timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 \
        "$FROST" train --model "$MODEL" --data "$DATA" --steps 12 --batch-size 30 --lr 0.05 \
        --momentum 0.9 --log-every 1 --bucket-mb "$mb" --metrics "$WORK/$name.csv" \
        --save "$WORK/$name.safetensors" "$@" > "$WORK/$name.out" 2>&1
}
compare() { # compare A B TOLERANCE: max |a - b| over every tensor
    "$PYTHON3" - "$1" "$2" "$3" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: struct.unpack('<%df' % ((v['data_offsets'][1] - v['data_offsets'][0]) // 4),
                             d[v['data_offsets'][0]:v['data_offsets'][1]])
            for k, v in h.items() if k != '__metadata__'}
a, b = load(sys.argv[1]), load(sys.argv[2])
worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
print(worst)
sys.exit(0 if worst <= float(sys.argv[3]) else 1)
PY
}
trainable=$("$FROST" inspect --model "$MODEL" | sed -n 's/^trainable parameters: \([0-9]*\).*/\1/p')

run one 1000
ok $? "2 ranks, one bucket: training runs"
run many 0.002
ok $? "2 ranks, 2 KB buckets (one per layer or so): training runs"
diff=$(compare "$WORK/one.safetensors" "$WORK/many.safetensors" 1e-6)
ok $? "many small buckets give the weights of one bucket (max diff $diff)"
awk -F, -v want=$((4 * trainable)) 'NR > 1 && $6 != want { bad = 1 } END { exit bad }' "$WORK/many.csv"
ok $? "with buckets each step still sends exactly 4 x $trainable bytes"
awk -F, 'NR == FNR { loss[$1] = $3; next } FNR > 1 && (loss[$1] - $3 > 1e-5 || $3 - loss[$1] > 1e-5) { bad = 1 } END { exit bad }' \
    "$WORK/one.csv" "$WORK/many.csv"
ok $? "per-step losses agree with and without buckets"
# frost asks Open MPI for the ring algorithm of its nonblocking allreduce
# unless the user chose one; a user's choice is taken, and on 2 ranks every
# algorithm adds the same two numbers, so the weights are bit-identical.
OMPI_MCA_coll_libnbc_iallreduce_algorithm=2 run binomial 0.002
ok $? "2 ranks, the user's own libnbc allreduce algorithm (binomial): training runs"
cmp -s "$WORK/many.safetensors" "$WORK/binomial.safetensors"
ok $? "the user's allreduce algorithm and frost's default (ring) give bit-identical weights"
# A weight of 2 x 256K floats or more that closes a bucket has its gradient
# sent in row blocks and its forward run by blocks of outputs: the training
# is one process's, the bytes still exactly 4 x trainable.
BIG='input 1 28 28; conv1 = conv2d(1, 4, 3); relu; maxpool2d(2); flatten; fc1 = linear(676, 1024); relu; fc2 = linear(1024, 10)'
big_trainable=$("$FROST" inspect --model "$BIG" | sed -n 's/^trainable parameters: \([0-9]*\).*/\1/p')
MODEL=$BIG run blocks 1
ok $? "2 ranks, fc1's 692,224 weights in row blocks: training runs"
timeout 120 "$MPIRUN" --allow-run-as-root --oversubscribe -np 1 -x OMP_NUM_THREADS=1 \
    "$FROST" train --model "$BIG" --data "$DATA" --steps 12 --batch-size 30 --lr 0.05 \
    --momentum 0.9 --log-every 1 --save "$WORK/blocks1.safetensors" > "$WORK/blocks1.out" 2>&1 &&
    diff=$(compare "$WORK/blocks1.safetensors" "$WORK/blocks.safetensors" 1e-6)
ok $? "row blocks on 2 ranks give one process's weights (max diff $diff)"
awk -F, -v want=$((4 * big_trainable)) 'NR > 1 && $6 != want { bad = 1 } END { exit bad }' "$WORK/blocks.csv"
ok $? "with row blocks each step still sends exactly 4 x $big_trainable bytes"
run frozen 0.002 --freeze conv1
grep -q "allreduce: $((4 * (trainable - 40))) bytes per step" "$WORK/frozen.out"
ok $? "with conv1 frozen the buckets carry 4 x (trainable - 40) bytes"
done_testing
