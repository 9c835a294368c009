"""torch_resnet.py - the PyTorch side of tests/torch_resnet.sh: torchvision's resnet18.

  torch_resnet.py setup DIR
      Writes a small 1x32x32 dataset (IDX, gzip'd: 40 training and 24 test
      images, labels 0-9) into DIR/data, and the initial weights of
      torchvision's resnet18 with a 1-channel conv1 and 10 classes (after
      torch.manual_seed(0)) as the state_dict DIR/init.pt; and the names and
      shapes of that state_dict (DIR/names.txt) and of torchvision's own
      resnet18() (DIR/names18.txt), one `name [shape]` a line, sorted, as
      `frost inspect` prints them.

  torch_resnet.py load PATH.pt
      Loads the state_dict into the 1-channel resnet18 with strict=True and
      prints num_batches_tracked of bn1.

  torch_resnet.py train DIR STEPS BATCH LR MOMENTUM
      Trains DIR/init.pt as `frost train --no-shuffle` does (batch k is
      samples [k*B, (k+1)*B), mean cross-entropy, torch.optim.SGD, the model
      in train mode), writes each step's loss to DIR/torch.losses and the
      state_dict to DIR/torch.pt, then evaluates it in eval mode on the test
      images and writes "loss L accuracy A" to DIR/torch.eval.

  torch_resnet.py compare-losses FROST_METRICS.csv TORCH_LOSSES TOL
  torch_resnet.py compare-state A.safetensors B.safetensors TOL PATTERN [FLOOR]
      Print the largest difference and exit 1 if it is above TOL: per-step
      losses; or, for the tensors whose names match PATTERN (a glob), the
      largest |a - b| / max(max|b|, FLOOR) of a tensor (FLOOR 0 by default;
      integers must be equal).  These
      two need only numpy; PATTERN may be several, separated by commas: the safetensors reader is examples/torch_state.py's.
"""
import fnmatch
import gzip
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import torch_state  # noqa: E402  (examples/torch_state.py: the safetensors reader)

TRAIN, TEST, SIDE, CLASSES = 40, 24, 32, 10


def write_idx(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def read_split(directory, prefix):
    with gzip.open(f"{directory}/{prefix}-images-idx3-ubyte.gz", "rb") as f:
        pixels = np.frombuffer(f.read()[16:], dtype=np.uint8)
    with gzip.open(f"{directory}/{prefix}-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    # frost scales a pixel as (float)p / 255.0f, a correctly rounded float32 division.
    x = pixels.astype(np.float32) / np.float32(255.0)
    return x.reshape(-1, 1, SIDE, SIDE), labels.astype(np.int64)


def make_net():
    import torch
    import torchvision
    net = torchvision.models.resnet18(num_classes=CLASSES)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return net


def cmd_setup(directory):
    import torch
    torch.set_num_threads(1)
    data = os.path.join(directory, "data")
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(7)
    prototypes = rng.integers(0, 256, size=(CLASSES, SIDE * SIDE))
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        labels = rng.integers(0, CLASSES, size=count)
        noise = rng.integers(-60, 61, size=(count, SIDE * SIDE))
        pixels = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        write_idx(f"{data}/{prefix}-images-idx3-ubyte.gz", 0x803, (count, SIDE, SIDE),
                  pixels.tobytes())
        write_idx(f"{data}/{prefix}-labels-idx1-ubyte.gz", 0x801, (count,),
                  labels.astype(np.uint8).tobytes())
    torch.manual_seed(0)
    net = make_net()
    torch.save(net.state_dict(), os.path.join(directory, "init.pt"))
    import torchvision
    for name, model in (("names.txt", net), ("names18.txt", torchvision.models.resnet18())):
        with open(os.path.join(directory, name), "w") as f:
            f.write("".join(sorted(f"{k} [{', '.join(map(str, v.shape))}]\n"
                                   for k, v in model.state_dict().items())))


def cmd_load(path):
    import torch
    net = make_net()
    net.load_state_dict(torch.load(path), strict=True)
    print(f"loaded with strict=True, bn1.num_batches_tracked {net.bn1.num_batches_tracked.item()}")


def cmd_train(directory, steps, batch, lr, momentum):
    import torch
    torch.set_num_threads(1)
    F = torch.nn.functional
    net = make_net()
    net.load_state_dict(torch.load(os.path.join(directory, "init.pt")))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=float(lr), momentum=float(momentum))
    x, y = (torch.from_numpy(a) for a in read_split(os.path.join(directory, "data"), "train"))
    b = int(batch)
    per_epoch = (len(y) + b - 1) // b
    losses = []
    for step in range(int(steps)):
        k = step % per_epoch
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[k * b:(k + 1) * b]), y[k * b:(k + 1) * b])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with open(os.path.join(directory, "torch.losses"), "w") as f:
        f.write("".join(f"{v!r}\n" for v in losses))
    torch.save(net.state_dict(), os.path.join(directory, "torch.pt"))
    net.eval()
    x, y = (torch.from_numpy(a) for a in read_split(os.path.join(directory, "data"), "t10k"))
    with torch.no_grad():
        logits = net(x)
    loss = F.cross_entropy(logits, y).item()
    accuracy = 100.0 * (logits.argmax(1) == y).sum().item() / len(y)
    with open(os.path.join(directory, "torch.eval"), "w") as f:
        f.write(f"loss {loss!r} accuracy {accuracy!r}\n")


def cmd_compare_losses(metrics, losses, tol):
    with open(metrics) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    step_col, loss_col = rows[0].index("step"), rows[0].index("loss")
    frost = [float(r[loss_col]) for r in sorted(rows[1:], key=lambda r: int(r[step_col]))]
    with open(losses) as f:
        ref = [float(line) for line in f if line.strip()]
    if len(frost) != len(ref):
        print(f"frost logged {len(frost)} steps, torch {len(ref)}")
        return 1
    diffs = [abs(a - b) for a, b in zip(frost, ref)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    print(f"max |diff| {diffs[worst]:.2g} at step {worst + 1} (frost {frost[worst]:.6f}, "
          f"torch {ref[worst]:.7f}); loss {ref[0]:.4f} -> {ref[-1]:.4f}")
    return 0 if diffs[worst] <= float(tol) else 1


def cmd_compare_state(path_a, path_b, tol, pattern, floor="0"):
    try:
        a, b = dict(torch_state.read_safetensors(path_a)), dict(torch_state.read_safetensors(path_b))
    except torch_state.ConvertError as e:
        print(e)
        return 1
    names = [n for n in b if any(fnmatch.fnmatchcase(n, p) for p in pattern.split(","))]
    if not names:
        print(f"no tensor matches {pattern}")
        return 1
    worst, where = 0.0, "-"
    for name in names:
        if name not in a or a[name][1].shape != b[name][1].shape:
            print(f"{name}: missing from {path_a} or another shape")
            return 1
        va, vb = a[name][1], b[name][1]
        if va.dtype.kind == "i" or vb.dtype.kind == "i":
            if va.dtype != vb.dtype or not np.array_equal(va, vb):
                print(f"{name}: {va.dtype} {va.tolist()} != {vb.dtype} {vb.tolist()}")
                return 1
            continue
        scale = float(np.max(np.abs(vb))) if vb.size else 0.0
        scale = max(scale, float(floor), 1e-30)
        rel = float(np.max(np.abs(va.astype(np.float64) - vb))) / scale if vb.size else 0.0
        if rel >= worst:
            worst, where = rel, name
    print(f"{len(names)} tensors, " + (f"max relative diff {worst:.2g} (in {where})"
                                        if where != "-" else "all equal"))
    return 0 if worst <= float(tol) else 1


COMMANDS = {"setup": (cmd_setup, 1, 1), "load": (cmd_load, 1, 1), "train": (cmd_train, 5, 5),
            "compare-losses": (cmd_compare_losses, 3, 3), "compare-state": (cmd_compare_state, 4, 5)}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS or \
            not COMMANDS[sys.argv[1]][1] <= len(sys.argv) - 2 <= COMMANDS[sys.argv[1]][2]:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]][0](*sys.argv[2:]) or 0)
