#!/bin/sh
# bench_smoke.sh - bench/run.sh, cut down to a few steps, still produces its
# report: the table header, a row per workload with frost's rate, the FLOP
# count of the workload, the fraction of the measured sgemm limit and, where
# PyTorch is installed, the PyTorch columns and ratios; an MPI row when frost
# has MPI.  It checks the benchmark works, not how fast anything is.
. "$TOP_SRCDIR/tests/common.sh"

DATA=/usr/share/datasets/fashion-mnist
if [ ! -e "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA/train-images-idx3-ubyte" ]; then
    skip "no Fashion-MNIST in $DATA (Debian's dataset-fashion-mnist)"
    done_testing
fi
torch=--no-torch
for py in "$PYTHON3" /usr/bin/python3; do
    if "$py" -c 'import torch' > /dev/null 2>&1; then
        torch="--python $py"
        break
    fi
done
# Workload 3 (fc4 trained) is the cheapest; 4 steps in intervals of 2.
set -- --frost "$FROST" --threads 1 --workloads 3 --steps 4 --log-every 2 --no-torch-passive \
    --output "$WORK/report.md" $torch
if [ -n "${MPIRUN:-}" ]; then
    set -- "$@" --mpi 3 --mpirun "$MPIRUN --allow-run-as-root --oversubscribe"
else
    set -- "$@" --mpi none
fi
timeout 600 "$TOP_SRCDIR/bench/run.sh" "$@" > "$WORK/out" 2> "$WORK/err"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/err" | tail -20
ok $status "bench/run.sh runs the benchmark ($torch)"
cmp -s "$WORK/out" "$WORK/report.md"
ok $? "--output gets the report printed on stdout"
grep -q '^| workload | frost samples/s | torch samples/s | torch, PASSIVE | frost/torch | frost/best torch | MFLOP/sample | % of sgemm limit | frost MB | torch MB |$' "$WORK/out"
ok $? "the table has its header"
grep -q '^[0-9-]* [0-9:]* | .* | [0-9]* cores | 1 threads | sgemm [0-9.]* GFLOP/s per core' "$WORK/out"
ok $? "the header line gives the date, cores, threads and the measured sgemm rate"
row=$(grep '^| 3\. MLP, only fc4 trained |' "$WORK/out")
# | name | frost | torch | passive | ratio | best ratio | MFLOP | % | frost MB | torch MB |
echo "$row" | awk -F' [|] ' '{ good = $2 ~ /^[0-9]+$/ && $2 > 0 && $7 == "5.84" && $8 ~ /^[0-9.]+%$/ && $9 ~ /^[0-9]+$/ } END { exit !good }'
ok $? "workload 3: frost's rate, 5.84 MFLOP/sample, its % of the limit and its memory ($row)"
if [ "$torch" = --no-torch ]; then
    skip "no python3 with torch: the PyTorch columns are not checked"
else
    echo "$row" | awk -F' [|] ' '{ good = $3 ~ /^[0-9]+$/ && $4 == "-" && $5 ~ /^[0-9.]+$/ && $5 == $6 } END { exit !good }'
    ok $? "workload 3: PyTorch's rate and the ratio (frost/best torch = frost/torch without the PASSIVE run)"
fi
if [ -z "${MPIRUN:-}" ]; then
    skip "frost was built without MPI"
else
    grep '^| 3\. MLP, only fc4 trained, 2 ranks x 1 thread (MPI / DDP) |' "$WORK/out" |
        awk -F' [|] ' '{ good = $2 ~ /^[0-9]+$/ && $2 > 0 } END { exit !good }'
    ok $? "the MPI row gives frost's rate under mpirun with 2 ranks"
fi

# bench/trace_summary.py on a residual net's trace: layers inside a block are
# named by it (layer1.0.conv1) and get their FLOPs, shapes follow the block and
# its shortcut, and --freeze takes frost's patterns: a frozen layer's backward
# counts the input gradient only, so its rate is half the trainable one.
SMALL=$WORK/small
mkdir -p "$SMALL"
make_idx "$SMALL" 64 5
cat > "$WORK/res.txt" << 'EOF2'
input 1 28 28
conv1 = conv2d(1, 4, 3, padding=1, bias=False)
relu
residual layer1.0 {
    conv1 = conv2d(4, 8, 3, stride=2, padding=1)
    relu
    conv2 = conv2d(8, 8, 3, padding=1)
    shortcut {
        downsample.0 = conv2d(4, 8, 1, stride=2)
    }
}
relu
flatten
fc = linear(1568, 10)
EOF2
"$FROST" train --model "$WORK/res.txt" --data "$SMALL" --batch-size 16 --steps 6 --threads 1 \
    --log-every 100 --trace "$WORK/res.json" > "$WORK/res.out" 2>&1
ok $? "a residual net trains with --trace"
summary() {
    "$PYTHON3" "$TOP_SRCDIR/bench/trace_summary.py" "$WORK/res.json" --model "$WORK/res.txt" \
        --batch 16 --skip 1 "$@"
}
rate() { awk -F' [|] ' -v l="$1" -v e="$2" '$1 == "| " l && $2 == e { print $5 + 0 }' "$3"; }
summary > "$WORK/all.txt" && summary --freeze 'layer1*' > "$WORK/frozen.txt"
ok $? "trace_summary.py reads the residual net, with and without --freeze 'layer1*'"
all=$(rate layer1.0.conv2 backward "$WORK/all.txt")
frozen=$(rate layer1.0.conv2 backward "$WORK/frozen.txt")
fc_all=$(rate fc backward "$WORK/all.txt")
fc_frozen=$(rate fc backward "$WORK/frozen.txt")
awk -v a="$all" -v f="$frozen" -v x="$fc_all" -v y="$fc_frozen" \
    'BEGIN { exit !(a > 0 && f > 0 && a / f > 1.9 && a / f < 2.1 && x == y) }'
ok $? "layer1.0.conv2's backward counts dW and dx trained, dx only frozen ($all against $frozen GFLOP/s), fc's the same ($fc_all)"
down=$(rate layer1.0.downsample.0 forward "$WORK/all.txt")
conv1=$(rate layer1.0.conv1 forward "$WORK/all.txt")
[ -n "$down" ] && [ -n "$conv1" ] && grep -q '^whole step: [0-9.]* GFLOP/s per core' "$WORK/all.txt"
ok $? "the shortcut's conv and the block's first conv have FLOPs ($down, $conv1 GFLOP/s) and the step a total"
done_testing
