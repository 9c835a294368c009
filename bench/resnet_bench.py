#!/usr/bin/python3
"""resnet_bench.py - frost against PyTorch on torchvision's resnet18 (run it through bench/resnet.sh).

examples/resnet18.txt (torchvision's resnet18, 1000 classes) with its input line set to 3xSxS,
trained on random float32 images with random labels, SGD with momentum 0.9, lr 0.01, by
`frost train` and by torchvision.models.resnet18() in PyTorch, the same threads on both sides.
Three cases for each image size and batch (--configs S/B,...):

  full     everything trained
  frozen   conv1, bn1, layer1-layer3 frozen, layer4 and fc trained (`--freeze '*' --unfreeze
           'layer4*' --unfreeze fc`); frost with --no-cache; PyTorch with requires_grad False
           and the frozen BatchNorms in eval mode (frost's frozen BatchNorm)
  cache    the same frozen set, frost with its feature cache, timed over epochs 2+ only;
           compared with the PyTorch runs of `frozen` (PyTorch has no cache)

Each repetition runs frost, then PyTorch in each --torch variant (as shipped; with
OMP_WAIT_POLICY=PASSIVE; in channels_last), one after the other, so the machine's load hits all of
them alike; a rate is the median over every run's timed intervals (the first interval of a run is
warm-up). Peak RSS is each child's ru_maxrss from wait4 (what /usr/bin/time -v prints); CPU is the
child's user + system seconds over its wall seconds (the cores it got).

`resnet_bench.py --worker ...` is the PyTorch side: one run, one JSON line on stdout.
See bench/README.md (*resnet18*).
"""
import argparse
import csv
import datetime
import fnmatch
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODEL = os.path.join(REPO, "examples", "resnet18.txt")
CLASSES = 1000
sys.path.insert(0, HERE)
import bench  # noqa: E402  (bench.py's helpers: sgemm, frost lookup, load average, ...)

FROZEN = ["*"]
TRAINED = ["layer4*", "fc"]
CASES = {
    "full": {"title": "all trained", "freeze": [], "unfreeze": [], "frost_flags": []},
    "frozen": {"title": "trunk frozen up to layer4 (no cache)", "freeze": FROZEN,
               "unfreeze": TRAINED, "frost_flags": ["--no-cache"]},
    "cache": {"title": "trunk frozen, epochs 2+ with the feature cache", "freeze": FROZEN,
              "unfreeze": TRAINED, "frost_flags": []},
}
TORCH_VARIANTS = {
    "unset": {"title": "torch", "env": {}, "channels_last": False},
    "passive": {"title": "torch PASSIVE", "env": {"OMP_WAIT_POLICY": "PASSIVE"},
                "channels_last": False},
    "cl": {"title": "torch channels_last", "env": {}, "channels_last": True},
    "cl-passive": {"title": "torch channels_last PASSIVE", "env": {"OMP_WAIT_POLICY": "PASSIVE"},
                   "channels_last": True},
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def trainable(name, case):
    """A parameter (or module) name is trained when no --freeze pattern matches it, or an
    --unfreeze pattern after it does (frost's rule; a block name freezes what is inside it)."""
    def hit(pattern):
        return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")
    state = True
    for p in case["freeze"]:
        if hit(p):
            state = False
    for p in case["unfreeze"]:
        if hit(p):
            state = True
    return state


# ------------------------------------------------------------------ FLOPs

def resnet18_layers(side):
    """torchvision's resnet18 on 3 x side x side as a list of blocks: each block a list of
    (name, forward FLOPs per image) for its body and one for its shortcut; a stem and the head
    are blocks without a shortcut.  Matrix products only: conv 2*Cin*k*k*Cout*OH*OW, linear
    2*in*out; BatchNorm, ReLU, pooling, the residual adds and the loss count 0."""
    h = side

    def conv(name, cin, cout, k, stride, pad, size):
        out = (size + 2 * pad - k) // stride + 1
        return (name, 2 * cin * k * k * cout * out * out), out

    stem, h = conv("conv1", 3, 64, 7, 2, 3, h)
    h = (h + 2 - 3) // 2 + 1  # maxpool 3, stride 2, padding 1
    blocks = [([stem], None)]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512), 1):
        for j in range(2):
            stride = 2 if i > 1 and j == 0 else 1
            name = "layer%d.%d" % (i, j)
            c1, h1 = conv(name + ".conv1", cin, cout, 3, stride, 1, h)
            c2, _ = conv(name + ".conv2", cout, cout, 3, 1, 1, h1)
            short = None
            if stride != 1 or cin != cout:
                short = [conv(name + ".downsample.0", cin, cout, 1, stride, 0, h)[0]]
            blocks.append(([c1, c2], short))
            cin, h = cout, h1
    blocks.append(([("fc", 2 * 512 * CLASSES)], None))
    return blocks


def step_flops(blocks, case, skip_prefix=False):
    """FLOPs per image of one training step, as bench.py counts them: every layer's forward
    (none for the frozen prefix when skip_prefix: the feature cache serves its output), the
    weight gradient of a trained layer (the same FLOPs again), the input gradient (again) of a
    layer with a trained layer before it; a block's body and shortcut both read the block's
    input, so a shortcut's "before" is what precedes the block."""
    total, behind, started = 0, False, False
    for body, short in blocks:
        at_start = behind
        names = [n for n, _ in body] + [n for n, _ in (short or [])]
        if any(trainable(n + ".weight", case) for n in names):
            started = True
        for branch in (body, short or []):
            b = at_start
            for name, flops in branch:
                t = trainable(name + ".weight", case)
                if started or not skip_prefix:
                    total += flops
                total += flops * (int(t) + int(b))
                b = b or t
                behind = behind or b
    return total


# ------------------------------------------------------------------ data

def make_data(directory, side, rows, test_rows, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", rows), ("test", test_rows)):
        x = rng.random((n, 3, side, side), dtype=np.float32)
        y = rng.integers(0, CLASSES, size=n).astype(np.int64)
        np.save(os.path.join(directory, split + "_x.npy"), x)
        np.save(os.path.join(directory, split + "_y.npy"), y)


def model_file(work, side):
    path = os.path.join(work, "resnet18-%d.txt" % side)
    with open(MODEL) as f:
        text = f.read()
    text = re.sub(r"(?m)^input 3 224 224$", "input 3 %d %d" % (side, side), text)
    with open(path, "w") as f:
        f.write(text)
    return path


# ------------------------------------------------------------------ runs

def run_frost(args, frost, case, model, data_dir, batch, steps, log_every, timed_from, work,
              tag):
    metrics = os.path.join(work, "frost-%s.csv" % tag)
    cmd = [frost, "train", "--model", model, "--data", data_dir, "--optimizer", "sgd",
           "--lr", "0.01", "--momentum", "0.9", "--batch-size", str(batch),
           "--threads", str(args.threads), "--steps", str(steps), "--log-every", str(log_every),
           "--metrics", metrics]
    for p in case["freeze"]:
        cmd += ["--freeze", p]
    for p in case["unfreeze"]:
        cmd += ["--unfreeze", p]
    cmd += case["frost_flags"] + args.frost_arg
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rc, out, rss, cpu, wall = bench.run_measured(cmd, env, os.path.join(work, "frost-%s.log" % tag),
                                           args.timeout)
    if rc != 0:
        return {"error": "frost exit %d: %s" % (rc, bench.last_line(out, rc))}
    rows, loss = [], None
    with open(metrics) as f:
        for row in csv.DictReader(f):
            rows.append((int(row["step"]), float(row["samples_per_s"])))
            loss = float(row["loss"])
    m = re.search(r"trainable ([0-9]+)", out)
    cache = re.search(r"feature cache: ([0-9.]+) MB", out)
    return {"rates": bench.timed_rates(rows, log_every, timed_from), "all_rates": [r for _, r in rows],
            "maxrss_mb": rss, "cpu_s": cpu, "wall_s": wall, "loss": loss,
            "trainable": int(m.group(1)) if m else None,
            "cache_mb": float(cache.group(1)) if cache else 0.0, "command": " ".join(cmd)}


def run_torch(args, case, side, data_dir, batch, steps, log_every, work, tag, variant):
    v = TORCH_VARIANTS[variant]
    cmd = [args.python, os.path.abspath(__file__), "--worker", "--data", data_dir,
           "--side", str(side), "--steps", str(steps), "--log-every", str(log_every),
           "--batch-size", str(batch), "--threads", str(args.threads), "--case", case]
    if v["channels_last"]:
        cmd.append("--channels-last")
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
               **v["env"])
    rc, out, rss, cpu, wall = bench.run_measured(
        cmd, env, os.path.join(work, "torch-%s-%s.log" % (tag, variant)), args.timeout)
    if rc != 0:
        return {"error": "torch exit %d: %s" % (rc, bench.last_line(out, rc))}
    try:
        res = json.loads(bench.last_line(out))
    except ValueError:
        return {"error": "torch: unreadable result: %s" % bench.last_line(out)}
    rows = list(zip(res["steps"], res["interval_rates"]))
    res["rates"] = bench.timed_rates(rows, log_every, 0)
    res["all_rates"] = res["interval_rates"]
    res.update(maxrss_mb=rss, cpu_s=cpu, wall_s=wall, command=" ".join(cmd))
    return res


# ------------------------------------------------------------------ PyTorch worker

def worker(argv):
    ap = argparse.ArgumentParser(prog="resnet_bench.py --worker")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--data", required=True)
    ap.add_argument("--side", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--log-every", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--case", choices=sorted(CASES), required=True)
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    import torchvision
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    case = CASES[a.case]
    model = torchvision.models.resnet18(num_classes=CLASSES)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, case))
    trained = [p for p in model.parameters() if p.requires_grad]
    model.train()
    # A frozen BatchNorm normalizes with its running statistics, as frost's does.
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not trainable(name + ".weight", case):
            m.eval()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(trained, lr=0.01, momentum=0.9)
    x = torch.from_numpy(np.load(os.path.join(a.data, "train_x.npy")))
    y = torch.from_numpy(np.load(os.path.join(a.data, "train_y.npy")))
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(x.shape[0], generator=gen)
    steps, rates, loss, at = [], [], None, 0
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        if at + a.batch_size > x.shape[0]:  # a new epoch, a new order (as frost shuffles)
            order, at = torch.randperm(x.shape[0], generator=gen), 0
        index = order[at:at + a.batch_size]
        at += a.batch_size
        batch = x.index_select(0, index).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        out = model(batch)
        loss = torch.nn.functional.cross_entropy(out, y.index_select(0, index))
        loss.backward()
        opt.step()
        loss = loss.item()
        if step % a.log_every == 0 or step == a.steps:
            t = time.perf_counter()
            done = a.log_every if step % a.log_every == 0 else step % a.log_every
            steps.append(step)
            rates.append(done * a.batch_size / (t - t0))
            t0 = t
    print(json.dumps({"steps": steps, "interval_rates": rates, "loss": loss,
                      "trainable": sum(p.numel() for p in trained),
                      "version": torch.__version__}))
    return 0


# ------------------------------------------------------------------ main

def median(xs):
    return statistics.median(xs) if xs else None


def pooled(results):
    return median([r for res in results if "error" not in res for r in res["rates"]])


def parse_configs(text):
    configs = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*([0-9]+)/([0-9]+)\s*", item)
        if not m:
            raise ValueError("config %r is not SIDE/BATCH" % item)
        configs.append((int(m.group(1)), int(m.group(2))))
    return configs


def main():
    if "--worker" in sys.argv[1:]:
        return worker(sys.argv[1:])
    ap = argparse.ArgumentParser(
        prog="bench/resnet.sh",
        description="frost vs PyTorch training torchvision's resnet18 on random images "
                    "(see bench/README.md, *resnet18*)")
    ap.add_argument("--frost", help="the frost command (default: $FROST, <repo>/src/frost, ...)")
    ap.add_argument("--threads", type=int, default=2, help="threads on both sides (%(default)s)")
    ap.add_argument("--configs", default="112/16,112/64,224/16,224/64",
                    help="image side / batch pairs, comma-separated (%(default)s)")
    ap.add_argument("--cases", default="full,frozen,cache", help="which cases (%(default)s)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="repetitions of each case, each side in turn (%(default)s)")
    ap.add_argument("--intervals", type=int, default=4,
                    help="intervals per run of full and frozen, the first warm-up (%(default)s)")
    ap.add_argument("--images-per-interval", type=int, default=48,
                    help="an interval is the fewest whole steps holding this many images "
                         "(%(default)s)")
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs of the cache run (each 2 intervals), the first untimed "
                         "(%(default)s)")
    ap.add_argument("--torch", default="unset,passive",
                    help="PyTorch variants, each run every repetition: unset (as shipped), "
                         "passive (OMP_WAIT_POLICY=PASSIVE), cl (channels_last), cl-passive "
                         "(%(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 112/16 only, 1 repetition, 3 intervals, 2 epochs")
    ap.add_argument("--no-torch", action="store_true", help="frost only")
    ap.add_argument("--frost-arg", action="append", default=[],
                    help="one more argument for every frost train (repeatable)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="Python with torch, torchvision and numpy (%(default)s)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler for bench/sgemm.c")
    ap.add_argument("--output", help="also write the report (markdown) to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.repeat, args.intervals, args.epochs = "112/16", 1, 3, 2
    try:
        configs = parse_configs(args.configs)
    except ValueError as e:
        ap.error(str(e))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error("unknown case %r (have %s)" % (c, ", ".join(CASES)))
    variants = [] if args.no_torch else [v.strip() for v in args.torch.split(",") if v.strip()]
    for v in variants:
        if v not in TORCH_VARIANTS:
            ap.error("unknown PyTorch variant %r (have %s)" % (v, ", ".join(TORCH_VARIANTS)))
    if args.intervals < 2 or args.epochs < 2:
        ap.error("--intervals and --epochs must be at least 2 (the first is warm-up)")
    frost = bench.find_frost(args.frost)
    if not frost:
        ap.error("no frost command found; build it (./configure && make) or pass --frost PATH")

    work = tempfile.mkdtemp(prefix="frost-resnet-bench.")
    started, load_start = time.time(), bench.loadavg()
    notes, details, rows = [], [], []
    try:
        sgemm_best = None
        exe, why = bench.build_sgemm(work, args.cc)
        if exe:
            sgemm_best, sgemm_median, why = bench.measure_sgemm(exe, 30)
        if why:
            notes.append("sgemm limit not measured (%s)." % why)
        else:
            log("sgemm: %.1f GFLOP/s per core (best; median %.1f)" % (sgemm_best, sgemm_median))
        torch_version = None
        if variants:
            torch_version, _, why = bench.probe_torch(args.python)
            if not torch_version:
                notes.append("PyTorch skipped: %s" % why)
                variants = []
        frost_cmds = []
        for side, batch in configs:
            log_every = max(1, -(-args.images_per_interval // batch))
            rows_n = 2 * log_every * batch  # an epoch: two intervals
            data_dir = os.path.join(work, "data-%d-%d" % (side, batch))
            make_data(data_dir, side, rows_n, batch, seed=side + batch)
            model = model_file(work, side)
            blocks = resnet18_layers(side)
            groups = []
            if "full" in cases:
                groups.append(["full"])
            if "frozen" in cases or "cache" in cases:
                groups.append([c for c in ("frozen", "cache") if c in cases])
            for group in groups:
                torch_case = group[0] if group[0] == "full" else "frozen"
                fr = {c: [] for c in group}
                th = {v: [] for v in variants}
                for r in range(args.repeat):
                    for c in group:
                        if c == "cache":
                            steps, timed_from = args.epochs * 2 * log_every, 2 * log_every
                        else:
                            steps, timed_from = args.intervals * log_every, 0
                        tag = "%d-%d-%s-%d" % (side, batch, c, r)
                        log("[%d/%d %s %d/%d] frost: %d steps" % (side, batch, c, r + 1,
                                                                   args.repeat, steps))
                        res = run_frost(args, frost, CASES[c], model, data_dir, batch, steps,
                                        log_every, timed_from, work, tag)
                        fr[c].append(res)
                        log("  %s" % (res.get("error") or "%s samples/s, %.0f MB" % (
                            ["%.1f" % x for x in res["all_rates"]], res["maxrss_mb"])))
                        if c != group[0]:
                            continue
                        for v in variants:
                            steps = args.intervals * log_every
                            log("[%d/%d %s %d/%d] %s: %d steps" % (
                                side, batch, c, r + 1, args.repeat, TORCH_VARIANTS[v]["title"],
                                steps))
                            res = run_torch(args, torch_case, side, data_dir, batch, steps,
                                            log_every, work, tag, v)
                            th[v].append(res)
                            log("  %s" % (res.get("error") or "%s samples/s, %.0f MB" % (
                                ["%.1f" % x for x in res["all_rates"]], res["maxrss_mb"])))
                for c in group:
                    f_ok = [x for x in fr[c] if "error" not in x]
                    frost_cmds += [x["command"] for x in f_ok[:1]]
                    for x in fr[c]:
                        if "error" in x:
                            notes.append("%d/%d %s: %s" % (side, batch, c, x["error"]))
                    for v, xs in th.items():
                        for x in xs:
                            if "error" in x:
                                notes.append("%d/%d %s, %s: %s" % (
                                    side, batch, c, TORCH_VARIANTS[v]["title"], x["error"]))
                    t_ok = {v: [x for x in xs if "error" not in x] for v, xs in th.items()}
                    f_train = {x["trainable"] for x in f_ok}
                    t_train = {x["trainable"] for xs in t_ok.values() for x in xs}
                    if f_train and t_train and f_train != t_train:
                        notes.append("%d/%d %s: frost trains %s parameters, PyTorch %s" % (
                            side, batch, c, sorted(f_train), sorted(t_train)))
                    t_sps = {v: pooled(xs) for v, xs in t_ok.items()}
                    flops = step_flops(blocks, CASES[c], skip_prefix=(c == "cache"))
                    # one thread's CPU seconds per image: CPU time over the images of the run
                    rows.append({
                        "config": "3x%dx%d, batch %d" % (side, side, batch), "case": c,
                        "frost": pooled(fr[c]), "torch": t_sps,
                        "best": max([s for s in t_sps.values() if s], default=None),
                        "flops": flops,
                        "torch_flops": step_flops(blocks, CASES[torch_case]),
                        "frost_mb": max([x["maxrss_mb"] for x in f_ok], default=None),
                        "torch_mb": max([x["maxrss_mb"] for xs in t_ok.values() for x in xs],
                                        default=None),
                        "frost_cores": median([x["cpu_s"] / x["wall_s"] for x in f_ok]),
                        "torch_cores": median([x["cpu_s"] / x["wall_s"]
                                               for xs in t_ok.values() for x in xs])})
                    details.append("- 3x%dx%d, batch %d, %s%s:" % (
                        side, side, batch, CASES[c]["title"],
                        " (timed from epoch 2; %.1f MB cached)" % f_ok[0]["cache_mb"]
                        if c == "cache" and f_ok else ""))
                    for r, x in enumerate(fr[c]):
                        details.append(run_line("frost, run %d" % (r + 1), x))
                        if c == group[0]:
                            for v, xs in th.items():
                                if r < len(xs):
                                    details.append(run_line("%s, run %d" % (
                                        TORCH_VARIANTS[v]["title"], r + 1), xs[r]))
        if exe and sgemm_best:
            best2, _, _ = bench.measure_sgemm(exe, 30)
            if best2:
                log("sgemm again: %.1f GFLOP/s per core" % best2)
                sgemm_best = max(sgemm_best, best2)
    finally:
        if args.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    report = render(args, frost, torch_version, variants, rows, notes, details, frost_cmds,
                    sgemm_best, load_start, started)
    sys.stdout.write(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return 1 if any(r["frost"] is None for r in rows) else 0


def run_line(side, x):
    if "error" in x:
        return "  - %s: %s" % (side, x["error"])
    return "  - %s: %s samples/s, %.0f s wall, %.0f s CPU (%.2f cores), %.0f MB, last loss %.4f" % (
        side, ", ".join("%.1f" % v for v in x["all_rates"]), x["wall_s"], x["cpu_s"],
        x["cpu_s"] / x["wall_s"], x["maxrss_mb"], x["loss"])


def render(args, frost, torch_version, variants, rows, notes, details, frost_cmds, sgemm,
           load_start, started):
    fmt = bench.fmt
    limit = args.threads * sgemm * 1e9 if sgemm else None
    lines = ["# frost vs PyTorch, torchvision's resnet18 on random images, SGD momentum 0.9", ""]
    lines.append("%s | %s | %d cores | %d threads | sgemm %s GFLOP/s per core (OpenBLAS, 1024^3, "
                 "1 thread%s) | load average %s at start, %s at end | %.0f s in all" % (
                     datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), bench.cpu_model(),
                     bench.usable_cores(), args.threads, fmt(sgemm, ".1f"),
                     ", OPENBLAS_CORETYPE=" + os.environ["OPENBLAS_CORETYPE"]
                     if os.environ.get("OPENBLAS_CORETYPE") else "",
                     load_start, bench.loadavg(), time.time() - started))
    lines += ["", "frost %s, PyTorch %s; %d repetition(s)" % (
        frost, torch_version or "n/a", args.repeat), ""]
    header = ["input, batch", "case", "frost samples/s"]
    header += ["%s samples/s" % TORCH_VARIANTS[v]["title"] for v in variants]
    header += ["frost/best torch", "GFLOP/image", "sgemm-limit samples/s", "frost % of limit",
               "best torch % of limit", "frost cores", "torch cores", "frost MB", "torch MB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for r in rows:
        cells = [r["config"], CASES[r["case"]]["title"], fmt(r["frost"], ".1f")]
        cells += [fmt(r["torch"].get(v), ".1f") for v in variants]
        cells.append(fmt(r["frost"] / r["best"], ".2f") if r["frost"] and r["best"] else "-")
        cells.append("%.2f" % (r["flops"] / 1e9))
        cells.append(fmt(limit / r["flops"], ".1f") if limit else "-")
        cells.append(fmt(100.0 * r["frost"] * r["flops"] / limit, ".1f") + "%"
                     if limit and r["frost"] else "-")
        cells.append(fmt(100.0 * r["best"] * r["torch_flops"] / limit, ".1f") + "%"
                     if limit and r["best"] else "-")
        cells += [fmt(r["frost_cores"], ".2f"), fmt(r["torch_cores"], ".2f"),
                  fmt(r["frost_mb"], ".0f"), fmt(r["torch_mb"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "samples/s: median over every timed interval of the repetitions. The cache "
              "row's PyTorch columns are the frozen row's runs (PyTorch has no cache); its "
              "GFLOP/image leaves out the cached prefix's forward, and the torch % uses the "
              "frozen row's FLOPs. GFLOP/image: matrix products of one step (forward; weight "
              "gradient of trained layers; input gradient of layers with a trained layer before "
              "them). sgemm-limit samples/s: threads x sgemm per core / FLOP per image. cores: "
              "user + system CPU seconds over wall seconds of the whole process (median of the "
              "runs), the share of the machine it got. MB: peak RSS (wait4 ru_maxrss; the "
              "largest of the runs)."]
    if frost_cmds:
        lines += ["", "frost's commands (first run of each row): "] + [
            "- `%s`" % c for c in frost_cmds]
    if notes:
        lines += ["", "Notes:"] + ["- " + n for n in notes]
    lines += ["", "Runs in the order they ran: samples/s per interval (the first of a run is "
              "warm-up; the cache row's epoch 1 is untimed), wall and CPU seconds, peak RSS, "
              "the last step's loss."] + details
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
