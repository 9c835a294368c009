"""torch_unfreeze.py - the PyTorch side of tests/torch_unfreeze.sh: training
across frost's --unfreeze-at and --freeze-at points the way PyTorch Lightning's
BackboneFinetuning does it.

  torch_unfreeze.py train --model SPEC --data DIR --init W.safetensors --steps S
                          --batch-size B --lr X [--momentum X] [--nesterov]
                          [--weight-decay X] [--optimizer sgd|adam|adamw]
                          [--freeze P]... [--unfreeze P]...
                          [--unfreeze-at POINT:P]... [--freeze-at POINT:P]...
                          [--losses FILE] [--save F]
      torch_reference.py's `train` (the run `frost train --no-shuffle` does),
      with frost's schedule: POINT is an epoch E (before its first step, after
      (E-1) x batches-per-epoch steps) or sN (after N steps).  At a point the
      matched parameters' requires_grad changes; the parameters that became
      trainable and are in no param group yet go into a new param group
      (optimizer.add_param_group, as BackboneFinetuning's unfreeze_and_add_
      param_group does), so their optimizer state starts fresh; a frozen
      parameter's grad stays None, so the optimizer skips it.  A BatchNorm
      whose parameters are all frozen runs in eval mode, as in frost.

  torch_unfreeze.py batch JOBS
      Every line of JOBS (a command line of this script) in this one process.

Parameters that are unfrozen again after a --freeze-at would keep their old
state in PyTorch and start afresh in frost: the tests do not do that.
"""
import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402  the model grammar, data and files


def resolve(point, batches_per_epoch):
    """frost's POINT:PATTERN -> (steps done when it applies, pattern)."""
    where, pattern = point.split(":", 1)
    if where.startswith("s"):
        return int(where[1:]), pattern
    return (int(where) - 1) * batches_per_epoch, pattern


def set_modes(net, torch):
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.affine and \
                not any(p.requires_grad for p in m.parameters()):
            m.eval()


def apply_rule(net, rule, pattern):
    hits = [p for name, p in net.named_parameters() if ref.pattern_matches(pattern, name)]
    if not hits:
        raise ref.JobError(f"--{rule} {pattern}: matches no parameter")
    for p in hits:
        p.requires_grad_(rule in ("unfreeze", "unfreeze-at"))


def cmd_train(args):
    torch = ref.need_torch()
    F = torch.nn.functional
    net = ref.make_net(args.model)
    weights = ref.load_safetensors(args.init)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.tensor(ref.floats(weights[name][1])).reshape(p.shape))
    x, y = ref.load_train(args.data)
    n, b = x.shape[0], args.batch_size
    batches_per_epoch = (n + b - 1) // b
    points = [(resolve(point, batches_per_epoch), rule) for rule, point in args.points]
    for rule, pattern in args.rules:
        apply_rule(net, rule, pattern)
    for (step, pattern), rule in points:
        if step == 0:
            apply_rule(net, rule, pattern)

    in_optimizer = set()

    def take(params):
        in_optimizer.update(id(p) for p in params)
        return params

    trainable = take([p for p in net.parameters() if p.requires_grad])
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum,
                              nesterov=args.nesterov, weight_decay=args.weight_decay)
    elif args.optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)

    losses = []
    for step in range(args.steps):
        if step > 0 and any(s == step for (s, _), _ in points):
            for (s, pattern), rule in points:
                if s == step:
                    apply_rule(net, rule, pattern)
            fresh = [p for p in net.parameters() if p.requires_grad and id(p) not in in_optimizer]
            if fresh:
                opt.add_param_group({"params": take(fresh)})
        set_modes(net, torch)
        k = step % batches_per_epoch  # --no-shuffle: each epoch in dataset order
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[k * b:(k + 1) * b]), y[k * b:(k + 1) * b])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with open(args.losses, "w") as f:
        f.write("".join(f"{v!r}\n" for v in losses))
    if args.save:
        ref.save_safetensors(args.save, ref.state_tensors(net))


class Append(argparse.Action):
    """--freeze/--unfreeze into rules, --unfreeze-at/--freeze-at into points, in order."""
    def __call__(self, parser, namespace, value, option_string=None):
        rule = option_string.lstrip("-")
        key = "points" if rule.endswith("-at") else "rules"
        setattr(namespace, key, getattr(namespace, key) + [(rule, value)])


def build_parser():
    parser = argparse.ArgumentParser(prog="torch_unfreeze.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    for name in ("--model", "--data", "--init", "--losses"):
        p.add_argument(name, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    for name in ("--freeze", "--unfreeze", "--unfreeze-at", "--freeze-at"):
        p.add_argument(name, action=Append)
    p.add_argument("--save")
    p.set_defaults(handler=cmd_train, rules=[], points=[])
    p = sub.add_parser("batch")
    p.add_argument("jobs")
    p.set_defaults(handler=cmd_batch)
    return parser


def run(argv):
    args = build_parser().parse_args(argv)
    return args.handler(args) or 0


def cmd_batch(args):
    failures = 0
    with open(args.jobs) as f:
        jobs = [shlex.split(line) for line in f if line.strip()]
    for argv in jobs:
        try:
            status = run(argv)
        except SystemExit as e:  # argparse's usage errors
            status = e.code
        except (ref.JobError, OSError, ValueError, RuntimeError, KeyError) as e:
            print(f"torch_unfreeze: {shlex.join(argv)}: {e!r}", file=sys.stderr)
            status = 1
        failures += status != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
