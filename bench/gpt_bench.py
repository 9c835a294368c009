#!/usr/bin/python3
"""gpt_bench.py - frost against PyTorch on a byte-level GPT (run it through bench/gpt.sh).

The network of examples/gpt_bytes.txt (vocabulary 256, 6 blocks of width 384, 6 heads, 128
positions), written once as a Hugging Face model directory (config.json, model.safetensors) by
tests/torch_gpt2.py make-model and trained from those same weights on the same token rows by
`frost train --model DIR/config.json --init DIR/model.safetensors` and by tests/torch_gpt2.py's
GPT2 module (plain PyTorch, Hugging Face's eager GPT-2), AdamW on both sides. Three cases:

  full     everything trained
  frozen   wte, wpe (and so the tied head) and h.0-h.4 frozen, h.5 and ln_f trained;
           frost with --no-cache
  cache    the same frozen set, frost with its feature cache, timed over epochs 2+ only;
           compared with the PyTorch runs of `frozen` (PyTorch has no cache), which run
           between the two frost runs of each repetition
  lora     LoRA r 8, alpha 16 on every c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj (PEFT's
           semantics: every base parameter frozen); PyTorch with tests/torch_gpt2.py's
           hand-written PEFT LoRA (PEFT is not in Debian)
  lora-bf16  the same with frost's --frozen-dtype bf16, compared with the PyTorch runs of lora

Each repetition runs frost, PyTorch (OMP_WAIT_POLICY as in the environment), PyTorch with
OMP_WAIT_POLICY=PASSIVE, one after the other, so the machine's load hits all of them alike;
the rates are the median over every run's timed intervals (the first interval of a run is
warm-up). Peak RSS is each child's ru_maxrss from wait4, what /usr/bin/time -v prints.

`gpt_bench.py --worker ...` is the PyTorch side: one run, one JSON line on stdout.
See bench/README.md (*The GPT workload*).
"""
import argparse
import csv
import datetime
import importlib.util
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
TOOL = os.path.join(REPO, "tests", "torch_gpt2.py")
sys.path.insert(0, HERE)
import bench  # noqa: E402  (bench.py's helpers: sgemm, frost lookup, load average, ...)

CONFIG = {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_positions": 128, "vocab_size": 256,
          "activation_function": "gelu_new"}
FROZEN = ["wte", "wpe", "h.[0-4].*"]
LORA = {"targets": "c_attn,c_proj,c_fc", "r": 8, "alpha": 16}
LORA_FLAGS = ["--lora", LORA["targets"], "--lora-rank", str(LORA["r"]), "--lora-alpha",
              str(LORA["alpha"])]
CASES = {
    "full": {"title": "fully trainable", "freeze": [], "frost_flags": []},
    "frozen": {"title": "all but the last block frozen (no cache)", "freeze": FROZEN,
               "frost_flags": ["--no-cache"]},
    "cache": {"title": "all but the last block frozen, epochs 2+ with the feature cache",
              "freeze": FROZEN, "frost_flags": []},
    "lora": {"title": "LoRA r 8 on c_attn, c_proj, c_fc (fp32 base)", "freeze": [],
             "lora": True, "frost_flags": LORA_FLAGS},
    "lora-bf16": {"title": "LoRA r 8, frost's base in bf16 (--frozen-dtype bf16)", "freeze": [],
                  "lora": True, "frost_flags": LORA_FLAGS + ["--frozen-dtype", "bf16"]},
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_tool():
    spec = importlib.util.spec_from_file_location("torch_gpt2", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# ------------------------------------------------------------------ FLOPs

def layer_list(cfg, frozen_patterns, matches, lora=None):
    """The network in frost's layer order as (name, forward FLOPs per token, weight-gradient
    FLOPs per token, trainable), the FLOPs those of matrix products only: 2*in*out for conv1d
    and the head, and for attention QK^T and PV over the causal half of the scores,
    2*2*C*(T+1)/2 per token (each query meets (T+1)/2 keys on average).  Layer norms, GELU,
    embeddings, bias and loss are < 1% and count 0.  A layer is trainable when one of its
    parameters is; the tied head follows wte.  With lora ({"r": R}: every conv1d adapted,
    the base frozen) a layer's adapter adds 2*R*(in+out) to its forward and is its weight
    gradient (dA and dB), the frozen base's weight gradient none."""
    C, V, T = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    inner = cfg.get("n_inner") or 4 * C

    def trainable(*names):
        if lora:
            return False
        return any(not any(matches(p, n) for p in frozen_patterns) for n in names)

    def row(name, flops, base_trains):
        return (name, flops, flops if base_trains else 0, base_trains)

    layers = [row("wte", 0, trainable("wte.weight")), row("wpe", 0, trainable("wpe.weight"))]
    for i in range(cfg["n_layer"]):
        h = "h.%d." % i
        for name, n_in, n_out in (("ln_1", 0, 0), ("attn.c_attn", C, 3 * C), ("attn", 0, 0),
                                  ("attn.c_proj", C, C), ("ln_2", 0, 0), ("mlp.c_fc", C, inner),
                                  ("mlp.gelu", 0, 0), ("mlp.c_proj", inner, C)):
            flops = 2 * n_in * n_out if name != "attn" else 2 * C * (T + 1)
            params = [] if name in ("attn", "mlp.gelu") else [h + name + ".weight", h + name + ".bias"]
            if lora and n_in:
                adapter = 2 * lora["r"] * (n_in + n_out)
                layers.append((h + name, flops + adapter, adapter, True))
            else:
                layers.append(row(h + name, flops, bool(params) and trainable(*params)))
    layers.append(row("ln_f", 0, trainable("ln_f.weight", "ln_f.bias")))
    layers.append(row("lm_head", 2 * C * V, trainable("wte.weight")))
    return layers


def step_flops(layers, skip_prefix=False):
    """FLOPs per token of one training step, as bench.py counts them: every layer's forward
    (none for the frozen prefix when skip_prefix: the feature cache serves its output), the
    weight gradient of a trainable layer (its own count: the forward's FLOPs again, or only an
    adapter's), the input gradient (the forward's again) of a layer with a trainable layer
    before it; attention has no weights, its backward is an input gradient of twice its
    forward (dP, dQ, dK, dV)."""
    first = next((i for i, l in enumerate(layers) if l[3]), len(layers))
    total, behind = 0, False
    for i, (name, flops, wgrad, trainable) in enumerate(layers):
        if not (skip_prefix and i < first):
            total += flops
        if name.endswith(".attn"):
            total += 2 * flops if behind else 0
        else:
            total += (wgrad if trainable else 0) + (flops if behind else 0)
        behind = behind or trainable
    return total


# ------------------------------------------------------------------ the job

def write_model_and_data(python, work, rows, test_rows):
    """The benchmark's model directory (CONFIG, tests/torch_gpt2.py make-model, seed 1) and
    token rows of T+1 bytes (make-data, seed 2) under work: (model_dir, data_dir). Also used by
    bench/cluster.py, so that its GPT workloads train this same job."""
    model_dir, data_dir = os.path.join(work, "model"), os.path.join(work, "data")
    for cmd in ([python, TOOL, "make-model", "--config-json", json.dumps(CONFIG),
                 "--out", model_dir, "--seed", "1"],
                [python, TOOL, "make-data", "--out", data_dir, "--vocab",
                 str(CONFIG["vocab_size"]), "--seq", str(CONFIG["n_positions"]), "--rows",
                 str(rows), "--test-rows", str(test_rows), "--seed", "2"]):
        rc, out, err = bench.run_cmd(cmd, timeout=600)
        if rc != 0:
            raise SystemExit("bench: %s failed: %s" % (" ".join(cmd), bench.last_line(err or out)))
    return model_dir, data_dir


def frost_job_flags(model_dir, data_dir):
    """frost train's flags for the model, its initial weights, the data and the optimizer
    (AdamW lr 1e-4, weight decay 0.01, batches in the rows' order): everything of the job but
    the batch size, threads, steps, logging and the case's own flags."""
    return ["--model", os.path.join(model_dir, "config.json"),
            "--init", os.path.join(model_dir, "model.safetensors"), "--data", data_dir,
            "--optimizer", "adamw", "--lr", "1e-4", "--weight-decay", "0.01", "--no-shuffle"]


# ------------------------------------------------------------------ runs

def run_frost(args, frost, case, model_dir, data_dir, steps, log_every, timed_from, work, tag):
    metrics = os.path.join(work, "frost-%s.csv" % tag)
    cmd = [frost, "train"] + frost_job_flags(model_dir, data_dir) + [
           "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--steps", str(steps), "--log-every", str(log_every), "--metrics", metrics]
    for p in case["freeze"]:
        cmd += ["--freeze", p]
    cmd += case["frost_flags"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rc, out, rss, cpu, wall = bench.run_measured(cmd, env, os.path.join(work, "frost-%s.log" % tag),
                                                 args.timeout)
    if rc != 0:
        return {"error": "frost exit %d: %s" % (rc, bench.last_line(out, rc))}
    cores = cpu / wall if wall else None
    rows, loss = [], None
    with open(metrics) as f:
        for row in csv.DictReader(f):
            rows.append((int(row["step"]), float(row["samples_per_s"])))
            loss = float(row["loss"])
    m = re.search(r"trainable ([0-9]+)", out)
    cache = re.search(r"feature cache: ([0-9.]+) MB", out)
    return {"rates": bench.timed_rates(rows, log_every, timed_from), "all_rates": [r for _, r in rows],
            "maxrss_mb": rss, "cores": cores, "loss": loss, "trainable": int(m.group(1)) if m else None,
            "cache_mb": float(cache.group(1)) if cache else 0.0,
            "command": " ".join(cmd)}


def run_torch(args, case, model_dir, data_dir, steps, log_every, work, tag, policy):
    cmd = [args.python, os.path.abspath(__file__), "--worker", "--model-dir", model_dir,
           "--data", data_dir, "--steps", str(steps), "--log-every", str(log_every),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    for p in case["freeze"]:
        cmd += ["--freeze", p]
    if case.get("lora"):
        cmd += ["--lora", LORA["targets"], "--lora-rank", str(LORA["r"]), "--lora-alpha",
                str(LORA["alpha"])]
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    rc, out, rss, cpu, wall = bench.run_measured(cmd, env,
                                                 os.path.join(work, "torch-%s-%s.log" % (tag, policy)),
                                                 args.timeout)
    if rc != 0:
        return {"error": "torch exit %d: %s" % (rc, bench.last_line(out, rc))}
    cores = cpu / wall if wall else None
    try:
        res = json.loads(bench.last_line(out))
    except ValueError:
        return {"error": "torch: unreadable result: %s" % bench.last_line(out)}
    rows = list(zip(res["steps"], res["interval_rates"]))
    res["rates"] = bench.timed_rates(rows, log_every, 0)
    res["all_rates"] = res["interval_rates"]
    res["maxrss_mb"] = rss
    res["cores"] = cores
    return res


# ------------------------------------------------------------------ PyTorch worker

def worker(argv):
    ap = argparse.ArgumentParser(prog="gpt_bench.py --worker")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--log-every", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--freeze", action="append", default=[])
    ap.add_argument("--lora")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    a = ap.parse_args(argv)
    tool = load_tool()
    torch = tool.need_torch()
    torch.set_num_threads(a.threads)
    import numpy as np
    F = torch.nn.functional
    model = tool.load_model(a.model_dir, torch.float32)
    V = model.cfg["vocab_size"]
    if a.lora:
        # PEFT's LoRA as tests/torch_gpt2.py writes it; the whole base frozen.
        torch.manual_seed(1)
        tool.attach_lora(model, tool.select_targets(model, a.lora), a.lora_rank, a.lora_alpha,
                         0.0, False, torch.float32)
        for n, p in model.named_parameters():
            p.requires_grad_(tool.is_lora_name(n))
    named = list(model.named_parameters())
    for pattern in a.freeze:
        hits = [p for n, p in named if tool.matches(pattern, n)]
        if not hits:
            raise SystemExit("--freeze %s matches nothing" % pattern)
        for p in hits:
            p.requires_grad_(False)
    trainable = [p for _, p in named if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    x = torch.from_numpy(np.load(os.path.join(a.data, "train_x.npy")).astype(np.int64))
    model.train()
    rows = x.shape[0]
    steps, rates = [], []
    loss = None
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        # frost --no-shuffle: batch k is rows k*B .. k*B+B-1 of the dataset, wrapping around
        index = (torch.arange(a.batch_size) + (step - 1) * a.batch_size) % rows
        batch = x.index_select(0, index)
        opt.zero_grad(set_to_none=True)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))
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
                      "trainable": sum(p.numel() for p in trainable),
                      "version": torch.__version__}))
    return 0


# ------------------------------------------------------------------ main

def fmt_or(x, spec):
    return "?" if x is None else format(x, spec)


def median(xs):
    return statistics.median(xs) if xs else None


def pooled(results):
    rates = [r for res in results if "error" not in res for r in res["rates"]]
    return median(rates)


def main():
    if "--worker" in sys.argv[1:]:
        return worker(sys.argv[1:])
    ap = argparse.ArgumentParser(
        prog="bench/gpt.sh",
        description="frost vs PyTorch training a byte-level GPT (L6 C384 H6 T128) "
                    "(see bench/README.md, *The GPT workload*)")
    ap.add_argument("--frost", help="the frost command (default: $FROST, <repo>/src/frost, ...)")
    ap.add_argument("--threads", type=int, default=2, help="threads on both sides (%(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per step (%(default)s)")
    ap.add_argument("--rows", type=int, default=320,
                    help="training rows of 129 tokens; an epoch is rows/batch steps (%(default)s)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions of each case, each side in turn (%(default)s)")
    ap.add_argument("--steps", type=int, default=20,
                    help="steps per run of full and frozen (%(default)s)")
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs of the cache run, the first untimed (%(default)s)")
    ap.add_argument("--log-every", type=int, default=4,
                    help="steps per timed interval; the first of a run is warm-up (%(default)s)")
    ap.add_argument("--cases", default="full,frozen,cache,lora,lora-bf16",
                    help="which cases (%(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repetition, 6 steps in intervals of 2, 64 rows")
    ap.add_argument("--no-torch", action="store_true", help="frost only")
    ap.add_argument("--no-torch-passive", action="store_true",
                    help="skip PyTorch's second run with OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="Python with torch and numpy for the model, data and PyTorch side "
                         "(%(default)s)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler for bench/sgemm.c")
    ap.add_argument("--output", help="also write the report (markdown) to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.steps, args.log_every, args.rows = 1, 6, 2, 64
        args.epochs = 2
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error("unknown case %r (have %s)" % (c, ", ".join(CASES)))
    if args.rows % args.batch_size or (args.rows // args.batch_size) % args.log_every:
        ap.error("--rows must be a multiple of --batch-size, and an epoch's steps of --log-every")
    if args.steps < 2 * args.log_every:
        ap.error("--steps must be at least 2 intervals (the first is warm-up)")
    frost = bench.find_frost(args.frost)
    if not frost:
        ap.error("no frost command found; build it (./configure && make) or pass --frost PATH")

    work = tempfile.mkdtemp(prefix="frost-gpt-bench.")
    started, load_start = time.time(), bench.loadavg()
    notes, details, rows = [], [], []
    tool = load_tool()
    try:
        model_dir, data_dir = write_model_and_data(args.python, work, args.rows, args.batch_size)
        T = CONFIG["n_positions"]

        sgemm_best = None
        exe, why = bench.build_sgemm(work, args.cc)
        if exe:
            sgemm_best, sgemm_median, why = bench.measure_sgemm(exe, 10 if args.quick else 30)
        if why:
            notes.append("sgemm limit not measured (%s)." % why)
        else:
            log("sgemm: %.1f GFLOP/s per core (best; median %.1f)" % (sgemm_best, sgemm_median))

        torch_version = None
        if not args.no_torch:
            torch_version, _, why = bench.probe_torch(args.python)
            if not torch_version:
                notes.append("PyTorch skipped: %s" % why)
        policies = ["unset"] + ([] if args.no_torch_passive else ["passive"])

        steps_per_epoch = args.rows // args.batch_size
        results = {}
        # frozen and cache share their PyTorch runs: frost frozen, torch, torch PASSIVE, frost cache
        groups = []
        if "full" in cases:
            groups.append(["full"])
        if "frozen" in cases or "cache" in cases:
            groups.append([c for c in ("frozen", "cache") if c in cases])
        if "lora" in cases or "lora-bf16" in cases:
            groups.append([c for c in ("lora", "lora-bf16") if c in cases])
        for group in groups:
            torch_case = (CASES["full"] if group[0] == "full" else
                          CASES["lora"] if group[0].startswith("lora") else CASES["frozen"])
            fr = {c: [] for c in group}
            th = {p: [] for p in policies}
            for r in range(args.repeat):
                for c in group:
                    if c == "cache":
                        steps, timed_from = args.epochs * steps_per_epoch, steps_per_epoch
                    else:
                        steps, timed_from = args.steps, 0
                    log("[%s %d/%d] frost: %d steps" % (c, r + 1, args.repeat, steps))
                    res = run_frost(args, frost, CASES[c], model_dir, data_dir, steps,
                                    args.log_every, timed_from, work, "%s-%d" % (c, r))
                    fr[c].append(res)
                    log("  %s" % (res.get("error") or "%s samples/s, %.0f MB" % (
                        res["all_rates"], res["maxrss_mb"])))
                    if c == group[0] and torch_version:
                        for p in policies:
                            log("[%s %d/%d] torch (OMP_WAIT_POLICY %s): %d steps" % (
                                c, r + 1, args.repeat, p, args.steps))
                            res = run_torch(args, torch_case, model_dir, data_dir, args.steps,
                                            args.log_every, work, "%s-%d" % (c, r), p)
                            th[p].append(res)
                            log("  %s" % (res.get("error") or "%s samples/s, %.0f MB" % (
                                ["%.1f" % x for x in res["all_rates"]], res["maxrss_mb"])))
            for c in group:
                results[c] = {"frost": fr[c], "torch": th, "lists_torch": c == group[0]}

        for c in cases:
            fr, th = results[c]["frost"], results[c]["torch"]
            errors = [x["error"] for x in fr if "error" in x]
            errors += ["PyTorch (%s): %s" % (p, x["error"]) for p, xs in th.items()
                       for x in xs if "error" in x]
            for e in errors:
                notes.append("%s: %s" % (CASES[c]["title"], e))
            f_sps = pooled(fr)
            t_sps = {p: pooled(xs) for p, xs in th.items() if xs}
            best = max([v for v in t_sps.values() if v], default=None)
            layers = layer_list(CONFIG, CASES[c]["freeze"], tool.matches,
                                LORA if CASES[c].get("lora") else None)
            flops = step_flops(layers, skip_prefix=(c == "cache"))
            f_tok = f_sps * T if f_sps else None
            pct = (100.0 * f_tok * flops / (args.threads * sgemm_best * 1e9)
                   if f_tok and sgemm_best else None)
            f_rss = max([x["maxrss_mb"] for x in fr if x.get("maxrss_mb")], default=None)
            t_rss = max([x["maxrss_mb"] for xs in th.values() for x in xs if x.get("maxrss_mb")],
                        default=None)
            ok = [x for x in fr if "error" not in x]
            f_train = {x["trainable"] for x in ok}
            t_train = {x["trainable"] for xs in th.values() for x in xs if "error" not in x}
            if f_train and t_train and f_train != t_train:
                notes.append("%s: frost trains %s parameters, PyTorch %s" % (
                    CASES[c]["title"], sorted(f_train), sorted(t_train)))
            rows.append({
                "case": CASES[c]["title"], "frost": f_tok,
                "torch": t_sps.get("unset") and t_sps["unset"] * T,
                "passive": t_sps.get("passive") and t_sps["passive"] * T,
                "best": best and best * T, "flops": flops, "pct": pct,
                "frost_mb": f_rss, "torch_mb": t_rss,
                "limit": (args.threads * sgemm_best * 1e9 / flops) if sgemm_best else None})
            def run_line(side, x):
                if "error" in x:
                    return "  - %s: %s" % (side, x["error"])
                return "  - %s: %s, %s cores used, %s MB, last-step loss %.4f" % (
                    side, ", ".join("%.1f" % v for v in x["all_rates"]),
                    fmt_or(x.get("cores"), ".2f"), fmt_or(x.get("maxrss_mb"), ".0f"), x["loss"])
            details.append("- %s%s:" % (CASES[c]["title"], " (timed from epoch 2; %.1f MB cached)"
                                        % ok[0]["cache_mb"] if c == "cache" and ok else ""))
            torch_runs = th if results[c]["lists_torch"] else {}
            for r, x in enumerate(fr):
                details.append(run_line("frost, run %d" % (r + 1), x))
                for p, xs in torch_runs.items():
                    if r < len(xs):
                        details.append(run_line("PyTorch %s, run %d" % (
                            "OMP_WAIT_POLICY=PASSIVE" if p == "passive" else "as shipped", r + 1),
                            xs[r]))
        if exe and sgemm_best:
            best2, _, _ = bench.measure_sgemm(exe, 10 if args.quick else 30)
            if best2:
                log("sgemm again: %.1f GFLOP/s per core" % best2)
                if best2 > sgemm_best:
                    sgemm_best = best2
                    for row in rows:
                        row["pct"] = (100.0 * row["frost"] * row["flops"] /
                                      (args.threads * sgemm_best * 1e9)) if row["frost"] else None
                        row["limit"] = args.threads * sgemm_best * 1e9 / row["flops"]
        frost_cmd = next((x["command"] for c in cases for x in results[c]["frost"]
                          if "command" in x), "-")
    finally:
        if args.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    fmt = bench.fmt
    lines = ["# frost vs PyTorch, byte-level GPT (L6 C384 H6 T128), batch %d, AdamW"
             % args.batch_size, ""]
    lines.append("%s | %s | %d cores | %d threads | sgemm %s GFLOP/s per core (OpenBLAS, 1024^3, "
                 "1 thread%s) | load average %s at start, %s at end | %.0f s in all" % (
                     datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), bench.cpu_model(),
                     bench.usable_cores(), args.threads, fmt(sgemm_best, ".1f"),
                     ", OPENBLAS_CORETYPE=" + os.environ["OPENBLAS_CORETYPE"]
                     if os.environ.get("OPENBLAS_CORETYPE") else "",
                     load_start, bench.loadavg(), time.time() - started))
    lines.append("")
    lines.append("frost %s, PyTorch %s; %d repetition(s); full and frozen %d steps, cache %d "
                 "epochs of %d steps, intervals of %d steps" % (
                     frost, torch_version or "n/a", args.repeat, args.steps, args.epochs,
                     args.rows // args.batch_size, args.log_every))
    lines.append("")
    header = ["case", "frost tokens/s", "torch tokens/s", "torch, PASSIVE", "frost/best torch",
              "MFLOP/token", "sgemm-limit tokens/s", "frost % of sgemm limit", "frost MB",
              "torch MB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        lines.append("| " + " | ".join([
            r["case"], fmt(r["frost"], ".0f"),
            fmt(r["torch"], ".0f") if torch_version else "-",
            fmt(r["passive"], ".0f") if torch_version and "passive" in policies else "-",
            fmt(r["frost"] / r["best"], ".2f") if r["frost"] and r["best"] else "-",
            "%.2f" % (r["flops"] / 1e6), fmt(r["limit"], ".0f"),
            fmt(r["pct"], ".1f") + "%" if r["pct"] is not None else "n/a",
            fmt(r["frost_mb"], ".0f"), fmt(r["torch_mb"], ".0f")]) + " |")
    lines.append("")
    lines.append("tokens/s: median over every timed interval of the repetitions (sequences/s x %d). "
                 "The cache row's PyTorch columns are the frozen row's runs (PyTorch has no cache), the lora-bf16 row's the lora row's. "
                 "MFLOP/token: matrix products of one step (forward; weight gradient of trainable "
                 "layers; input gradient of layers with a trainable layer before them; the cache "
                 "row without the cached prefix's forward). sgemm-limit tokens/s: threads x sgemm "
                 "per core / FLOP per token. MB: peak RSS (wait4 ru_maxrss; the largest of the "
                 "runs)." % T)
    lines.append("")
    lines.append("frost's command (the first run): `%s`" % frost_cmd)
    if notes:
        lines += ["", "Notes:"] + ["- " + n for n in notes]
    lines += ["", "Runs in the order they ran: sequences/s per interval (the first of a run is "
                  "warm-up; the cache row's epoch 1 is untimed), the cores each used on average "
                  "(CPU seconds over wall seconds: the rest of a 2-core share went to the "
                  "machine's other work), peak RSS, and the loss of the last step (the same "
                  "rows in the same order on both sides)."] + details
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return 1 if any(r["frost"] is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
