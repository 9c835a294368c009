"""compare_runs.py - do runs of frost train agree with a reference run?

Used by tests/threads.sh and tests/mpi_layouts.sh.

compare_runs.py REF INIT RUN...: REF and each RUN are directories holding m.csv
(--metrics) and w.safetensors (--save); INIT holds the initial weights.  For
each RUN it prints two lines, "LABEL losses STATUS DETAIL" and "LABEL weights
STATUS DETAIL" (LABEL: the directory's name less ".dir"; STATUS 0 when it
holds), then "- unchanged 0 NAMES": the tensors REF left bit-identical to INIT.
  losses:  the same (step, epoch) rows, each loss within 1e-5 relative of
           REF's (plus 1e-6, the CSV's print resolution);
  weights: the same tensors and shapes, each within 1e-5 of REF's relative
           to the tensor's largest magnitude (max|a-b| <= 1e-5 max|a|:
           element-wise relative error means nothing for weights near 0),
           and the tensors REF left bit-identical to INIT (the frozen ones)
           bit-identical here too.
Only the standard library: the safetensors header is JSON, the data F32 (and
I64 for BatchNorm's num_batches_tracked).
"""
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
        if t["dtype"] not in ("F32", "I64"):
            raise ValueError("%s: %s is %s, not F32 or I64" % (path, name, t["dtype"]))
        a, b = t["data_offsets"]
        if t["dtype"] == "I64":  # BatchNorm's num_batches_tracked
            out[name] = (t["shape"], struct.unpack("<%dq" % ((b - a) // 8), data[a:b]))
        else:
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
