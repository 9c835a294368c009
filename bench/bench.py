#!/usr/bin/python3
"""bench.py - frost against PyTorch on Fashion-MNIST, side by side (run it through bench/run.sh).

For each workload: frost train and the same model in PyTorch, same threads, same global batch, same
data, same optimizer (SGD lr 0.01 momentum 0.9); both timed over intervals of --log-every steps,
the first interval being warm-up, the median of the others reported. Then a markdown table with
samples/s, the ratio, the FLOPs of one training step per sample, frost's fraction of the sgemm
limit of the machine, and the peak resident memory of both. See bench/README.md.
"""
import argparse
import csv
import datetime
import gzip
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
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
OPENBLAS_INCLUDE = "/usr/include/x86_64-linux-gnu/openblas-pthread"

# ------------------------------------------------------------------ workloads
# A model is a list of layers; bench turns it into frost's inline spec and torch_worker.py into
# a PyTorch module with the same parameter names.  Layers:
#   ["linear", NAME, IN, OUT]               ["conv2d", NAME, IN, OUT, K, STRIDE, PAD[, BIAS]]
#   ["batchnorm2d", NAME, C]                ["relu"]  ["flatten"]  ["maxpool2d", K, STRIDE]
#   ["adaptive_avgpool2d", SIZE]            ["residual", NAME, BODY, SHORTCUT]  (lists of layers;
#                                           names inside are the block's, as in a model file)
MLP = [["linear", "fc1", 784, 1024], ["relu"], ["linear", "fc2", 1024, 1024], ["relu"],
       ["linear", "fc3", 1024, 1024], ["relu"], ["linear", "fc4", 1024, 10]]
# The CNN of DESIGN.md (examples/cnn.txt).
CNN = [["conv2d", "conv1", 1, 32, 3, 1, 0], ["relu"], ["conv2d", "conv2", 32, 64, 3, 1, 0],
       ["relu"], ["maxpool2d", 2, 2], ["flatten"], ["linear", "fc1", 9216, 128], ["relu"],
       ["linear", "fc2", 128, 10]]


def basic_block(cin, cout, stride):
    """torchvision's BasicBlock body: conv1, bn1, relu, conv2, bn2 (3x3, no bias)."""
    return [["conv2d", "conv1", cin, cout, 3, stride, 1, False], ["batchnorm2d", "bn1", cout],
            ["relu"], ["conv2d", "conv2", cout, cout, 3, 1, 1, False],
            ["batchnorm2d", "bn2", cout]]


# examples/resnet_small.txt (frost runs that file; bench checks that it holds these parameters).
RESNET_SMALL = [
    ["conv2d", "conv1", 1, 16, 3, 1, 1, False], ["batchnorm2d", "bn1", 16], ["relu"],
    ["maxpool2d", 2, 2],
    ["residual", "layer1.0", basic_block(16, 16, 1), []], ["relu"],
    ["residual", "layer2.0", basic_block(16, 32, 2),
     [["conv2d", "downsample.0", 16, 32, 1, 2, 0, False], ["batchnorm2d", "downsample.1", 32]]],
    ["relu"], ["adaptive_avgpool2d", 1], ["flatten"], ["linear", "fc", 32, 10]]
RESNET_TRUNK = ["--freeze", "conv1", "--freeze", "bn1", "--freeze", "layer1*"]

# frost_flags: what frost is told; frozen: the layers bench expects frozen (checked against
# `frost inspect` and applied in PyTorch as requires_grad = False).
# steps/log_every: default run; quick: the --quick run.
WORKLOADS = [
    {"id": "1", "name": "MLP 784-1024-1024-1024-10, full", "model": MLP, "batch": 256,
     "frost_flags": [], "frozen": [], "steps": 150, "log_every": 15},
    {"id": "2", "name": "MLP, --freeze fc1 --freeze fc2", "model": MLP, "batch": 256,
     "frost_flags": ["--freeze", "fc1", "--freeze", "fc2"], "frozen": ["fc1", "fc2"],
     "steps": 120, "log_every": 20},
    {"id": "3", "name": "MLP, only fc4 trained", "model": MLP, "batch": 256,
     "frost_flags": ["--freeze", "*", "--unfreeze", "fc4"], "frozen": ["fc1", "fc2", "fc3"],
     "steps": 140, "log_every": 20},
    # Two epochs, so frost's frozen-prefix feature cache is on (it is only used
    # for runs longer than an epoch); its one prefix pass over the data falls in
    # the first, untimed interval.  Fixed length even with --quick.
    {"id": "3c", "name": "MLP, only fc4 trained, 2 epochs (frost's feature cache)", "model": MLP,
     "batch": 256, "frost_flags": ["--freeze", "*", "--unfreeze", "fc4"],
     "frozen": ["fc1", "fc2", "fc3"], "steps": 470, "log_every": 47, "fixed_length": True,
     "cached": True},
    {"id": "4", "name": "CNN (DESIGN.md), full", "model": CNN, "batch": 64,
     "frost_flags": [], "frozen": [], "steps": 100, "log_every": 10},
    {"id": "5", "name": "CNN, --freeze 'conv*'", "model": CNN, "batch": 64,
     "frost_flags": ["--freeze", "conv*"], "frozen": ["conv1", "conv2"],
     "steps": 120, "log_every": 20},
    # The small residual net with BatchNorm of examples/resnet_small.txt: all of it trained, and
    # the trunk (conv1, bn1, layer1.0) frozen as examples/resnet_finetune.sh does, its
    # BatchNorms in eval mode on both sides; torch in channels_last, its faster layout here.
    {"id": "6", "name": "ResNet small (examples/resnet_small.txt), full", "model": RESNET_SMALL,
     "model_file": "examples/resnet_small.txt", "batch": 64, "frost_flags": [], "frozen": [],
     "torch_flags": ["--channels-last"], "steps": 100, "log_every": 10},
    {"id": "7", "name": "ResNet small, trunk frozen (conv1 bn1 layer1*)", "model": RESNET_SMALL,
     "model_file": "examples/resnet_small.txt", "batch": 64, "frost_flags": RESNET_TRUNK,
     "frozen": ["conv1", "bn1", "layer1"], "torch_flags": ["--channels-last"],
     "steps": 120, "log_every": 20},
    # Two epochs at batch 256, so the frozen trunk's output is cached (computed once per sample,
    # in the first, untimed interval).  Fixed length even with --quick.
    {"id": "7c", "name": "ResNet small, trunk frozen, 2 epochs (frost's feature cache)",
     "model": RESNET_SMALL, "model_file": "examples/resnet_small.txt", "batch": 256,
     "frost_flags": RESNET_TRUNK, "frozen": ["conv1", "bn1", "layer1"],
     "torch_flags": ["--channels-last"], "steps": 470, "log_every": 47, "fixed_length": True,
     "cached": True},
]
QUICK_STEPS, QUICK_LOG_EVERY = 15, 5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def frost_spec(layers):
    """The inline model text of a layer list (residual blocks in braces)."""
    def pieces(layers):
        parts = []
        for layer in layers:
            kind = layer[0]
            if kind == "linear":
                parts.append("%s = linear(%d, %d)" % (layer[1], layer[2], layer[3]))
            elif kind == "conv2d":
                name, cin, cout, k, stride, pad = layer[1:7]
                extra = "" if (stride, pad) == (1, 0) else ", stride=%d, padding=%d" % (stride, pad)
                if len(layer) > 7 and not layer[7]:
                    extra += ", bias=False"
                parts.append("%s = conv2d(%d, %d, %d%s)" % (name, cin, cout, k, extra))
            elif kind == "batchnorm2d":
                parts.append("%s = batchnorm2d(%d)" % (layer[1], layer[2]))
            elif kind == "maxpool2d":
                extra = "" if layer[2] == layer[1] else ", %d" % layer[2]
                parts.append("maxpool2d(%d%s)" % (layer[1], extra))
            elif kind == "adaptive_avgpool2d":
                parts.append("adaptive_avgpool2d(%d)" % layer[1])
            elif kind == "residual":
                shortcut = "; shortcut { %s }" % "; ".join(pieces(layer[3])) if layer[3] else ""
                parts.append("residual %s { %s%s }" % (layer[1], "; ".join(pieces(layer[2])),
                                                       shortcut))
            else:
                parts.append(kind)
        return parts
    first = layers[0]
    prefix = "input %d 28 28; " % first[2] if first[0] == "conv2d" else ""
    return prefix + "; ".join(pieces(layers))


def walk(layers, frozen, visit, shape=(1, 28, 28), prefix="", behind=False):
    """Go through a layer list as frost's graph runs it: visit(full name, layer, input shape,
    trainable, gradient wanted at its input) for every linear, conv2d and batchnorm2d, where
    `trainable` is whether its top-level name is not in `frozen` and the gradient at the input is
    wanted when some layer it depends on is trainable.  Returns the output shape and whether some
    layer the output depends on is trainable."""
    c, h, w = shape
    for layer in layers:
        kind = layer[0]
        if kind in ("linear", "conv2d", "batchnorm2d"):
            name = prefix + layer[1]
            trainable = name.split(".")[0] not in frozen
            visit(name, layer, (c, h, w), trainable, behind)
            behind = behind or trainable
            if kind == "linear":
                c, h, w = layer[3], 1, 1
            elif kind == "conv2d":
                k, stride, pad = layer[4:7]
                c, h, w = layer[3], (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif kind == "maxpool2d":
            h, w = (h - layer[1]) // layer[2] + 1, (w - layer[1]) // layer[2] + 1
        elif kind == "adaptive_avgpool2d":
            h = w = layer[1]
        elif kind == "flatten":
            c, h, w = c * h * w, 1, 1
        elif kind == "residual":
            inner = prefix + layer[1] + "."
            out, body = walk(layer[2], frozen, visit, (c, h, w), inner, behind)
            _, skip = walk(layer[3], frozen, visit, (c, h, w), inner, behind)
            (c, h, w), behind = out, body or skip
    return (c, h, w), behind


def param_shapes(layers):
    """[(name, shape)] of the parameters, in frost's (and PyTorch's) order."""
    out = []

    def visit(name, layer, shape, trainable, behind):
        kind = layer[0]
        if kind == "linear":
            out.extend([(name + ".weight", [layer[3], layer[2]]), (name + ".bias", [layer[3]])])
        elif kind == "conv2d":
            out.append((name + ".weight", [layer[3], layer[2], layer[4], layer[4]]))
            if len(layer) <= 7 or layer[7]:
                out.append((name + ".bias", [layer[3]]))
        else:
            out.extend([(name + ".weight", [layer[2]]), (name + ".bias", [layer[2]])])
    walk(layers, set(), visit)
    return out


def step_flops(layers, frozen):
    """FLOPs per sample of one training step as frost computes it (and PyTorch's autograd too):
    forward of every linear/conv, the weight gradient of trainable layers only, and the input
    gradient of a layer only when some layer it depends on is trainable (a frozen prefix gets no
    backward at all). Bias, BatchNorm, ReLU, pooling and loss FLOPs are left out (matrix products
    only)."""
    total = [0]

    def visit(name, layer, shape, trainable, behind):
        c, h, w = shape
        if layer[0] == "linear":
            fwd = 2 * layer[2] * layer[3]
        elif layer[0] == "conv2d":
            k, stride, pad = layer[4:7]
            oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            fwd = 2 * layer[2] * k * k * layer[3] * oh * ow
        else:
            return
        total[0] += fwd * (1 + trainable + behind)   # forward, dW, dX
    walk(layers, frozen, visit)
    return total[0]


# ------------------------------------------------------------------ helpers
def run_cmd(cmd, env=None, timeout=1200):
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out after %d s" % timeout
    except OSError as e:
        return 127, "", str(e)
    return p.returncode, p.stdout, p.stderr


def last_line(text, rc=None):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    if lines:
        return lines[-1].strip()
    return "no output, exit status %s" % rc if rc is not None else ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def find_frost(arg):
    candidates = [arg] if arg else [os.environ.get("FROST"), os.path.join(REPO, "src", "frost"),
                                    os.path.join(os.getcwd(), "src", "frost"), shutil.which("frost")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def idx_path(data_dir, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return None


def prepare_data(data_dir, work):
    """A data directory for the runs: the training files as they are (symlinks) and only the
    first 512 test samples, so the test evaluation frost runs after training costs little time.
    Training data, and so what is measured, is untouched."""
    out = os.path.join(work, "data")
    os.makedirs(out)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        src = idx_path(data_dir, stem)
        if not src:
            raise SystemExit("bench: %s has no %s[.gz]" % (data_dir, stem))
        os.symlink(os.path.abspath(src), os.path.join(out, os.path.basename(src)))
    keep = 512
    for stem, item in (("t10k-images-idx3-ubyte", 784), ("t10k-labels-idx1-ubyte", 1)):
        src = idx_path(data_dir, stem)
        if not src:
            raise SystemExit("bench: %s has no %s[.gz]" % (data_dir, stem))
        opener = gzip.open if src.endswith(".gz") else open
        with opener(src, "rb") as f:
            magic = f.read(4)
            ndim = magic[3]
            dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
            n = min(keep, dims[0])
            body = f.read(n * item)
        dims[0] = n
        with gzip.open(os.path.join(out, stem + ".gz"), "wb", compresslevel=1) as f:
            f.write(magic + b"".join(d.to_bytes(4, "big") for d in dims) + body)
    return out


def build_sgemm(work, cc):
    exe = os.path.join(work, "sgemm")
    cmd = [cc, "-O2", "-std=c11"]
    if os.path.isdir(OPENBLAS_INCLUDE):
        cmd.append("-I" + OPENBLAS_INCLUDE)
    cmd += [os.path.join(HERE, "sgemm.c"), "-o", exe, "-lopenblas"]
    rc, out, err = run_cmd(cmd)
    if rc != 0:
        return None, "cannot build bench/sgemm.c (%s): %s" % (" ".join(cmd), last_line(err))
    return exe, None


def measure_sgemm(exe, reps):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    rc, out, err = run_cmd([exe, "1024", str(reps)], env=env)
    m = re.search(r"best_gflops=([0-9.]+) median_gflops=([0-9.]+)", out)
    if rc != 0 or not m:
        return None, None, "sgemm failed: %s" % last_line(err or out)
    return float(m.group(1)), float(m.group(2)), None


def frost_inspect(frost, spec, flags):
    """`frost inspect`'s parameters: [(name, shape)] in order, and the set of trainable names."""
    rc, out, err = run_cmd([frost, "inspect", "--model", spec] + flags)
    if rc != 0:
        return None, None, last_line(err or out, rc)
    params, trainable = [], set()
    for line in out.splitlines():
        m = re.match(r"(\S+) \[([0-9, ]*)\] [0-9]+ (trainable|frozen)$", line)
        if m:
            params.append((m.group(1), [int(d) for d in m.group(2).split(",") if d.strip()]))
            if m.group(3) == "trainable":
                trainable.add(m.group(1))
    return params, trainable, None


def bench_env(policy, **extra):
    """A run's environment: ours plus the thread settings, with OMP_WAIT_POLICY as `policy` says
    ('unset' leaves it as it is in ours; see --omp-wait-policy)."""
    env = dict(os.environ, **extra)
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    return env


def combine(results):
    """Several runs of one side into one result: the median over all their timed intervals (each
    run's first interval dropped), the largest peak memory. An error in any run is the result."""
    for r in results:
        if "error" in r:
            return r
    pooled = []
    for r in results:
        rates = r.get("interval_rates") or []
        pooled += rates[1:] if len(rates) > 1 else [r["samples_per_s"]]
    out = dict(results[-1])
    out["samples_per_s"] = statistics.median(pooled)
    mem = [r["maxrss_mb"] for r in results if r.get("maxrss_mb") is not None]
    out["maxrss_mb"] = max(mem) if mem else None
    out["interval_rates"] = " / ".join(str(r.get("interval_rates")) for r in results)
    return out


def run_frost(args, frost, wl, spec, data, steps, log_every, work, ranks, rep):
    tag = "w%s-r%d-%d" % (wl["id"], ranks, rep)
    metrics = os.path.join(work, "frost-%s.csv" % tag)
    threads = args.threads if ranks == 1 else 1
    cmd = [frost, "train", "--model", spec, "--data", data, "--batch-size", str(wl["batch"]),
           "--steps", str(steps), "--log-every", str(log_every), "--threads", str(threads),
           "--lr", "0.01", "--momentum", "0.9", "--metrics", metrics] + wl["frost_flags"]
    env = bench_env(args.omp_wait_policy, OMP_NUM_THREADS=str(threads))
    if ranks > 1:
        export = ["-x", "OMP_NUM_THREADS=1"]
        if "OMP_WAIT_POLICY" in env:
            export += ["-x", "OMP_WAIT_POLICY"]
        cmd = args.mpirun.split() + ["-np", str(ranks)] + export + cmd
    rc, out, err = run_cmd(cmd, env=env, timeout=args.timeout)
    with open(os.path.join(work, "frost-%s.log" % tag), "w") as f:
        f.write(" ".join(cmd) + "\n" + out + err)
    if rc != 0:
        return {"error": "frost exit %d: %s" % (rc, last_line(err or out, rc))}
    rates = []
    try:
        with open(metrics) as f:
            for row in csv.DictReader(f):
                rates.append(float(row["samples_per_s"]))
    except (OSError, KeyError, ValueError) as e:
        return {"error": "cannot read %s: %s" % (metrics, e)}
    measured = rates[1:]
    res = {"interval_rates": rates}
    if measured:
        res["samples_per_s"] = statistics.median(measured)
    else:
        m = re.search(r"^done: .*?([0-9.]+) samples/s", out, re.M)
        if not m:
            return {"error": "no rate in frost's output"}
        res["samples_per_s"] = float(m.group(1))
    m = re.search(r"peak memory ([0-9.]+) MB", out)
    res["maxrss_mb"] = float(m.group(1)) if m else None
    m = re.search(r"^frost (\S+):", out, re.M)
    res["version"] = m.group(1) if m else "?"
    return res


def run_torch(args, wl, data, steps, log_every, work, ranks, rep, policy):
    threads = args.threads if ranks == 1 else 1
    cmd = [args.python, os.path.join(HERE, "torch_worker.py"), "--model", json.dumps(wl["model"]),
           "--frozen", ",".join(wl["frozen"]), "--data", data] + wl.get("torch_flags", []) + [
           "--batch-size", str(wl["batch"]), "--steps", str(steps), "--log-every", str(log_every),
           "--threads", str(threads), "--ranks", str(ranks), "--lr", "0.01", "--momentum", "0.9"]
    t = str(threads)
    env = bench_env(policy, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
                    GLOO_SOCKET_IFNAME="lo")
    rc, out, err = run_cmd(cmd, env=env, timeout=args.timeout)
    tag = "w%s-r%d-%d-%s" % (wl["id"], ranks, rep, policy)
    with open(os.path.join(work, "torch-%s.log" % tag), "w") as f:
        f.write(" ".join(cmd) + "\n" + out + err)
    if rc != 0:
        return {"error": "torch exit %d: %s" % (rc, last_line(err or out, rc))}
    try:
        return json.loads(last_line(out))
    except ValueError:
        return {"error": "torch: unreadable result: %s" % last_line(out)}


def probe_torch(python):
    rc, out, err = run_cmd([python, "-c", "import torch, torch.distributed as d; "
                            "print(torch.__version__, d.is_available() and d.is_gloo_available())"],
                           timeout=300)
    if rc != 0:
        return None, False, last_line(err or out) or "exit %d" % rc
    words = out.split()
    return words[0], len(words) > 1 and words[1] == "True", None


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="frost vs PyTorch training throughput on Fashion-MNIST (see bench/README.md)")
    ap.add_argument("--frost", help="the frost command (default: $FROST, <repo>/src/frost, "
                    "./src/frost, frost on PATH)")
    ap.add_argument("--threads", type=int, default=usable_cores(),
                    help="threads for both frost and PyTorch (default: all cores, %(default)s)")
    ap.add_argument("--quick", action="store_true", help="short smoke run (%d steps each)" % QUICK_STEPS)
    ap.add_argument("--data", default=os.environ.get("DATA", DEFAULT_DATA),
                    help="Fashion-MNIST directory (default: $DATA or %s)" % DEFAULT_DATA)
    ap.add_argument("--workloads", default="1,2,3,3c,4,5,6,7,7c", help="which workloads (default %(default)s)")
    ap.add_argument("--mpi", default="1,4",
                    help="workloads also run as 2 ranks x 1 thread (frost under mpirun, PyTorch DDP/gloo); "
                         "'none' to skip (default %(default)s)")
    ap.add_argument("--ranks", type=int, default=2, help="ranks for the MPI rows (default %(default)s)")
    ap.add_argument("--steps", type=int, help="steps per run (default: per workload, see README)")
    ap.add_argument("--log-every", type=int, help="steps per timed interval")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each side this many times, alternating, and pool the intervals "
                         "(for a busy machine; default %(default)s)")
    ap.add_argument("--no-torch", action="store_true", help="frost only")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="Python with torch for the PyTorch side (default %(default)s)")
    ap.add_argument("--mpirun", default="mpirun --allow-run-as-root --oversubscribe",
                    help="launcher for the MPI rows (default '%(default)s')")
    ap.add_argument("--omp-wait-policy", choices=["passive", "active", "unset"], default="unset",
                    help="OMP_WAIT_POLICY for frost and for the PyTorch column (default %(default)s: "
                         "as it is in the environment, PyTorch as Debian ships it)")
    ap.add_argument("--no-torch-passive", action="store_true",
                    help="skip the second PyTorch column, PyTorch run again with "
                         "OMP_WAIT_POLICY=PASSIVE (Debian's PyTorch runs its matmuls in OpenBLAS's "
                         "own threads, which its spinning OpenMP threads slow down)")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler for bench/sgemm.c")
    ap.add_argument("--output", help="also write the report (markdown) to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, metrics)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per run before giving up")
    args = ap.parse_args()
    if args.threads < 1 or args.ranks < 1 or args.repeat < 1:
        ap.error("--threads, --ranks and --repeat must be >= 1")
    if (args.steps is not None and args.steps < 1) or (args.log_every is not None and args.log_every < 1):
        ap.error("--steps and --log-every must be >= 1")

    frost = find_frost(args.frost)
    if not frost:
        ap.error("no frost command found; build it (./configure && make) or pass --frost PATH")
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    mpi_wanted = [] if args.mpi in ("none", "") else [w.strip() for w in args.mpi.split(",")]
    ids = {w["id"] for w in WORKLOADS}
    for w in wanted + mpi_wanted:
        if w not in ids:
            ap.error("unknown workload %r (have %s)" % (w, ", ".join(sorted(ids))))
    for w in WORKLOADS:
        if w["id"] in mpi_wanted and w["batch"] % args.ranks:
            ap.error("workload %s: batch %d is not a multiple of %d ranks" % (w["id"], w["batch"], args.ranks))

    notes = []
    work = tempfile.mkdtemp(prefix="frost-bench.")
    started = time.time()
    load_start = loadavg()
    try:
        data = prepare_data(args.data, work)

        # sgemm limit
        sgemm_best = sgemm_median = None
        exe, why = build_sgemm(work, args.cc)
        if exe:
            sgemm_best, sgemm_median, why = measure_sgemm(exe, 10 if args.quick else 30)
        if why:
            notes.append("sgemm limit not measured (%s): the %% column is n/a." % why)
        else:
            log("sgemm: %.1f GFLOP/s per core (best; median %.1f)" % (sgemm_best, sgemm_median))

        # torch available?
        torch_version, torch_dist = None, False
        if args.no_torch:
            notes.append("PyTorch column skipped (--no-torch).")
        else:
            torch_version, torch_dist, why = probe_torch(args.python)
            if not torch_version:
                notes.append("PyTorch column skipped: `%s -c 'import torch'` failed: %s"
                             % (args.python, why))
            elif mpi_wanted and not torch_dist:
                notes.append("torch.distributed with gloo is not available: no DDP numbers.")

        runs = [(w, 1) for w in WORKLOADS if w["id"] in wanted]
        if args.ranks > 1:
            runs += [(w, args.ranks) for w in WORKLOADS if w["id"] in mpi_wanted]
        rows, details = [], []
        frost_version = "?"
        for i, (wl, ranks) in enumerate(runs):
            spec = os.path.join(REPO, wl["model_file"]) if "model_file" in wl else frost_spec(wl["model"])
            short = args.quick and not wl.get("fixed_length")
            steps = args.steps or (QUICK_STEPS if short else wl["steps"])
            log_every = args.log_every or (QUICK_LOG_EVERY if short else wl["log_every"])
            log_every = min(log_every, steps)
            name = "%s. %s" % (wl["id"], wl["name"])
            if ranks > 1:
                name += ", %d ranks x 1 thread (MPI / DDP)" % ranks
            flops = step_flops(wl["model"], set(wl["frozen"]))
            cores = args.threads if ranks == 1 else ranks
            log("[%d/%d] %s: %d steps, batch %d, %s" % (
                i + 1, len(runs), name, steps, wl["batch"],
                "%d threads" % args.threads if ranks == 1 else "%d ranks x 1 thread" % ranks))

            # frost's model and frozen set must be the ones bench assumes (FLOPs, PyTorch model)
            params, trainable, why = frost_inspect(frost, spec, wl["frost_flags"])
            shapes = param_shapes(wl["model"])
            expect = {name for name, _ in shapes if name.split(".")[0] not in wl["frozen"]}
            use_torch = bool(torch_version) and (ranks == 1 or torch_dist)
            policies = [args.omp_wait_policy]
            if not args.no_torch_passive and args.omp_wait_policy != "passive":
                policies.append("passive")
            fr_runs, th_runs = [], {p: [] for p in policies}
            if trainable is None:
                fr_runs.append({"error": "frost inspect failed: %s" % why})
            elif params != shapes:
                fr_runs.append({"error": "frost's model %s has the parameters %s, bench expected %s"
                                % (spec, params, shapes)})
            elif trainable != expect:
                fr_runs.append({"error": "frost trains %s, bench expected %s" % (sorted(trainable), sorted(expect))})
            # frost then PyTorch, --repeat times, so that a change in the machine's load hits both
            for r in range(args.repeat):
                if not fr_runs or "error" not in fr_runs[0]:
                    res = run_frost(args, frost, wl, spec, data, steps, log_every, work, ranks, r)
                    fr_runs.append(res)
                    log("  frost: %s" % (res["error"] if "error" in res else "%.0f samples/s (intervals %s), %s MB" % (
                        res["samples_per_s"], res["interval_rates"], fmt(res["maxrss_mb"], ".0f"))))
                for policy in policies if use_torch else []:
                    runs_p = th_runs[policy]
                    if runs_p and "error" in runs_p[0]:
                        continue
                    res = run_torch(args, wl, data, steps, log_every, work, ranks, r, policy)
                    runs_p.append(res)
                    log("  torch (OMP_WAIT_POLICY %s): %s" % (policy, res["error"] if "error" in res else
                        "%.0f samples/s (intervals %s), %.0f MB" % (
                            res["samples_per_s"], res["interval_rates"], res["maxrss_mb"])))
            fr = combine(fr_runs)
            if "error" in fr:
                notes.append("%s: %s" % (name, fr["error"]))
            else:
                frost_version = fr.get("version", frost_version)
            th = {p: combine(th_runs[p]) for p in policies} if use_torch else {}
            for policy, res in th.items():
                if "error" in res:
                    notes.append("%s: PyTorch (OMP_WAIT_POLICY %s): %s" % (name, policy, res["error"]))
                elif sorted(res["trainable"]) != sorted(expect):
                    notes.append("%s: PyTorch trained %s, expected %s" % (name, res["trainable"], sorted(expect)))
            rates = {p: res.get("samples_per_s") for p, res in th.items()}
            f_sps = fr.get("samples_per_s")
            t_sps = rates.get(args.omp_wait_policy)
            p_sps = rates.get("passive") if args.omp_wait_policy != "passive" else None
            best = max([x for x in (t_sps, p_sps) if x], default=None)
            memory = [res.get("maxrss_mb") for res in th.values() if res.get("maxrss_mb")]
            cached = wl.get("cached", False)
            rows.append([
                name, fmt(f_sps, ".0f"),
                fmt(t_sps, ".0f") if th else "-",
                fmt(p_sps, ".0f") if "passive" in th and args.omp_wait_policy != "passive" else "-",
                fmt(f_sps / t_sps, ".2f") if (f_sps and t_sps) else "-",
                fmt(f_sps / best, ".2f") if (f_sps and best) else "-",
                "%.2f" % (flops / 1e6),
                # the % column, filled in below; with the cache frost skips most of those FLOPs
                None if cached else (f_sps, flops, cores),
                fmt(fr.get("maxrss_mb"), ".0f"),
                fmt(max(memory), ".0f") if memory else "-",
            ])
            details.append("- %s: %d x %d steps, %d per interval; frost intervals %s; %s" % (
                name, args.repeat, steps, log_every, fr.get("interval_rates", "-"),
                "; ".join("torch (OMP_WAIT_POLICY %s) intervals %s" % (p, res.get("interval_rates", "-"))
                          for p, res in th.items()) or "torch -"))
        # The limit again at the end: on a machine others are using, the better of the two
        # measurements is the closer to what the cores can do.
        if exe and sgemm_best:
            best2, median2, why = measure_sgemm(exe, 10 if args.quick else 30)
            if best2:
                log("sgemm again: %.1f GFLOP/s per core (best; median %.1f)" % (best2, median2))
                sgemm_best = max(sgemm_best, best2)
        for r in rows:
            if r[7] is None:
                r[7] = "- (cache)"
                continue
            f_sps, flops, cores = r[7]
            r[7] = "%.1f%%" % (100.0 * f_sps * flops / (sgemm_best * cores * 1e9)) \
                if (f_sps and sgemm_best) else "n/a"
    finally:
        if args.keep:
            log("work directory kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    # ---------------------------------------------------------------- report
    lines = []
    lines.append("# frost vs PyTorch, Fashion-MNIST training throughput")
    lines.append("")
    lines.append("%s | %s | %d cores | %d threads | sgemm %s GFLOP/s per core (OpenBLAS, 1024^3, 1 thread%s)" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), cpu_model(), usable_cores(),
        args.threads, fmt(sgemm_best, ".1f"),
        ", OPENBLAS_CORETYPE=" + os.environ["OPENBLAS_CORETYPE"] if os.environ.get("OPENBLAS_CORETYPE") else ""))
    lines.append("")
    policy = bench_env(args.omp_wait_policy).get("OMP_WAIT_POLICY", "unset")
    lines.append("frost %s (%s), PyTorch %s (%s); %s; SGD lr 0.01 momentum 0.9; OMP_WAIT_POLICY %s for frost "
                 "and the torch column; load average %s at start, %s at end; %.0f s in all" % (
                     frost_version, frost, torch_version or "n/a", args.python,
                     "quick run" if args.quick else "full run", policy, load_start, loadavg(),
                     time.time() - started))
    lines.append("")
    header = ["workload", "frost samples/s", "torch samples/s", "torch, PASSIVE", "frost/torch",
              "frost/best torch", "MFLOP/sample", "% of sgemm limit", "frost MB", "torch MB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    lines.append("")
    lines.append("samples/s: median over the timed intervals after the first (warm-up) one. "
                 "torch: PyTorch with OMP_WAIT_POLICY %s (as Debian ships it when unset); "
                 "torch, PASSIVE: PyTorch again with OMP_WAIT_POLICY=PASSIVE; frost/best torch: frost "
                 "against the faster of the two. "
                 "%% of sgemm limit: frost samples/s x MFLOP/sample / (cores x sgemm per core); "
                 "'- (cache)': frost skips the cached prefix's FLOPs, so the count does not apply. "
                 "MB: peak resident memory (rank 0 for the MPI rows; torch: the larger of its runs)."
                 % policy)
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines += ["- " + n for n in notes]
    lines.append("")
    lines.append("Intervals (samples/s, the first is warm-up):")
    lines += details
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    failed = any(r[1] == "n/a" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------ measured runs
# (bench/gpt_bench.py and bench/resnet_bench.py)

def run_measured(cmd, env, log_path, timeout):
    """Runs cmd with stdout and stderr to log_path: (exit status, output text, peak RSS in MB
    from wait4's ru_maxrss, CPU seconds (user + system), wall seconds)."""
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        try:
            p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        except OSError as e:
            return 127, str(e), None, None, None
        start = time.time()
        deadline = start + timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                _, status, usage = os.wait4(p.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        p.returncode = status  # reaped here by wait4, not by Popen
        wall = time.time() - start
    with open(log_path) as f:
        text = f.read()
    rc = 124 if timed_out else (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                                else 128 + os.WTERMSIG(status))
    return rc, text, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime, wall


def timed_rates(rows, log_every, from_step):
    """The rates of the intervals that start after step from_step and are not a run's first."""
    return [r for step, r in rows if step - log_every >= max(from_step, log_every)]
