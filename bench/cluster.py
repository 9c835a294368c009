#!/usr/bin/python3
"""cluster.py - frost against PyTorch DDP on an emulated cluster (run it through bench/cluster.sh).

bench/cluster.sh builds the cluster (network namespaces on a bridge, bench/netns-lib.sh), cleans
it up, and runs this driver with NETNS_PREFIX, NETNS_SUBNET, NETNS_NODES and NETNS_LIB in the
environment and --work DIR. The driver shapes every node's link to each rate in turn and measures
raw TCP between nodes 1 and 2; then, for each node count, workload and side (frost under mpirun,
one rank per node namespace, TCP only; PyTorch DDP, gloo, one process per node namespace), it runs
the case on unshaped links (the compute time) and right after on each shaped link. The GPT
workloads (frost only) run a third time as "one host": the same ranks in one node's namespace,
over shared memory, what a shaped link's rate is compared with. It prints one markdown table.
See bench/README.md.
"""
import argparse
import csv
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True   # no __pycache__ in the source tree (read-only under distcheck)
import bench  # noqa: E402  (the workloads, frost's model spec, the data preparation)
import gpt_bench  # noqa: E402  (the GPT: its config, model and data files, frost's flags)

NETNS_IF = "eth0"                # each node's interface (bench/netns-lib.sh)
TCP_PAYLOAD_SHARE = 1448 / 1514  # TCP payload of a full MTU-1500 frame with timestamps
# The workloads of issue 9, by bench.py's ids: the MLP full, with fc1 and fc2 frozen, only fc4
# trained; the CNN full and with the convolutions frozen.
DEFAULT_WORKLOADS = "1,2,3,4,5"
# The byte-level GPT of bench/gpt_bench.py (L6 C384 H6 T128), AdamW, batches in the rows' order:
# fully trainable (the whole gradient in the allreduce) and LoRA r 8 on c_attn, c_proj and c_fc
# (only the adapters' gradients). frost only: PyTorch DDP with LoRA adapters is not set up here.
GPT_WORKLOADS = [
    {"id": "g", "name": "GPT L6 C384 H6 T128, full", "gpt": True, "batch": 16, "frost_flags": []},
    {"id": "gl", "name": "GPT, LoRA r 8 on c_attn,c_proj,c_fc", "gpt": True, "batch": 16,
     "frost_flags": gpt_bench.LORA_FLAGS},
]
ONE_HOST = "one host"            # the GPT runs' third "link": all ranks in node 1, shared memory
# Each rank of a one-host run in a session of its own, as the cluster's ranks are: Open MPI's
# orted calls setsid on every node but mpirun's, and with the kernel's autogroup scheduling
# (kernel.sched_autogroup_enabled) a session is one scheduling group, weighed against the
# machine's other work as one task would be. Two ranks in one session got a third less CPU than
# two in two sessions on this busy 2-core machine (LoRA 7 against 11.5 samples/s): that, not the
# network, would be measured. The ranks end with the namespace's other processes (Cluster.reap).
ONE_HOST_RANK = ["setsid", "-w"]
DEFAULT_STEPS, DEFAULT_LOG_EVERY = 40, 5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench/cluster.sh",
        description="frost (mpirun, TCP) against PyTorch DDP (gloo) on a cluster of network "
                    "namespaces on one machine, each node's link shaped (see bench/README.md)")
    ap.add_argument("--nodes", default="2,4", help="node counts, one rank per node (2,4)")
    ap.add_argument("--link", default="1gbit",
                    help="link rates as tc writes them, comma-separated (1gbit; e.g. 100mbit,1gbit,10gbit); "
                         "each node's link is shaped to it both ways")
    ap.add_argument("--delay", default="none",
                    help="one-way latency added to every node's outgoing traffic (netem), e.g. 1ms (none)")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                    help="bench.py's workload ids: 1 MLP full, 2 MLP --freeze fc1 --freeze fc2, "
                         "3 MLP only fc4 trained, 4 CNN full, 5 CNN --freeze 'conv*'; and g the "
                         "byte-level GPT of bench/gpt.sh fully trainable, gl the same with LoRA r 8 "
                         "on c_attn,c_proj,c_fc (frost only, also run with all ranks on one host) "
                         "(%s)" % DEFAULT_WORKLOADS)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per run (%d)" % DEFAULT_STEPS)
    ap.add_argument("--log-every", type=int, default=DEFAULT_LOG_EVERY,
                    help="steps per timed interval; the first interval is warm-up (%d)" % DEFAULT_LOG_EVERY)
    ap.add_argument("--frost-args", action="append", default=[], metavar="'FLAGS'",
                    help="an extra frost row with these flags added (repeatable), "
                         "e.g. --frost-args '--grad-dtype bf16'; a single flag without a value "
                         "needs the = form: --frost-args=--no-cache")
    ap.add_argument("--no-ddp", action="store_true", help="frost rows only")
    ap.add_argument("--mpi-busy-wait", action="store_true",
                    help="let frost's ranks poll while they wait in MPI (Open MPI's default on a "
                         "node it thinks it has to itself); by default they yield the CPU, since "
                         "all nodes share this machine's cores")
    ap.add_argument("--frost", help="the frost command (default: $FROST, <repo>/src/frost, ./src/frost, PATH)")
    ap.add_argument("--data", default=os.environ.get("DATA", bench.DEFAULT_DATA),
                    help="Fashion-MNIST directory (%(default)s)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="interpreter for PyTorch, and to write the GPT's model and data (%(default)s)")
    ap.add_argument("--mpirun", default="mpirun", help="Open MPI's mpirun (%(default)s)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run (%(default)s)")
    ap.add_argument("--tcp-seconds", type=float, default=2.0,
                    help="seconds of each raw TCP measurement (%(default)s)")
    ap.add_argument("--output", help="also write the report to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, metrics)")
    ap.add_argument("--work", help=argparse.SUPPRESS)        # from cluster.sh
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    def int_list(text, what, low):
        try:
            values = [int(x) for x in text.split(",") if x]
        except ValueError:
            values = []
        if not values or min(values) < low:
            ap.error("--%s '%s': expected a comma-separated list of numbers >= %d" % (what, text, low))
        return values
    args.node_counts = int_list(args.nodes, "nodes", 2)
    args.links = [x for x in args.link.split(",") if x]
    for link in args.links:
        if not re.fullmatch(r"[0-9.]+(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)", link.lower()):
            ap.error("--link '%s': expected a rate like 100mbit, 1gbit, 10gbit" % link)
    if args.delay != "none" and not re.fullmatch(r"[0-9.]+(us|ms|s)", args.delay):
        ap.error("--delay '%s': expected a time like 1ms or 500us, or none" % args.delay)
    known = {w["id"]: w for w in bench.WORKLOADS if w["id"] in DEFAULT_WORKLOADS.split(",")}
    known.update({w["id"]: w for w in GPT_WORKLOADS})
    args.workload_list = []
    for wid in args.workloads.split(","):
        if wid not in known:
            ap.error("--workloads: unknown workload '%s' (known: %s)" % (wid, ", ".join(known)))
        args.workload_list.append(known[wid])
    if args.steps < 2 * args.log_every or args.log_every < 1:
        ap.error("--steps must hold at least two intervals of --log-every steps (one is warm-up)")
    for w in args.workload_list:
        for n in args.node_counts:
            if w["batch"] % n:
                ap.error("workload %s: batch %d does not split over %d nodes" % (w["id"], w["batch"], n))
    return args


def rate_bytes(link):
    """tc's rate (bit/s with a k/m/g prefix, or bytes/s with bps) in bytes per second."""
    m = re.fullmatch(r"([0-9.]+)(k|m|g)?(bit|bps)", link.lower())
    scale = {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    return float(m.group(1)) * scale / (8 if m.group(3) == "bit" else 1)


class Cluster:
    """The namespaces cluster.sh made, and the way into them."""

    def __init__(self):
        self.prefix = os.environ["NETNS_PREFIX"]
        self.subnet = os.environ["NETNS_SUBNET"]
        self.nodes = int(os.environ["NETNS_NODES"])
        self.lib = os.environ["NETNS_LIB"]
        self.mpi_flags = os.environ["NETNS_MPI_FLAGS"].split()

    def node(self, i):
        return "%sn%d" % (self.prefix, i)

    def addr(self, i):
        return "%s.%d" % (self.subnet, i)

    def in_node(self, i, cmd):
        return ["ip", "netns", "exec", self.node(i)] + cmd

    def shape(self, rate, delay):
        """netns_shape of bench/netns-lib.sh on every node's link; an error message or None."""
        script = ('. "$1"; NETNS_PREFIX=$2; NETNS_SWITCH=${2}sw; NETNS_NODES=$3; '
                  'netns_shape "$4" "$5"')
        p = subprocess.run(["sh", "-c", script, "sh", self.lib, self.prefix, str(self.nodes),
                            rate, delay], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        return None if p.returncode == 0 else bench.last_line(p.stderr + p.stdout, p.returncode)

    def qdisc(self):
        p = subprocess.run(["tc", "-n", self.node(1), "qdisc", "show", "dev", NETNS_IF],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        return " / ".join(l.strip() for l in p.stdout.splitlines() if l.strip())

    def reap(self):
        """End whatever a failed run left in the node namespaces (ranks, orted, workers)."""
        for i in range(1, self.nodes + 1):
            p = subprocess.run(["ip", "netns", "pids", self.node(i)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, universal_newlines=True)
            for pid in p.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass


def run_procs(cmds, env, timeout, cluster):
    """Start the commands at once; wait for all. The whole group is killed after timeout, or as
    soon as one of them fails (the others, ranks of one job, would wait for it until then).
    Returns [(rc, stdout, stderr)]; rc 124 for a timeout, -15 or -9 for a process ended here."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True) for c in cmds]
    deadline = time.time() + timeout
    results = [None] * len(procs)
    timed_out = False
    while any(r is None for r in results):
        for k, p in enumerate(procs):
            if results[k] is not None:
                continue
            try:
                out, err = p.communicate(timeout=max(0.1, min(1.0, deadline - time.time())))
                results[k] = (p.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
        failed = any(r is not None and r[0] != 0 for r in results)
        if (failed or time.time() > deadline) and any(r is None for r in results):
            timed_out = not failed
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            time.sleep(2)
            cluster.reap()
            for k, p in enumerate(procs):
                if results[k] is None:
                    out, err = p.communicate()
                    results[k] = (124, out, err + "\ntimed out after %d s" % timeout) if timed_out \
                        else (p.returncode, out, err + "\nended: another process of the run failed")
    if timed_out or any(r[0] != 0 for r in results):
        cluster.reap()     # nothing of a failed run may slow the next one down
    return results


def measure_tcp(cluster, seconds, port):
    """Raw TCP between nodes 1 and 2: one way, then both ways at once. MB/s (1e6 bytes)."""
    tool = os.path.join(HERE, "netns_tcp.py")
    py = sys.executable
    out = {}
    for label, pairs in (("one way", [(1, 2)]), ("both ways", [(1, 2), (2, 1)])):
        servers = []
        for k, (src, dst) in enumerate(pairs):
            servers.append(subprocess.Popen(cluster.in_node(dst, [py, tool, "serve", str(port + k)]),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            universal_newlines=True))
        for s in servers:
            s.stdout.readline()          # "ready"
        senders = [cluster.in_node(src, [py, tool, "send", cluster.addr(dst), str(port + k), str(seconds)])
                   for k, (src, dst) in enumerate(pairs)]
        res = run_procs(senders, None, seconds + 60, cluster)
        rates = []
        for s in servers:
            try:
                text, err = s.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                s.kill()
                text, err = s.communicate()
            words = text.split()
            if s.returncode == 0 and len(words) == 3 and float(words[2]) > 0:
                rates.append(int(words[1]) / float(words[2]) / 1e6)
            else:
                rates.append(None)
        if any(r[0] != 0 for r in res):
            rates = [None] * len(pairs)
        out[label] = rates
        port += len(pairs)
    return out


def metrics_rates(path):
    rates, sent = [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            rates.append(float(row["samples_per_s"]))
            sent.append(int(float(row.get("allreduce_bytes") or 0)))
    return rates, sent


def median_after_warmup(rates):
    return statistics.median(rates[1:]) if len(rates) > 1 else None


def run_frost(args, cluster, frost, wl, data, nodes, extra, tag, one_host=False):
    """One frost job of nodes ranks: one per node namespace, TCP only between them; or, with
    one_host, all of them in node 1's namespace, shared memory between them (Open MPI's vader),
    each rank in a session of its own (see ONE_HOST_RANK)."""
    metrics = os.path.join(args.work, "frost-%s.csv" % tag)
    yield_flag = ["--mca", "mpi_yield_when_idle", "0" if args.mpi_busy_wait else "1"]
    launch = []
    if one_host:
        mpi = [args.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"] + \
            yield_flag + ["--mca", "pml", "ob1", "--mca", "btl", "self,vader", "-np", str(nodes)]
        launch = ONE_HOST_RANK
    else:
        # bench/netns-lib.sh's NETNS_MPI_FLAGS, mpi_yield_when_idle as asked.
        flags = list(cluster.mpi_flags)
        k = flags.index("mpi_yield_when_idle")
        flags[k + 1] = yield_flag[2]
        hosts = ",".join(cluster.addr(i) for i in range(1, nodes + 1))
        mpi = [args.mpirun, "--allow-run-as-root", "--oversubscribe",
               "--mca", "plm_rsh_agent", os.path.join(HERE, "netns-rsh.sh")] + \
            flags + ["--host", hosts, "-np", str(nodes)]
    mpi += ["-x", "OMP_NUM_THREADS=1"]
    if "OMP_WAIT_POLICY" in os.environ:
        mpi += ["-x", "OMP_WAIT_POLICY"]
    if wl.get("gpt"):
        job = gpt_bench.frost_job_flags(*data["gpt"])
    else:
        job = ["--model", bench.frost_spec(wl["model"]), "--data", data["idx"],
               "--lr", "0.01", "--momentum", "0.9"]
    cmd = cluster.in_node(1, mpi + launch + [frost, "train"] + job + [
        "--batch-size", str(wl["batch"]), "--steps", str(args.steps),
        "--log-every", str(args.log_every), "--threads", "1", "--metrics", metrics] +
        wl["frost_flags"] + extra)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    (rc, out, err), = run_procs([cmd], env, args.timeout, cluster)
    with open(os.path.join(args.work, "frost-%s.log" % tag), "w") as f:
        f.write(" ".join(cmd) + "\n" + out + err)
    if rc != 0:
        return {"error": "frost exit %d: %s" % (rc, bench.last_line(err or out, rc))}
    try:
        rates, sent = metrics_rates(metrics)
    except (OSError, KeyError, ValueError) as e:
        return {"error": "cannot read %s: %s" % (metrics, e)}
    if len(rates) < 2:
        return {"error": "frost logged %d intervals, need 2 or more" % len(rates)}
    m = re.search(r"^frost (\S+):", out, re.M)
    return {"samples_per_s": median_after_warmup(rates), "interval_rates": rates,
            "grad_bytes": max(sent) if sent else None, "version": m.group(1) if m else "?"}


def run_ddp(args, cluster, wl, data, nodes, tag, port):
    base = [args.python, os.path.join(HERE, "torch_worker.py"), "--model", json.dumps(wl["model"]),
            "--frozen", ",".join(wl["frozen"]), "--data", data["idx"], "--batch-size", str(wl["batch"]),
            "--steps", str(args.steps), "--log-every", str(args.log_every), "--threads", "1",
            "--ranks", str(nodes), "--lr", "0.01", "--momentum", "0.9",
            "--master-addr", cluster.addr(1), "--master-port", str(port)]
    cmds = [cluster.in_node(i + 1, base + ["--rank", str(i)]) for i in range(nodes)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME=NETNS_IF)
    results = run_procs(cmds, env, args.timeout, cluster)
    with open(os.path.join(args.work, "ddp-%s.log" % tag), "w") as f:
        for c, (rc, out, err) in zip(cmds, results):
            f.write(" ".join(c) + "\nexit %d\n" % rc + out + err + "\n")
    # The rank that failed first, not one ended because of it.
    failed = [(i, r) for i, r in enumerate(results) if r[0] != 0]
    first = [f for f in failed if "another process of the run failed" not in f[1][2]] or failed
    if first:
        i, (rc, out, err) = first[0]
        return {"error": "DDP rank %d exit %d: %s" % (i, rc, bench.last_line(err or out, rc))}
    try:
        res = json.loads(bench.last_line(results[0][1]))
    except ValueError:
        return {"error": "DDP: unreadable result: %s" % bench.last_line(results[0][1])}
    return {"samples_per_s": res["samples_per_s"], "interval_rates": res["interval_rates"],
            "grad_bytes": res.get("grad_bytes"), "trainable": res.get("trainable"),
            "version": res.get("torch", "?")}


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def fmt_rate(x, none="-"):
    """Samples per second: a decimal below 100 (the GPT's 5-15 a second), whole numbers above."""
    return fmt(x, ".1f" if x is not None and x < 100 else ".0f", none)


def main():
    args = parse_args(sys.argv[1:])
    if args.check:
        print(max(args.node_counts))
        return 0
    started = time.time()
    load_start = bench.loadavg()
    cluster = Cluster()
    frost = bench.find_frost(args.frost)
    if not frost:
        sys.exit("cluster: frost not found (build it, or give --frost PATH)")
    gpt_workloads = [w for w in args.workload_list if w.get("gpt")]
    data = {}
    if len(gpt_workloads) < len(args.workload_list):
        data["idx"] = bench.prepare_data(args.data, args.work)
    if gpt_workloads:
        # Rows for every step in one epoch, so that no run reaches a second (where frost's
        # feature cache of a frozen prefix would start) and every one sees the same batches.
        rows = max(320, args.steps * max(w["batch"] for w in gpt_workloads))
        os.makedirs(os.path.join(args.work, "gpt"))
        data["gpt"] = gpt_bench.write_model_and_data(args.python, os.path.join(args.work, "gpt"),
                                                     rows, gpt_workloads[0]["batch"])
    sides = [("frost", [])] + [("frost " + extra, extra.split()) for extra in args.frost_args]
    use_ddp = not args.no_ddp and len(gpt_workloads) < len(args.workload_list)
    torch_version = torch_note = None
    if use_ddp:
        torch_version, gloo, why = bench.probe_torch(args.python)
        if not torch_version or not gloo:
            log("PyTorch DDP rows skipped: %s" % (why or "no gloo in this PyTorch"))
            use_ddp = False
            torch_note = "PyTorch DDP not run: %s" % (why or "no gloo backend")
        else:
            sides.append(("DDP", None))
    results = {}       # (link, nodes, workload id, side) -> result
    tcp = {}           # link -> measure_tcp
    qdiscs = {}
    notes = []
    frost_version = "?"
    port = 29500
    links = ["none"] + [l for l in args.links if l != "none"]
    # Every link first: its shaping (a kernel without netem, say, fails here, before minutes of
    # runs) and the raw TCP it gives.
    for link in links:
        why = cluster.shape(link, args.delay if link != "none" else "none")
        if why:
            sys.exit("cluster: %s" % why)
        qdiscs[link] = cluster.qdisc()
        log("link %s%s: %s" % (link, "" if link == "none" or args.delay == "none" else " delay " + args.delay,
                                qdiscs[link]))
        tcp[link] = measure_tcp(cluster, args.tcp_seconds, 5201)
        log("  raw TCP between nodes 1 and 2: one way %s MB/s, both ways at once %s MB/s" % (
            fmt(tcp[link]["one way"][0], ".1f", "failed"),
            " + ".join(fmt(x, ".1f", "failed") for x in tcp[link]["both ways"])))
    # Then the runs; the unshaped one (the compute time) right before the shaped ones of the same
    # case, so that a change in the machine's load between them is as unlikely as can be.
    for nodes in args.node_counts:
        for wl in args.workload_list:
            for name, extra in sides:
                if name == "DDP" and wl.get("gpt"):
                    continue
                # A GPT run on one host last, right after the shaped runs it is compared with.
                for link in links + ([ONE_HOST] if wl.get("gpt") else []):
                    why = cluster.shape(link if link != ONE_HOST else "none",
                                        args.delay if link not in ("none", ONE_HOST) else "none")
                    if why:
                        sys.exit("cluster: %s" % why)
                    run_started = time.time()
                    tag = "%s-%dn-w%s-%s" % (link.replace(" ", "_"), nodes, wl["id"],
                                             re.sub(r"[^A-Za-z0-9]+", "_", name))
                    if name == "DDP":
                        port += 1
                        res = run_ddp(args, cluster, wl, data, nodes, tag, port)
                        expect = {l[1] for l in wl["model"] if l[0] in ("linear", "conv2d")} - set(wl["frozen"])
                        if "trainable" in res and {n.split(".")[0] for n in res["trainable"]} != expect:
                            res = {"error": "DDP trained %s, expected %s" % (res["trainable"], sorted(expect))}
                    else:
                        res = run_frost(args, cluster, frost, wl, data, nodes, extra, tag,
                                        one_host=(link == ONE_HOST))
                        frost_version = res.get("version", frost_version)
                    results[(link, nodes, wl["id"], name)] = res
                    log("  %s, %d nodes, workload %s, %s: %s (%.0f s)" % (
                        link, nodes, wl["id"], name, res["error"] if "error" in res else
                        "%.0f samples/s (intervals %s)" % (res["samples_per_s"], res["interval_rates"]),
                        time.time() - run_started))
                    if "error" in res:
                        notes.append("%s, %d nodes, workload %s, %s: %s" % (link, nodes, wl["id"], name, res["error"]))
    cluster.shape("none", "none")

    # ---------------------------------------------------------------- report
    lines = ["# frost vs PyTorch DDP on an emulated cluster", ""]
    lines.append("%s | %s | %d cores | load average %s at start, %s at end | %.0f s in all" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), bench.cpu_model(), bench.usable_cores(),
        load_start, bench.loadavg(), time.time() - started))
    lines.append("")
    optimizers = []
    if "idx" in data:
        optimizers.append("MLP and CNN: SGD lr 0.01 momentum 0.9")
    if gpt_workloads:
        optimizers.append("GPT (bench/gpt_bench.py's model and rows, %d of them): AdamW lr 1e-4 "
                          "weight decay 0.01, --no-shuffle" % rows)
    lines.append("frost %s (%s) under %s, one rank x 1 thread per node, TCP only, ranks %s while they "
                 "wait; %s; %s; %d steps, intervals of %d" % (
                     frost_version, frost, mpirun_version(args.mpirun),
                     "polling" if args.mpi_busy_wait else "yielding the CPU",
                     "PyTorch %s DDP (gloo), one process x 1 thread per node" % torch_version
                     if use_ddp else "no PyTorch DDP", "; ".join(optimizers),
                     args.steps, args.log_every))
    lines.append("")
    lines.append("Links (tc on both ends of every node's veth; raw TCP between nodes 1 and 2, "
                 "MB/s = 1e6 bytes/s):")
    lines.append("")
    for link in links:
        t = tcp[link]
        one = fmt(t["one way"][0], ".1f", "failed")
        both = " + ".join(fmt(x, ".1f", "failed") for x in t["both ways"])
        ideal = "" if link == "none" else ", TCP payload at this rate %.1f MB/s" % (
            rate_bytes(link) * TCP_PAYLOAD_SHARE / 1e6)
        lines.append("- %s%s: raw TCP one way %s MB/s, both ways at once %s MB/s%s (qdisc: %s)" % (
            "unshaped" if link == "none" else link,
            "" if link == "none" or args.delay == "none" else ", delay " + args.delay,
            one, both, ideal, qdiscs[link]))
    lines.append("")
    header = ["workload", "link", "nodes", "run", "samples/s", "grad MB/step", "ideal ring ms",
              "compute ms/step", "link-bound limit samples/s", "% of limit", "frost/DDP",
              "of one host"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|")
    details = []
    for wl in args.workload_list:
        for link in links[1:] + ([ONE_HOST] if wl.get("gpt") else []):
            for nodes in args.node_counts:
                ddp = results.get((link, nodes, wl["id"], "DDP"), {})
                for name, _ in sides:
                    if (link, nodes, wl["id"], name) not in results:
                        continue         # DDP of a GPT workload
                    res = results[(link, nodes, wl["id"], name)]
                    base = results[("none", nodes, wl["id"], name)]
                    sps = res.get("samples_per_s")
                    grad = res.get("grad_bytes") or base.get("grad_bytes")
                    ring = compute = limit = None
                    if link != ONE_HOST:
                        ring = 2.0 * (nodes - 1) / nodes * grad / (rate_bytes(link) * TCP_PAYLOAD_SHARE) \
                            if grad else None
                        compute = wl["batch"] / base["samples_per_s"] if base.get("samples_per_s") else None
                        limit = wl["batch"] / max(compute, ring) if (compute and ring is not None) else None
                    ratio = "-"
                    if name != "DDP" and sps and ddp.get("samples_per_s"):
                        ratio = "%.2f" % (sps / ddp["samples_per_s"])
                    one = results.get((ONE_HOST, nodes, wl["id"], name), {}).get("samples_per_s")
                    of_one = "%.0f%%" % (100.0 * sps / one) if (link != ONE_HOST and sps and one) else "-"
                    lines.append("| " + " | ".join([
                        "%s %s" % (wl["id"], wl["name"]), link, str(nodes), name,
                        fmt_rate(sps, "failed"), fmt(grad / 1e6 if grad else None, ".2f"),
                        fmt(ring * 1e3 if ring is not None else None, ".1f"),
                        fmt(compute * 1e3 if compute else None, ".1f"),
                        fmt_rate(limit), fmt(100.0 * sps / limit if (sps and limit) else None, ".0f") +
                        ("%" if (sps and limit) else ""), ratio, of_one]) + " |")
                    details.append("- %s, %s, %d nodes, %s: intervals %s%s" % (
                        wl["id"], link, nodes, name, res.get("interval_rates", "-"),
                        "" if link == ONE_HOST else
                        "; unshaped intervals %s" % (base.get("interval_rates", "-"),)))
    lines.append("")
    lines.append(
        "samples/s: global samples per second, median over the logged intervals after the first "
        "(warm-up) one. grad MB/step: the bytes one rank puts into the gradient allreduce each step "
        "(frost: its metrics column allreduce_bytes; DDP: the trainable gradients). ideal ring ms: "
        "2(n-1)/n x grad bytes / link rate, the link rate being the TCP payload the shaped link "
        "carries (rate x 1448/1514: full MTU-1500 frames with TCP timestamps). compute ms/step: "
        "the same run (same side, workload and nodes, one rank per node namespace) on unshaped "
        "links, seconds per step; it includes the unshaped veth transfer and, with more nodes than "
        "cores, the ranks sharing cores. link-bound limit: batch / max(compute, ideal ring), the "
        "rate a perfectly overlapped step would reach; % of limit: samples/s over it. frost/DDP: "
        "this frost row over the DDP row of the same workload, link and nodes." +
        (" one host (GPT workloads): the same job with all its ranks in node 1's namespace, "
         "shared memory between them (Open MPI's vader), no link; of one host: a shaped row's "
         "samples/s over it." if gpt_workloads else ""))
    if gpt_workloads and not args.no_ddp:
        notes.append("GPT workloads (%s): frost rows only, no DDP; PyTorch DDP with LoRA adapters "
                     "is out of scope here." % ", ".join(w["id"] for w in gpt_workloads))
    if torch_note:
        notes.append(torch_note)
    if notes:
        lines += ["", "Notes:"] + ["- " + n for n in notes]
    lines += ["", "Intervals (samples/s, the first is warm-up):"] + details
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return 1 if any("error" in r for r in results.values()) else 0


def mpirun_version(mpirun):
    rc, out, err = bench.run_cmd([mpirun, "--version"], timeout=30)
    m = re.search(r"\(Open MPI\) (\S+)", out + err)
    return "Open MPI %s" % m.group(1) if m else mpirun


if __name__ == "__main__":
    sys.exit(main())
