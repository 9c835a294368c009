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

# compare.py REF INIT RUN...: REF and each RUN are directories holding m.csv
# (--metrics) and w.safetensors (--save); INIT holds the initial weights.  For
# each RUN it prints two lines, "LABEL losses STATUS DETAIL" and "LABEL weights
# STATUS DETAIL" (LABEL: the directory's name less ".dir"; STATUS 0 when it
# holds), then "- unchanged 0 NAMES": the tensors REF left bit-identical to INIT.
#   losses:  the same (step, epoch) rows, each loss within 1e-5 relative of
#            REF's (plus 1e-6, the CSV's print resolution);
#   weights: the same tensors and shapes, each within 1e-5 of REF's relative
#            to the tensor's largest magnitude (max|a-b| <= 1e-5 max|a|:
#            element-wise relative error means nothing for weights near 0),
#            and the tensors REF left bit-identical to INIT (the frozen ones)
#            bit-identical here too.
# Only the standard library: the safetensors header is JSON, the data F32.
cat > "$WORK/compare.py" <<'EOF'
import csv, json, os, struct, sys
RTOL = 1e-5

def weights(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise ValueError("%s: %s is %s, not F32" % (path, name, t["dtype"]))
        a, b = t["data_offsets"]
        out[name] = (t["shape"], struct.unpack("<%df" % ((b - a) // 4), data[a:b]))
    return out

def losses(path):
    with open(path) as f:
        return [(r["step"], r["epoch"], float(r["loss"])) for r in csv.DictReader(f)]

def compare_losses(ref, run):
    if not ref:
        return "the reference has no rows"
    if [r[:2] for r in ref] != [r[:2] for r in run]:
        return "different (step, epoch) rows: %d vs %d rows" % (len(ref), len(run))
    worst = 0.0
    for (step, _, a), (_, _, b) in zip(ref, run):
        worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
        if abs(a - b) > RTOL * max(abs(a), abs(b)) + 1e-6:
            return "FAILED at step %s: loss %.6f vs %.6f" % (step, a, b)
    return "%d steps, worst relative difference %.2g" % (len(ref), worst)

def compare_weights(ref, run, frozen):
    if sorted(ref) != sorted(run):
        return "FAILED: tensors %s vs %s" % (sorted(ref), sorted(run))
    worst, problems = 0.0, []
    for name, (shape, a) in sorted(ref.items()):
        run_shape, b = run[name]
        if shape != run_shape:
            problems.append("%s has shape %s, not %s" % (name, run_shape, shape))
            continue
        if name in frozen and a != b:
            problems.append("%s (frozen) changed" % name)
        scale = max(abs(v) for v in a) or 1.0
        diff = max(abs(x - y) for x, y in zip(a, b)) / scale
        worst = max(worst, diff)
        if diff > RTOL:
            problems.append("%s: max|diff|/max|ref| = %.3g" % (name, diff))
    if problems:
        return "FAILED: " + "; ".join(problems)
    return "worst relative difference %.2g" % worst

def main(ref_dir, init_path, *runs):
    init = weights(init_path)
    ref_w = weights(os.path.join(ref_dir, "w.safetensors"))
    ref_m = losses(os.path.join(ref_dir, "m.csv"))
    frozen = sorted(k for k in ref_w if k in init and init[k][1] == ref_w[k][1])
    for run in runs:
        label = os.path.basename(run.rstrip("/"))
        label = label[:-4] if label.endswith(".dir") else label
        for kind in ("losses", "weights"):
            try:
                if kind == "losses":
                    detail = compare_losses(ref_m, losses(os.path.join(run, "m.csv")))
                else:
                    detail = compare_weights(ref_w, weights(os.path.join(run, "w.safetensors")),
                                             frozen)
            except Exception as e:  # a missing or malformed file fails that check
                detail = "FAILED: %s" % e
            print(label, kind, 1 if detail.startswith("FAILED") else 0, detail)
    print("-", "unchanged", 0, " ".join(frozen))

main(*sys.argv[1:])
EOF
cat > "$WORK/model.txt" <<'EOF'
input 1 28 28
conv1 = conv2d(1, 4, 3)
relu
conv2 = conv2d(4, 4, 3)
relu
maxpool2d(2)
flatten
fc1 = linear(576, 16)
relu
fc2 = linear(16, 10)
EOF
MODEL=$WORK/model.txt
mkdir -p "$WORK/data"
make_idx "$WORK/data" 502 5
STEPS=12 # 10 batches of 50, one of 2, then the first of epoch 2
TRAIN_FLAGS="--batch-size 50 --steps $STEPS --seed 11 --log-every 1"

# The seeded initial weights (a run that does not move them).
"$FROST" train --model "$MODEL" --data "$WORK/data" --steps 1 --lr 0 --seed 11 \
    --save "$WORK/init.safetensors" > "$WORK/init.out" 2>&1
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/init.out"
ok $status "the test model trains; a run with --lr 0 writes the seeded initial weights"

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
    "$PYTHON3" "$WORK/compare.py" "$WORK/$name.t1.dir" "$WORK/init.safetensors" \
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
"$PYTHON3" "$WORK/compare.py" "$WORK/sgd.t1.dir" "$WORK/init.safetensors" "$WORK/omp.dir" \
    > "$WORK/omp.cmp"
[ "$(grep -c '^omp [a-z]* 0 ' "$WORK/omp.cmp")" -eq 2 ]
ok $? "OMP_NUM_THREADS=3 gives --threads 1's losses and weights within 1e-5 relative ($(grep '^omp' "$WORK/omp.cmp" | cut -d' ' -f4- | tr '\n' ' '))"

done_testing
