"""torch_reference.py - train a frost model description in PyTorch, for tests/torch_compare.sh.

  torch_reference.py init  --model SPEC --seed N --out W.safetensors
      PyTorch's default initialisation (after torch.manual_seed(N)) of the
      model, written as a safetensors weights file under frost's names.

  torch_reference.py train --model SPEC --data DIR --init W.safetensors
                           --steps S --batch-size B --lr X [--momentum X] [--nesterov]
                           [--weight-decay X] [--optimizer sgd|adam|adamw]
                           [--freeze P]... [--unfreeze P]... [--losses FILE] [--save F]
                           [--lr-schedule S] [--warmup-steps N] [--warmup-as lambda|linear]
                           [--lr-for P=LR]... [--clip-grad-norm X] [--lrs F] [--grad-norms F]
      The run `frost train ... --no-shuffle` does: batch k of every epoch is
      samples [k*B, (k+1)*B) in dataset order (an epoch's last batch may be
      short), mean cross-entropy, torch.optim's SGD/Adam/AdamW, parameters
      matched by --freeze with requires_grad=False (rules applied in order).
      Prints (or writes to FILE) each step's loss, one per line, full precision.
      Learning rates as frost's flags say: --lr-for rules become param groups
      (the last matching rule wins), --lr-schedule constant | step:SIZE[:GAMMA]
      | cosine[:T_MAX[:ETA_MIN]] becomes StepLR / CosineAnnealingLR (T_max by
      default the steps after the warmup), --warmup-steps N puts
      LambdaLR(lambda k: (k + 1) / N) in front with SequentialLR (milestone N;
      --warmup-as linear: LinearLR(start_factor=1/N, total_iters=N-1)),
      scheduler.step() after every optimizer.step(); --clip-grad-norm X calls
      clip_grad_norm_(trainable, X) between backward and the step.  --lrs
      writes the learning rate of the group at --lr (when there is one) and
      --grad-norms the norms clip_grad_norm_ returned, one step per line.

  torch_reference.py batch JOBS
      Runs every line of JOBS (a command line of this script, shell-quoted)
      in this one process, so torch is imported once; the exit status is 1 if
      any job failed (each failure is reported on stderr, the rest still run).

  torch_reference.py compare-losses [--tol X] FROST_METRICS.csv TORCH_LOSSES.txt STEPS
      Prints "max |diff| = D ..."; exit status 1 if either side does not have
      exactly STEPS steps or D > X (default 1e-4).

  torch_reference.py compare-column [--tol X] FROST_METRICS.csv COLUMN VALUES.txt STEPS
      The same for another column of frost's metrics (lr, grad_norm), the
      difference relative to the reference value (default tolerance 1e-6).

  torch_reference.py compare-weights [--tol X] A.safetensors B.safetensors
      Prints the largest absolute difference and the largest difference
      relative to max(1, the tensor's largest magnitude); exit status 1 if the
      names or shapes differ or that relative difference is > X (default 1e-4).

  torch_reference.py same-bits A.safetensors B.safetensors PATTERN...
      Exit status 0 if every parameter the patterns match (as --freeze matches
      them) has the same bits in both files.

The model grammar is the subset of frost's (DESIGN.md) that the tests use:
`input C H W`, linear(in, out), conv2d(in, out, k[, stride[, padding]][, bias=B]),
relu, maxpool2d and avgpool2d(k[, stride[, padding]]), adaptive_avgpool2d(n), flatten; `NAME = KIND(ARGS)`, or unnamed and
then named by its index as nn.Sequential does; `residual NAME { ... [shortcut { ... }] }`
blocks (their layers' names prefixed with NAME.); `;` or newlines between layers,
`#` comments, keyword arguments.  Safetensors files are read and written by
hand, so torch itself is the only requirement, and the compare commands need
only the standard library.
"""
import argparse
import fnmatch
import gzip
import json
import os
import re
import shlex
import struct
import sys
import warnings

torch = None  # imported by need_torch(): the compare commands run without it


def need_torch():
    global torch
    if torch is None:
        import torch as imported
        torch = imported
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float32)
    return torch


# ------------------------------------------------------------------ model

ARG_NAMES = {
    "linear": ["in_features", "out_features"],
    "conv2d": ["in_channels", "out_channels", "kernel_size", "stride", "padding"],
    "maxpool2d": ["kernel_size", "stride", "padding"],
    "avgpool2d": ["kernel_size", "stride", "padding"],
    "adaptive_avgpool2d": ["output_size"],
    "relu": [],
    "flatten": [],
    "batchnorm2d": ["num_features", "eps", "momentum", "affine"],
    "dropout": ["p"],
}
MIN_ARGS = {"linear": 2, "conv2d": 3, "maxpool2d": 1, "avgpool2d": 1, "adaptive_avgpool2d": 1,
            "relu": 0, "flatten": 0, "batchnorm2d": 1, "dropout": 0}


class JobError(Exception):
    pass


def parse_layer(piece):
    """(name or None, kind, {argument: value}) for one layer's text."""
    name = None
    m = re.match(r"^([A-Za-z_][\w.-]*)\s*=\s*(.*)$", piece)
    if m:
        name, piece = m.group(1), m.group(2).strip()
    m = re.match(r"^(\w+)\s*(?:\((.*)\))?$", piece)
    if not m or m.group(1).lower() not in ARG_NAMES:
        raise JobError(f"unsupported layer '{piece}'")
    kind, args = m.group(1).lower(), {}
    items = [a.strip() for a in (m.group(2) or "").split(",") if a.strip()]
    for i, item in enumerate(items):
        if "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
            key = "kernel_size" if key == "kernel" else key
        else:
            key, value = ARG_NAMES[kind][i], item
        args[key] = {"True": True, "False": False}[value] if value in ("True", "False") \
            else float(value) if re.search(r"[.eE]", value) else int(value)
    if len(args) < MIN_ARGS[kind]:
        raise JobError(f"'{piece}': too few arguments")
    return name, kind, args


def parse_spec(text):
    """(input shape or None, items): an item is a layer (name or None, kind,
    {argument: value}) or a block ("residual", name, body items, shortcut items)."""
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    pieces = []
    for line in text.split("\n"):
        for piece in line.split("#", 1)[0].split(";"):
            pieces.extend(p.strip() for p in re.split(r"([{}])", piece))
    input_shape, root, first = None, [], []
    stack, header = [root], None
    for piece in filter(None, pieces):
        words = piece.split()
        if piece == "{":
            if header is None:
                raise JobError("'{' without 'residual NAME' or 'shortcut'")
            if header == "shortcut":
                stack.append(stack[-2][-1][3])
            else:
                block = ("residual", header, [], [])
                stack[-1].append(block)
                stack.append(block[2])
            header = None
        elif piece == "}":
            stack.pop()
        elif words[0] == "residual" and len(words) == 2:
            header = words[1]
        elif piece == "shortcut":
            header = "shortcut"
        elif words[0] == "input":
            input_shape = tuple(int(w) for w in words[1:])
        else:
            layer = parse_layer(piece)
            first = first or [layer]
            stack[-1].append(layer)
    if input_shape is None and first and first[0][1] == "conv2d":
        input_shape = (first[0][2]["in_channels"], 28, 28)
    return input_shape, root


def make_layer(kind, a):
    nn = need_torch().nn
    if kind == "linear":
        return nn.Linear(a["in_features"], a["out_features"])
    if kind == "conv2d":
        return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"],
                         stride=a.get("stride", 1), padding=a.get("padding", 0),
                         bias=a.get("bias", True))
    if kind == "maxpool2d":
        return nn.MaxPool2d(a["kernel_size"], stride=a.get("stride"), padding=a.get("padding", 0))
    if kind == "avgpool2d":
        return nn.AvgPool2d(a["kernel_size"], stride=a.get("stride"), padding=a.get("padding", 0))
    if kind == "adaptive_avgpool2d":
        return nn.AdaptiveAvgPool2d(a["output_size"])
    if kind == "relu":
        return nn.ReLU()
    if kind == "batchnorm2d":
        return nn.BatchNorm2d(a["num_features"], eps=a.get("eps", 1e-5),
                              momentum=a.get("momentum", 0.1), affine=a.get("affine", True))
    if kind == "dropout":
        return nn.Dropout(a.get("p", 0.5))
    return nn.Flatten()


def make_net(spec):
    """A module tree named as frost names the layers, so named_parameters()
    lists `conv1.weight`, ..., `0.weight`, `layer1.0.downsample.0.weight`: a
    residual block is a module (output = body(x) + shortcut(x)) holding its
    layers under their dotted names; unnamed layers are named by their index
    in frost's list of layers (where each block's sum counts as one)."""
    nn = need_torch().nn
    input_shape, items = parse_spec(spec)

    def run(modules, x):
        for module in modules:
            x = module(x)
        return x

    class Net(nn.Module):
        def forward(self, x):
            x = x.reshape(x.shape[0], *input_shape) if input_shape else x.reshape(x.shape[0], -1)
            return run(self.order, x)

    class Residual(nn.Module):
        def forward(self, x):
            return run(self.body, x) + run(self.shortcut, x)

    def place(owner, dotted, module):
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(parts[-1], module)

    index = [0]

    def build(owner, items):
        modules = []
        for item in items:
            if item[0] == "residual":
                block = Residual()
                block.body = build(block, item[2])
                block.shortcut = build(block, item[3])
                module, name = block, item[1]
            else:
                name, kind, a = item
                module = make_layer(kind, a)
                name = name if name is not None else str(index[0])
            index[0] += 1
            place(owner, name, module)
            modules.append(module)
        return modules

    net = Net()
    net.order = build(net, items)
    return net


def pattern_matches(pattern, name):
    """frost's rule: a shell glob over parameter names, or a bare layer or
    block name."""
    return (fnmatch.fnmatchcase(name, pattern) or name.rsplit(".", 1)[0] == pattern
            or name.startswith(pattern + "."))


# ---------------------------------------------------------- safetensors

def save_safetensors(path, named_tensors):
    """Writes (name, float32 or int64 tensor) pairs in that order, atomically."""
    header, blobs, offset = {}, [], 0
    for name, t in named_tensors:
        if t.dtype == torch.int64:
            values = t.detach().contiguous().flatten().tolist()
            raw, dtype = struct.pack(f"<{len(values)}q", *values), "I64"
        else:
            values = t.detach().float().contiguous().flatten().tolist()
            raw = struct.pack(f"<{len(values)}f", *values)  # float32 -> double -> f32: exact
            dtype = "F32"
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    os.replace(tmp, path)


def load_safetensors(path):
    """{name: (shape, raw little-endian bytes)} for a file of F32 (and I64) tensors, in file
    order; an I64 tensor's shape is marked with a leading "I64"."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    base, out = 8 + length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in ("F32", "I64"):
            raise JobError(f"{path}: {name}: dtype {info['dtype']}, expected F32 or I64")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"]) if info["dtype"] == "F32" else ("I64",) + tuple(info["shape"])
        out[name] = (shape, blob[base + begin:base + end])
    return out


def floats(raw):
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def state_tensors(net):
    """Parameters, then buffers, in declaration order: frost's order."""
    return list(net.named_parameters()) + list(net.named_buffers())


# ------------------------------------------------------------------ data

def read_idx(directory, stem):
    for path in (os.path.join(directory, stem + ".gz"), os.path.join(directory, stem)):
        if os.path.exists(path):
            with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
                blob = f.read()
            ndim = blob[3]
            dims = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
            return dims, blob[4 + 4 * ndim:]
    raise JobError(f"{directory}: no {stem}[.gz]")


def load_train(directory):
    dims, pixels = read_idx(directory, "train-images-idx3-ubyte")
    _, labels = read_idx(directory, "train-labels-idx1-ubyte")
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(dims[0], -1)
    # frost: (float)p / 255.0f, a correctly rounded float32 division, as here.
    x = x.to(torch.float32) / torch.tensor(255.0, dtype=torch.float32)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8).to(torch.int64)
    return x, y


# ------------------------------------------------------------- commands

def cmd_init(args):
    need_torch().manual_seed(args.seed)
    save_safetensors(args.out, state_tensors(make_net(args.model)))


def cmd_train(args):
    net = make_net(args.model)
    F = torch.nn.functional
    weights = load_safetensors(args.init)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name not in weights or weights[name][0] != tuple(p.shape):
                raise JobError(f"{args.init}: no tensor {name} of shape {tuple(p.shape)}")
            p.copy_(torch.tensor(floats(weights[name][1])).reshape(p.shape))
        for name, buf in net.named_buffers():
            if name in weights:
                raw = weights[name][1]
                if buf.dtype == torch.int64:
                    buf.copy_(torch.tensor(struct.unpack(f"<{len(raw) // 8}q", raw)).reshape(buf.shape))
                else:
                    buf.copy_(torch.tensor(floats(raw)).reshape(buf.shape))
    for rule, pattern in args.rules:
        hits = [p for name, p in net.named_parameters() if pattern_matches(pattern, name)]
        if not hits:
            raise JobError(f"--{rule} {pattern}: matches no parameter")
        for p in hits:
            p.requires_grad_(rule == "unfreeze")
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = param_groups(net, args.lr, args.lr_for)
    # frost runs a BatchNorm whose parameters are all frozen in eval mode
    # (torchvision's FrozenBatchNorm2d): its running statistics never change.
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.affine and \
                not any(p.requires_grad for p in m.parameters()):
            m.eval()
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                              nesterov=args.nesterov, weight_decay=args.weight_decay)
    elif args.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(opt, args)
    base_group = next((g for g in opt.param_groups if g["initial_lr" if scheduler else "lr"]
                       == args.lr), None)
    lrs, norms = [], []

    x, y = load_train(args.data)
    n, b = x.shape[0], args.batch_size
    batches_per_epoch = (n + b - 1) // b
    losses = []
    for step in range(args.steps):
        k = step % batches_per_epoch  # --no-shuffle: each epoch in dataset order
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[k * b:(k + 1) * b]), y[k * b:(k + 1) * b])
        loss.backward()
        if args.clip_grad_norm:
            norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, args.clip_grad_norm)))
        if base_group is not None:
            lrs.append(base_group["lr"])
        opt.step()
        if scheduler:
            scheduler.step()
        losses.append(loss.item())
    text = "".join(f"{v!r}\n" for v in losses)
    if args.losses:
        with open(args.losses, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    for path, values in ((args.lrs, lrs), (args.grad_norms, norms)):
        if path:
            with open(path, "w") as f:
                f.write("".join(f"{v!r}\n" for v in values))
    if args.save:
        save_safetensors(args.save, state_tensors(net))


def param_groups(net, base_lr, rules):
    """torch param groups for frost's --lr-for rules (the last matching rule
    wins), trainable parameters only, one group per learning rate."""
    lr_of = {name: base_lr for name, _ in net.named_parameters()}
    for rule in rules:
        pattern, _, value = rule.rpartition("=")
        hits = [name for name in lr_of if pattern_matches(pattern, name)]
        if not hits:
            raise JobError(f"--lr-for {rule}: matches no parameter")
        for name in hits:
            lr_of[name] = float(value)
    groups = {}
    for name, p in net.named_parameters():
        if p.requires_grad:
            groups.setdefault(lr_of[name], []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


def make_scheduler(opt, args):
    """frost's --lr-schedule and --warmup-steps as torch schedulers (None:
    constant, no warmup)."""
    S = torch.optim.lr_scheduler
    # SequentialLR itself calls step(0) at the milestone, which torch warns of.
    warnings.filterwarnings("ignore", message="The epoch parameter")
    fields = args.lr_schedule.split(":")
    warmup = args.warmup_steps
    if fields[0] == "step":
        main = S.StepLR(opt, step_size=int(fields[1]),
                        gamma=float(fields[2]) if len(fields) > 2 else 0.1)
    elif fields[0] == "cosine":
        t_max = int(fields[1]) if len(fields) > 1 else args.steps - warmup
        main = S.CosineAnnealingLR(opt, T_max=t_max,
                                   eta_min=float(fields[2]) if len(fields) > 2 else 0.0)
    elif fields[0] == "constant":
        main = None
    else:
        raise JobError(f"--lr-schedule {args.lr_schedule}: unknown")
    if not warmup:
        return main
    if args.warmup_as == "linear":
        first = S.LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0,
                           total_iters=warmup - 1)
    else:
        first = S.LambdaLR(opt, lambda k: (k + 1) / warmup)
    # Constant after the warmup: a factor of 1.
    main = main or S.LambdaLR(opt, lambda k: 1.0)
    return S.SequentialLR(opt, [first, main], milestones=[warmup])


def cmd_compare_column(args):
    with open(args.metrics) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    step_col, col = rows[0].index("step"), rows[0].index(args.column)
    frost = {int(r[step_col]): float(r[col]) for r in rows[1:]}
    with open(args.values) as f:
        ref = [float(line) for line in f if line.strip()]
    if len(ref) != args.steps or sorted(frost) != list(range(1, args.steps + 1)):
        print(f"step counts differ: frost logged {len(frost)} steps, torch {len(ref)}, "
              f"expected {args.steps}")
        return 1
    diffs = [abs(frost[s + 1] - ref[s]) / max(abs(ref[s]), 1e-30) for s in range(args.steps)]
    worst = max(range(args.steps), key=diffs.__getitem__)
    print(f"max relative diff = {diffs[worst]:.2g} at step {worst + 1} "
          f"(frost {frost[worst + 1]:.9g}, torch {ref[worst]:.9g}); "
          f"{ref[0]:.4g} -> {ref[-1]:.4g}")
    return 0 if diffs[worst] <= args.tol else 1


def cmd_compare_losses(args):
    with open(args.metrics) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    step_col, loss_col = rows[0].index("step"), rows[0].index("loss")
    frost = {int(r[step_col]): float(r[loss_col]) for r in rows[1:]}
    with open(args.losses) as f:
        ref = [float(line) for line in f if line.strip()]
    if len(ref) != args.steps or sorted(frost) != list(range(1, args.steps + 1)):
        print(f"step counts differ: frost logged {len(frost)} steps, torch {len(ref)}, "
              f"expected {args.steps}")
        return 1
    diffs = [abs(frost[s + 1] - ref[s]) for s in range(args.steps)]
    worst = max(range(args.steps), key=diffs.__getitem__)
    print(f"max |diff| = {diffs[worst]:.2g} at step {worst + 1} "
          f"(frost {frost[worst + 1]:.6f}, torch {ref[worst]:.7f}); "
          f"loss {ref[0]:.4f} -> {ref[-1]:.4f}")
    return 0 if diffs[worst] <= args.tol else 1


def cmd_compare_weights(args):
    a, b = load_safetensors(args.a), load_safetensors(args.b)
    if [(k, v[0]) for k, v in a.items()] != [(k, v[0]) for k, v in b.items()]:
        print(f"names or shapes differ: {[(k, v[0]) for k, v in a.items()]} vs "
              f"{[(k, v[0]) for k, v in b.items()]}")
        return 1
    worst_abs, worst_rel, where = 0.0, 0.0, "-"
    for name in a:
        if a[name][0][:1] == ("I64",):
            if a[name][1] != b[name][1]:
                print(f"{name}: int64 values differ")
                return 1
            continue
        va, vb = floats(a[name][1]), floats(b[name][1])
        d = max((abs(p - q) for p, q in zip(va, vb)), default=0.0)
        scale = max([1.0] + [abs(q) for q in vb])
        worst_abs = max(worst_abs, d)
        if d / scale >= worst_rel:
            worst_rel, where = d / scale, name
    print(f"max abs diff {worst_abs:.2g}, max rel diff {worst_rel:.2g} (in {where})")
    return 0 if worst_rel <= args.tol else 1


def cmd_same_bits(args):
    a, b = load_safetensors(args.a), load_safetensors(args.b)
    names = [k for k in a if any(pattern_matches(p, k) for p in args.patterns)]
    if not names:
        print("no parameter matches " + " ".join(args.patterns))
        return 1
    changed = [k for k in names if k not in b or a[k] != b[k]]
    print(("changed: " + " ".join(changed)) if changed else ("unchanged: " + " ".join(names)))
    return 1 if changed else 0


def cmd_batch(args):
    failures = 0
    with open(args.jobs) as f:
        jobs = [shlex.split(line) for line in f if line.strip()]
    for argv in jobs:
        try:
            status = run(argv)
        except SystemExit as e:  # argparse's usage errors
            status = e.code
        except (JobError, OSError, ValueError, RuntimeError) as e:
            print(f"torch_reference: {shlex.join(argv)}: {e}", file=sys.stderr)
            status = 1
        failures += status != 0
    return 1 if failures else 0


class RuleAction(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        namespace.rules = namespace.rules + [(option_string.lstrip("-"), value)]


def build_parser():
    parser = argparse.ArgumentParser(prog="torch_reference.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init")
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_init)
    p = sub.add_parser("train")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    p.add_argument("--freeze", action=RuleAction)
    p.add_argument("--unfreeze", action=RuleAction)
    p.add_argument("--losses")
    p.add_argument("--save")
    p.add_argument("--lr-schedule", default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--warmup-as", choices=["lambda", "linear"], default="lambda")
    p.add_argument("--lr-for", action="append", default=[])
    p.add_argument("--clip-grad-norm", type=float, default=0.0)
    p.add_argument("--lrs")
    p.add_argument("--grad-norms")
    p.set_defaults(handler=cmd_train, rules=[])
    p = sub.add_parser("batch")
    p.add_argument("jobs")
    p.set_defaults(handler=cmd_batch)
    p = sub.add_parser("compare-losses")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("metrics")
    p.add_argument("losses")
    p.add_argument("steps", type=int)
    p.set_defaults(handler=cmd_compare_losses)
    p = sub.add_parser("compare-column")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("metrics")
    p.add_argument("column")
    p.add_argument("values")
    p.add_argument("steps", type=int)
    p.set_defaults(handler=cmd_compare_column)
    p = sub.add_parser("compare-weights")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(handler=cmd_compare_weights)
    p = sub.add_parser("same-bits")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("patterns", nargs="+")
    p.set_defaults(handler=cmd_same_bits)
    return parser


def run(argv):
    args = build_parser().parse_args(argv)
    return args.handler(args) or 0


def main():
    try:
        status = run(sys.argv[1:])
    except JobError as e:
        print(f"torch_reference: {e}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
