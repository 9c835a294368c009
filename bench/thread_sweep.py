#!/usr/bin/python3
"""thread_sweep.py - frost's scaling over threads against PyTorch's best (bench/thread_sweep.sh).

For the MLP (workload 1 of bench/run.sh) and the CNN (workload 4), at 1, 2, 4, ... threads up to
the cores present (or --threads LIST), one process: frost's samples/s, its efficiency against 1
thread (rate_T / (T x rate_1)), and PyTorch at the same thread count in the faster of its two
settings (OMP_WAIT_POLICY as in the environment, and PASSIVE; see bench/README.md), with the
ratio. Runs, timing (median of the intervals after the first), data and models are bench/run.sh's
(bench/bench.py's run_frost and run_torch). See bench/README.md.
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402


def powers_of_two(limit):
    out, t = [], 1
    while t < limit:
        out.append(t)
        t *= 2
    return out + [limit]


def main():
    ap = argparse.ArgumentParser(prog="bench/thread_sweep.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--frost", help="the frost command (as bench/run.sh finds it)")
    ap.add_argument("--threads", help="thread counts, e.g. 1,2,4 (default: 1, 2, 4, ... up to "
                    "the cores present, %d)" % bench.usable_cores())
    ap.add_argument("--workloads", default="1,4", help="bench/run.sh workload ids (%(default)s)")
    ap.add_argument("--steps", type=int, help="steps per run (default: the workload's)")
    ap.add_argument("--log-every", type=int, help="interval length (default: the workload's)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, pooled (%(default)s)")
    ap.add_argument("--data", default=os.environ.get("DATA", bench.DEFAULT_DATA))
    ap.add_argument("--python", default="/usr/bin/python3", help="PyTorch's interpreter")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args()
    frost = bench.find_frost(args.frost)
    if not frost:
        sys.exit("thread_sweep: no frost command found (build it, or --frost PATH)")
    counts = ([int(t) for t in args.threads.split(",")] if args.threads
              else powers_of_two(bench.usable_cores()))
    wanted = args.workloads.split(",")
    workloads = [w for w in bench.WORKLOADS if w["id"] in wanted]
    if len(workloads) != len(wanted):
        sys.exit("thread_sweep: unknown workload in %s" % args.workloads)
    torch_version = None
    if not args.no_torch:
        torch_version, _, why = bench.probe_torch(args.python)
        if not torch_version:
            bench.log("thread_sweep: no PyTorch (%s)" % why)
    start_load = bench.loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="frost-sweep.") as work:
        data = bench.prepare_data(args.data, work)
        for wl in workloads:
            spec = bench.frost_spec(wl["model"])
            steps = args.steps or wl["steps"]
            log_every = args.log_every or wl["log_every"]
            for t in counts:
                # What bench.py's runners read from its own options.
                opts = argparse.Namespace(threads=t, omp_wait_policy="unset", timeout=args.timeout,
                                          mpirun="mpirun", python=args.python)
                bench.log("thread_sweep: workload %s, %d thread(s): frost" % (wl["id"], t))
                f = bench.combine([bench.run_frost(opts, frost, wl, spec, data, steps, log_every,
                                                   work, 1, rep) for rep in range(args.repeat)])
                best = None
                for policy in ("unset", "passive") if torch_version else ():
                    bench.log("thread_sweep: workload %s, %d thread(s): torch (%s)"
                              % (wl["id"], t, policy))
                    p = bench.combine([bench.run_torch(opts, wl, data, steps, log_every, work, 1,
                                                       rep, policy) for rep in range(args.repeat)])
                    if "error" not in p and (best is None or p["samples_per_s"] > best[0]):
                        best = (p["samples_per_s"], policy)
                rows.append((wl, t, f, best))
    print("Thread sweep: %s; %s, %d cores usable; torch %s; global batch as in bench/run.sh; "
          "load average %s at the start, %s at the end.\n"
          % (frost, bench.cpu_model(), bench.usable_cores(), torch_version or "-", start_load,
             bench.loadavg()))
    print("| workload | threads | frost samples/s | efficiency vs 1 thread | best torch samples/s "
          "(OMP_WAIT_POLICY) | frost/best torch |")
    print("|---|---:|---:|---:|---:|---:|")
    one = {}
    failed = False
    for wl, t, f, best in rows:
        if "error" in f:
            failed = True
            print("| %s. %s | %d | %s | | | |" % (wl["id"], wl["name"], t, f["error"]))
            continue
        rate = f["samples_per_s"]
        base = one.setdefault(wl["id"], (t, rate))
        eff = rate / (base[1] * t / base[0])
        torch_cell = "%.0f (%s)" % (best[0], best[1]) if best else "-"
        ratio = "%.2f" % (rate / best[0]) if best else "-"
        print("| %s. %s, batch %d | %d | %.0f | %.0f%% | %s | %s |"
              % (wl["id"], wl["name"], wl["batch"], t, rate, 100 * eff, torch_cell, ratio))
    print("\nInterval rates (samples/s): " + "; ".join(
        "%s/%dt frost %s" % (wl["id"], t, f.get("interval_rates")) for wl, t, f, _ in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
