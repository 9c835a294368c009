#!/usr/bin/python3
"""trace_summary.py - where a training step's time goes, per layer, from a `frost train --trace` file.

    bench/trace_summary.py run.json [--model FILE --batch B [--freeze LAYER]... --sgemm GFLOPS]
                                    [--skip N] [--rank R]

frost's trace (`--trace FILE.json`) records, on every worker thread, each layer's forward and
backward (and `weight-grad`, a linear layer's weight gradient summed by rows across the threads;
`input-grad`, the gradient at its input when computed apart: split by features over the rank's
batch in a step of few rows per thread, or after the weights on several ranks; `stage-sum`, a
large conv2d weight gradient's copies added up after its layer),
the rows gathered, the loss, the slab's reduction and update, and the communication thread's
allreduces. This prints, for the worker threads of one rank, averaged over the steps after the
first --skip (warm-up) and over the threads:

  ms/step     the time a thread spends in that event per step (the threads' mean; the median
              over the steps, so a step in which the machine's other work took the core weighs
              little)
  % of step   that over the step period (first event of a step to the first of the next;
              the median over the steps)
  GFLOP/s     with --model and --batch: the event's matrix-product FLOPs (all threads') over the
              core-seconds the threads spent in it, i.e. per core; % of the sgemm limit with --sgemm

and `waiting / untraced`: the rest of the step period, which is the threads waiting for each
other at barriers (the slowest thread sets the pace), OpenMP's start and end of the parallel
region, and the command's work between steps (the batch order, metrics, progress lines).

The FLOPs are counted as bench/bench.py counts them: forward 2*in*out per sample for linear
(2*Cin*k*k*Cout*OH*OW for conv2d), the same for a trainable layer's weight gradient, the same again
for the input gradient when a layer before it is trainable. The model file may hold linear,
conv2d (stride, padding), relu, maxpool2d and avgpool2d (stride, padding), flatten and an
input line; other layers give no FLOPs.
"""
import argparse
import collections
import json
import fnmatch
import re
import statistics
import sys


def parse_model(path):
    """A frost model file as a list of (name, kind, forward FLOPs per sample) for its linear and
    conv2d layers, and every layer's kind by name (an unnamed layer is named by its index)."""
    layers = []
    kinds = {}
    c, h, w = 1, 28, 28
    with open(path) as f:
        text = f.read()
    # Residual blocks: (kind, prefix, shape at the block's entry, body's output shape).
    blocks = []
    text = re.sub(r"#[^\n]*", "", text).replace("{", "{;").replace("}", ";};")
    for raw in re.split(r"[;\n]", text):
        line = raw.strip()
        if not line:
            continue
        m = re.match(r"input\s+(\d+)\s+(\d+)\s+(\d+)$", line)
        if m:
            c, h, w = map(int, m.groups())
            continue
        m = re.match(r"residual\s+(\S+)\s*\{$", line)
        if m:
            blocks.append(["residual", m.group(1) + ".", (c, h, w), None])
            continue
        if re.match(r"shortcut\s*\{$", line):
            blocks[-1][3] = (c, h, w)
            c, h, w = blocks[-1][2]
            blocks.append(["shortcut", "", None, None])
            continue
        if line == "}":
            if blocks.pop()[0] == "shortcut":
                c, h, w = blocks[-1][3]  # the block's output: its body's
            continue
        m = re.match(r"(?:(\S+)\s*=\s*)?(\w+)\s*(?:\((.*)\))?$", line)
        if not m:
            raise SystemExit("trace_summary: cannot read model line %r" % line)
        name, kind, args = m.group(1), m.group(2), m.group(3) or ""
        name = "".join(b[1] for b in blocks) + name if name else str(len(kinds))
        kinds[name] = kind
        pos = [a.strip() for a in args.split(",") if a.strip() and "=" not in a]
        kw = dict(a.strip().split("=", 1) for a in args.split(",") if "=" in a)
        if kind == "linear":
            fin, fout = int(pos[0]), int(pos[1])
            layers.append((name, "linear", 2 * fin * fout))
            c, h, w = fout, 1, 1
        elif kind == "conv2d":
            cin, cout, k = int(pos[0]), int(pos[1]), int(pos[2])
            stride = int(pos[3]) if len(pos) > 3 else int(kw.get("stride", 1))
            pad = int(pos[4]) if len(pos) > 4 else int(kw.get("padding", 0))
            oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            layers.append((name, "conv2d", 2 * cin * k * k * cout * oh * ow))
            c, h, w = cout, oh, ow
        elif kind in ("maxpool2d", "avgpool2d"):
            k = int(pos[0])
            s = int(pos[1]) if len(pos) > 1 else int(kw.get("stride", k))
            pad = int(pos[2]) if len(pos) > 2 else int(kw.get("padding", 0))
            h, w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        elif kind == "adaptive_avgpool2d":
            h = w = int(pos[0])
        elif kind == "flatten":
            c, h, w = c * h * w, 1, 1
    return layers, kinds


def fnmatchcase_param(layer, pattern):
    """Whether --freeze PATTERN, as frost matches it against parameter names, takes the layer's
    weight."""
    return fnmatch.fnmatchcase(layer + ".weight", pattern)


def event_flops(layers, frozen, batch):
    """{(layer, what): FLOPs of that event over the whole batch, all threads} for the events a
    step records; 'backward' holds dW when no 'weight-grad' event does (fixed up later)."""
    out = {}
    behind = False
    for name, _, fwd in layers:
        trainable = not any(fnmatch.fnmatchcase(name, p) or fnmatchcase_param(name, p)
                            for p in frozen)
        out[(name, "forward")] = fwd * batch
        out[(name, "weight-grad")] = fwd * batch if trainable else 0
        out[(name, "dx")] = fwd * batch if behind else 0
        behind = behind or trainable
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--model", help="the model file, for FLOPs")
    ap.add_argument("--batch", type=int, help="the global batch, for FLOPs")
    ap.add_argument("--freeze", action="append", default=[],
                    help="a frozen layer: its name or a pattern, as frost's --freeze takes it")
    ap.add_argument("--sgemm", type=float, help="one core's sgemm GFLOP/s (bench/sgemm)")
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out (2)")
    ap.add_argument("--rank", type=int, default=0)
    args = ap.parse_args()

    with open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] == args.rank}
    workers = sorted(t for t, n in names.items() if n.startswith("thread "))
    spans = [e for e in events if e.get("ph") == "X" and e["pid"] == args.rank
             and e["tid"] in workers]
    steps = sorted({e["args"]["step"] for e in spans})
    kept = [s for s in steps if s > args.skip]
    if len(kept) < 2:
        raise SystemExit("trace_summary: %d steps in the trace, %d after --skip %d; need 2 or more"
                         % (len(steps), len(kept), args.skip))
    first_begin = collections.defaultdict(lambda: float("inf"))  # step -> first event's start
    for e in spans:
        first_begin[e["args"]["step"]] = min(first_begin[e["args"]["step"]], e["ts"])
    periods = [first_begin[s + 1] - first_begin[s] for s in kept if s + 1 in first_begin]
    measured = sorted(s for s in kept if s + 1 in first_begin)
    period_us = statistics.median(periods)
    threads, nsteps = len(workers), len(measured)

    # (layer, what) -> step -> microseconds, the worker threads' mean
    per_step = collections.defaultdict(lambda: collections.defaultdict(float))
    order = []
    for e in spans:
        if e["args"]["step"] not in measured:
            continue
        what = e["cat"]
        layer = e["name"][:-len(what)].strip()
        layer = re.sub(r" \d+$", "", layer)  # a bucket's or row block's number
        key = (layer, what)
        if key not in per_step:
            order.append(key)
        per_step[key][e["args"]["step"]] += e["dur"] / threads
    # The median step's microseconds, all threads together.
    busy = {key: statistics.median([steps.get(s, 0.0) for s in measured]) * threads * nsteps
            for key, steps in per_step.items()}

    flops = {}
    kinds = {}
    if args.model:
        layers, kinds = parse_model(args.model)
    if args.model and args.batch:
        per = event_flops(layers, set(args.freeze), args.batch)
        split = {layer for layer, what in busy if what == "weight-grad"}
        # A layer with an input-grad event computes dx there, not in its backward.
        apart = {layer for layer, what in busy if what == "input-grad"}
        for name, _, _ in layers:
            flops[(name, "forward")] = per[(name, "forward")]
            dx = 0 if name in apart else per[(name, "dx")]
            if name in split:
                flops[(name, "weight-grad")] = per[(name, "weight-grad")]
                flops[(name, "backward")] = dx
            else:
                flops[(name, "backward")] = per[(name, "weight-grad")] + dx
            flops[(name, "input-grad")] = per[(name, "dx")]

    print("%s: rank %d, %d worker threads, steps %d-%d (%d measured), step period %.2f ms"
          % (args.trace, args.rank, threads, min(measured), max(measured), nsteps,
             period_us / 1000))
    header = "| layer | event | ms/step | % of step |"
    rule = "|---|---|---:|---:|"
    if flops:
        header += " GFLOP/s per core |"
        rule += "---:|"
        if args.sgemm:
            header += " % of sgemm |"
            rule += "---:|"
    print(header)
    print(rule)
    total = 0.0
    step_flops = 0.0
    for key in order:
        ms = busy[key] / threads / nsteps / 1000
        total += ms
        shown = "%s (%s)" % (key[0], kinds[key[0]]) if key[0].isdigit() and key[0] in kinds \
            else key[0]
        row = "| %s | %s | %.3f | %.1f%% |" % (shown, key[1], ms, 100 * ms * 1000 / period_us)
        if flops:
            f = flops.get(key, 0)
            step_flops += f
            if f:
                rate = f * nsteps / (busy[key] * 1e-6) / 1e9
                row += " %.1f |" % rate
                if args.sgemm:
                    row += " %.0f%% |" % (100 * rate / args.sgemm)
            else:
                row += " |" + (" |" if args.sgemm else "")
        print(row)
    rest = period_us / 1000 - total
    row = "| waiting / untraced | | %.3f | %.1f%% |" % (rest, 100 * rest * 1000 / period_us)
    if flops:
        row += " |" + (" |" if args.sgemm else "")
    print(row)
    if flops:
        rate = step_flops / (period_us * 1e-6) / threads / 1e9
        line = "whole step: %.1f GFLOP/s per core" % rate
        if args.sgemm:
            line += ", %.0f%% of the sgemm limit" % (100 * rate / args.sgemm)
        print("\n" + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
