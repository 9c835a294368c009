#!/usr/bin/python3
"""torch_worker.py - the PyTorch side of bench/run.sh (one workload, one measurement).

Run by bench/bench.py with /usr/bin/python3; prints one JSON line on stdout:
    {"samples_per_s": ..., "interval_rates": [...], "maxrss_mb": ..., "trainable": [...]}

The model is given as JSON layer list (the same list bench.py turns into frost's model spec), so
both sides train the same network:
    [["linear", "fc1", 784, 1024], ["relu"], ["conv2d", "conv1", 1, 32, 3, 1, 0],
     ["maxpool2d", 2, 2], ["flatten"], ...]
Frozen layers get requires_grad = False and are left out of the optimizer (as a fine-tuning user
would do). SGD(lr, momentum), cross-entropy, data preloaded as one float tensor in [0, 1], each
step gathers its batch rows through a shuffled index (as frost does), zero_grad / forward /
backward / step. Timing is the same as frost's --log-every: the STEPS steps are cut into intervals
of LOG_EVERY steps, the first interval is warm-up, the result is the median rate of the others.

With --ranks R > 1 it runs PyTorch DDP (gloo, loopback only) in R processes started with
torch.multiprocessing, each with --threads threads and a contiguous slice of the global batch;
the reported memory is rank 0's (as frost's summary reports rank 0's).

With --rank I as well, this process is rank I of R, started on its own (one per node, as
bench/cluster.sh does in its network namespaces): the ranks meet at --master-addr:--master-port
(rank 0 listens there), gloo uses the interface in GLOO_SOCKET_IFNAME, and rank 0 prints the
JSON line. The result also holds grad_bytes, the bytes of the trainable gradients (what DDP
allreduces each step).
"""
import argparse
import gzip
import json
import os
import resource
import statistics
import struct
import sys
import tempfile
import time


def read_idx(path):
    """IDX file (raw or .gz) as (dims, bytearray of the payload), read straight into one buffer."""
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            break
    else:
        raise FileNotFoundError(path + "[.gz]")
    opener = gzip.open if candidate.endswith(".gz") else open
    with opener(candidate, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        ndim = magic & 0xFF
        dims = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        size = 1
        for d in dims:
            size *= d
        buf = bytearray(size)
        if f.readinto(buf) != size:
            raise ValueError(candidate + ": truncated")
    return dims, buf


def load_train(data_dir, torch):
    dims, pixels = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte"))
    _, labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte"))
    n = dims[0]
    x = torch.frombuffer(pixels, dtype=torch.uint8).reshape(n, 1, dims[1], dims[2])
    x = x.to(torch.float32).div_(255.0)
    y = torch.frombuffer(labels, dtype=torch.uint8).to(torch.int64)
    return x, y


def build_model(layers, torch):
    """The layer list as a module whose parameters have frost's names: a named layer is registered
    under its name (dots making nested modules, as torchvision's `layer1.0.conv1`), a residual
    block ["residual", NAME, BODY, SHORTCUT] is a module computing body(x) + shortcut(x) (the
    identity without a shortcut) in place, as torchvision's BasicBlock does, and the layers run in
    list order."""
    nn = torch.nn

    def register(parent, name, module):
        *path, last = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(last, module)

    def make(parent, layer, i):
        kind = layer[0]
        if kind == "linear":
            module = nn.Linear(layer[2], layer[3])
        elif kind == "conv2d":
            bias = layer[7] if len(layer) > 7 else True
            module = nn.Conv2d(layer[2], layer[3], layer[4], stride=layer[5], padding=layer[6],
                               bias=bias)
        elif kind == "batchnorm2d":
            module = nn.BatchNorm2d(layer[2])
        elif kind == "residual":
            module = Residual(layer[2], layer[3])
        elif kind == "relu":
            return nn.ReLU(inplace=True)
        elif kind == "maxpool2d":
            return nn.MaxPool2d(layer[1], layer[2])
        elif kind == "adaptive_avgpool2d":
            return nn.AdaptiveAvgPool2d(layer[1])
        elif kind == "flatten":
            return nn.Flatten()
        else:
            raise ValueError("unknown layer " + kind)
        register(parent, layer[1], module)
        return module

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body = [make(self, layer, i) for i, layer in enumerate(body)]
            self.shortcut = [make(self, layer, i) for i, layer in enumerate(shortcut)]

        def forward(self, x):
            out, skip = x, x
            for module in self.body:
                out = module(out)
            for module in self.shortcut:
                skip = module(skip)
            return out.add_(skip)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [make(self, layer, i) for i, layer in enumerate(layers)]

        def forward(self, x):
            for module in self.layers:
                x = module(x)
            return x

    return Net(), layers[0][0] == "linear"


def run(rank, args, result_path):
    import torch
    torch.set_num_threads(args.threads)
    ddp = args.ranks > 1
    if ddp:
        import torch.distributed as dist
        if args.rank is None:
            init_method = "file://" + args.rendezvous
        else:
            init_method = "tcp://%s:%d" % (args.master_addr, args.master_port)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=args.ranks)
    torch.manual_seed(args.seed)
    layers = json.loads(args.model)
    model, flat_input = build_model(layers, torch)
    if args.channels_last and not flat_input:
        # NHWC: oneDNN's convolutions take it without reordering to their blocked layout.
        model = model.to(memory_format=torch.channels_last)
    frozen = set(args.frozen.split(",")) if args.frozen else set()
    for name, p in model.named_parameters():
        if name.split(".")[0] in frozen:
            p.requires_grad_(False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum)

    x_all, y_all = load_train(args.data, torch)
    if flat_input:
        x_all = x_all.reshape(x_all.shape[0], -1).contiguous()
    elif args.channels_last:
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    n = x_all.shape[0]
    B = args.batch_size
    # This rank's contiguous slice of the global batch (frost: ranks, then threads).
    lo = rank * B // args.ranks
    hi = (rank + 1) * B // args.ranks
    gen = torch.Generator().manual_seed(args.seed)   # same permutation on every rank
    batches_per_epoch = (n + B - 1) // B
    perm = None
    loss_fn = torch.nn.functional.cross_entropy

    model.train()
    # A frozen BatchNorm runs in eval mode, on its running statistics, as frost's does
    # (torchvision's FrozenBatchNorm2d); the trainable ones use the batch's.
    for name, module in (model.module if ddp else model).named_modules():
        if name.split(".")[0] in frozen and isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    rates = []
    interval_samples = 0
    if ddp:
        dist.barrier()
    t_start = time.perf_counter()
    for step in range(args.steps):
        b = step % batches_per_epoch
        if b == 0:
            perm = torch.randperm(n, generator=gen)
        idx = perm[b * B:min((b + 1) * B, n)]
        interval_samples += len(idx)          # the global batch, as frost counts it
        idx = idx[lo * len(idx) // B:hi * len(idx) // B] if ddp else idx
        x = x_all.index_select(0, idx)
        y = y_all.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0:
            loss_value = loss.item()          # frost reads the loss at every log too
            t = time.perf_counter()
            rates.append(interval_samples / (t - t_start))
            t_start = t
            interval_samples = 0
    measured = rates[1:] if len(rates) > 1 else rates
    result = {
        "samples_per_s": statistics.median(measured) if measured else 0.0,
        "interval_rates": [round(r, 1) for r in rates],
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "trainable": trainable,
        "grad_bytes": grad_bytes,
        "final_loss": loss_value if rates else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0 and result_path is None:
        print(json.dumps(result), flush=True)
    elif rank == 0:
        with open(result_path, "w") as f:
            json.dump(result, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="JSON layer list")
    ap.add_argument("--frozen", default="", help="comma-separated layer names to freeze")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--log-every", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true",
                    help="images and convolutions in torch.channels_last (NHWC) memory format")
    ap.add_argument("--rank", type=int, help="this process is rank RANK of --ranks, started on "
                    "its own; the ranks meet at --master-addr:--master-port")
    ap.add_argument("--master-addr", default="127.0.0.1")
    ap.add_argument("--master-port", type=int, default=29500)
    args = ap.parse_args()
    if args.ranks < 1 or args.batch_size % args.ranks:
        sys.exit("torch_worker: --batch-size must be a multiple of --ranks")
    if args.rank is not None:
        if not 0 <= args.rank < args.ranks or args.ranks < 2:
            sys.exit("torch_worker: --rank must be in 0..ranks-1, with --ranks 2 or more")
        run(args.rank, args, None)
        return

    with tempfile.TemporaryDirectory(prefix="frost-bench-torch.") as tmp:
        result_path = os.path.join(tmp, "result.json")
        if args.ranks == 1:
            run(0, args, result_path)
        else:
            import torch.multiprocessing as mp
            # Loopback only: gloo picks its interface from here.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            args.rendezvous = os.path.join(tmp, "rendezvous")
            mp.spawn(run, args=(args, result_path), nprocs=args.ranks, join=True)
        with open(result_path) as f:
            print(f.read())


if __name__ == "__main__":
    main()
