#!/usr/bin/python3
"""memory.py - peak memory of frost against PyTorch on one model, by thread count (bench/memory.sh).

The model is issue 13's MLP (bench/mlp4096.txt: 784-4096-4096-4096-10, 36.8M parameters), batch
64, SGD lr 0.01 momentum 0.9, trained for a few steps on Fashion-MNIST by both: frost train, and
bench/torch_worker.py (the same layers and parameter names in an nn.Sequential). Both hold the
60000 training images in memory as floats (188 MB); frost also reads the test split, which it
gets cut to 512 samples (1.6 MB), as in bench/run.sh. Peak memory is the child's maximum resident
set size from wait4(), what `/usr/bin/time -v` prints as "Maximum resident set size". frost's
summary line adds where its memory went (weights, gradients, optimizer state, activations,
dataset, feature cache). See bench/README.md.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (prepare_data, find_frost, probe_torch, loadavg, cpu_model)

MODEL_FILE = os.path.join(HERE, "mlp4096.txt")
MLP4096 = [["linear", "fc1", 784, 4096], ["relu"], ["linear", "fc2", 4096, 4096], ["relu"],
           ["linear", "fc3", 4096, 4096], ["relu"], ["linear", "fc4", 4096, 10]]
CASES = {"full": ([], []), "frozen": (["--freeze", "fc1", "--freeze", "fc2"], ["fc1", "fc2"])}


def run_measured(cmd, env, timeout):
    """Run cmd and reap it with os.wait4: (exit status, stdout, stderr, peak RSS MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, universal_newlines=True)
        timer = threading.Timer(timeout, lambda: os.kill(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), usage.ru_maxrss / 1024.0


def frost_run(args, frost, data, threads, flags):
    cmd = [frost, "train", "--model", MODEL_FILE, "--data", data, "--batch-size", str(args.batch),
           "--steps", str(args.steps), "--log-every", str(args.steps), "--threads", str(threads),
           "--lr", "0.01", "--momentum", "0.9", "--no-pin"] + flags
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    rc, out, err, rss = run_measured(cmd, env, args.timeout)
    if rc != 0:
        return {"error": "frost exit %d: %s" % (rc, bench.last_line(err or out, rc))}
    res = {"rss": rss}
    m = re.search(r"^memory: weights ([0-9.]+) MB, gradients ([0-9.]+) MB, optimizer state "
                  r"([0-9.]+) MB, activations ([0-9.]+) MB, dataset ([0-9.]+) MB, feature cache "
                  r"([0-9.]+) MB; ([0-9.]+) MB in all", out, re.M)
    if m:
        for k, key in enumerate(("weights", "gradients", "optimizer", "activations", "dataset",
                                 "cache", "held")):
            res[key] = float(m.group(k + 1))
    return res


def torch_run(args, data, threads, frozen):
    cmd = [args.python, os.path.join(HERE, "torch_worker.py"), "--model", json.dumps(MLP4096),
           "--frozen", ",".join(frozen), "--data", data, "--batch-size", str(args.batch),
           "--steps", str(args.steps), "--log-every", str(args.steps), "--threads", str(threads),
           "--lr", "0.01", "--momentum", "0.9"]
    t = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    rc, out, err, rss = run_measured(cmd, env, args.timeout)
    if rc != 0:
        return {"error": "torch exit %d: %s" % (rc, bench.last_line(err or out, rc))}
    return {"rss": rss}


def main():
    ap = argparse.ArgumentParser(prog="bench/memory.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--frost", help="the frost command (as bench/run.sh finds it)")
    ap.add_argument("--threads", default="1,2,4,8", help="thread counts (%(default)s)")
    ap.add_argument("--cases", default="full,frozen",
                    help="full (all trainable) and/or frozen (--freeze fc1 --freeze fc2)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--data", default=os.environ.get("DATA", bench.DEFAULT_DATA))
    ap.add_argument("--python", default="/usr/bin/python3", help="PyTorch's interpreter")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--timeout", type=int, default=1200)
    args = ap.parse_args()
    frost = bench.find_frost(args.frost)
    if not frost:
        sys.exit("memory: no frost command found (build it, or --frost PATH)")
    threads = [int(t) for t in args.threads.split(",")]
    cases = args.cases.split(",")
    for c in cases:
        if c not in CASES:
            sys.exit("memory: unknown case %s (full, frozen)" % c)
    torch_version = None
    if not args.no_torch:
        torch_version, _, why = bench.probe_torch(args.python)
        if not torch_version:
            bench.log("memory: no PyTorch (%s); its column shows -" % why)
    start_load = bench.loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="frost-memory.") as work:
        data = bench.prepare_data(args.data, work)
        for case in cases:
            flags, frozen = CASES[case]
            for t in threads:
                bench.log("memory: %s, %d thread(s): frost" % (case, t))
                f = frost_run(args, frost, data, t, flags)
                p = None
                if torch_version:
                    bench.log("memory: %s, %d thread(s): torch" % (case, t))
                    p = torch_run(args, data, t, frozen)
                rows.append((case, t, f, p))
    print("Peak memory (MiB, max RSS from wait4 as `/usr/bin/time -v` reports it), %s, model "
          "bench/mlp4096.txt (36,818,954 parameters), batch %d, SGD momentum, %d steps; %s, "
          "%d cores; torch %s; load average %s at the start, %s at the end.\n"
          % (frost, args.batch, args.steps, bench.cpu_model(), bench.usable_cores(),
             torch_version or "-", start_load, bench.loadavg()))
    print("| trained | threads | frost peak MB | x 1 thread | torch peak MB | frost/torch | frost "
          "weights | gradients | optimizer | activations | dataset |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one = {}
    for case, t, f, p in rows:
        what = "all" if case == "full" else "fc3, fc4"
        if "error" in f:
            print("| %s | %d | %s | | | | | | | | |" % (what, t, f["error"]))
            continue
        one.setdefault(case, f["rss"])
        torch_ok = p is not None and "error" not in p
        torch_mb = "%.0f" % p["rss"] if torch_ok else p["error"] if p else "-"
        ratio = "%.2f" % (f["rss"] / p["rss"]) if torch_ok else "-"
        parts = ["%.1f" % f[k] if k in f else "?" for k in
                 ("weights", "gradients", "optimizer", "activations", "dataset")]
        print("| %s | %d | %.0f | %.3f | %s | %s | %s |" % (what, t, f["rss"], f["rss"] / one[case],
                                                            torch_mb, ratio, " | ".join(parts)))
    return 1 if any("error" in f for _, _, f, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
