#!/usr/bin/env python3
"""torch_state.py - a PyTorch state_dict to safetensors and back, for frost.

  torch_state.py to-safetensors MODEL.pt OUT.safetensors
      Reads a state_dict saved with torch.save(model.state_dict(), "MODEL.pt")
      and writes every tensor under its name, in the state_dict's order, with
      __metadata__ {"format": "pt"} (what safetensors.torch.save_file writes).
  torch_state.py to-torch IN.safetensors OUT.pt
      Reads a safetensors file (frost's --save or a checkpoint) and writes its
      tensors as a state_dict, ready for model.load_state_dict(torch.load(...)).

frost's names are PyTorch's (conv1.weight [out, in, kh, kw], fc.weight
[out, in], bn1.running_mean, bn1.num_batches_tracked as int64 of shape []),
so a model written the same way on both sides (examples/resnet18.txt is
torchvision's resnet18) exchanges weights with no renaming.

The safetensors format is written and read here by hand, with numpy and the
standard library: an 8-byte little-endian header length, a JSON header
{"NAME": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}
padded with spaces to a multiple of 8, then the raw little-endian data.  torch
is used only to load and save the .pt file.  Output files are written
atomically (a temporary file in the same directory, then a rename).  Errors
are one line on stderr, `torch_state.py: FILE: problem`, and exit status 1.
"""
import collections
import json
import os
import struct
import sys

import numpy as np

PROG = "torch_state.py"

# safetensors dtype -> numpy dtype, little-endian.  BF16 travels as its raw
# 16 bits (numpy has no bfloat16); torch reinterprets them.
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<i2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
NUMPY_TO_DTYPE = {np.dtype(v).str: k for k, v in DTYPES.items() if k != "BF16" and k != "I16"}
NUMPY_TO_DTYPE[np.dtype("<i2").str] = "I16"
# The header of a real file is a few hundred kilobytes at most; the reference
# reader refuses more than 100 MB.
HEADER_LIMIT = 100 * 1000 * 1000


class ConvertError(Exception):
    """A problem with an input or output file, reported as one line."""


def load_torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("torch is needed to read and write .pt files (python3-torch)")
    return torch


# ---------------------------------------------------------- safetensors

def write_safetensors(path, arrays, metadata):
    """Writes (name, (dtype, numpy array)) pairs in order, atomically."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, (dtype, array) in arrays:
        nbytes = array.size * array.itemsize
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, (_, array) in arrays:
                f.write(np.ascontiguousarray(array).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConvertError(f"{path}: cannot write: {e.strerror}")


def read_safetensors(path):
    """[(name, (dtype, numpy array))] in the order of the tensors' data, after
    checking what the reference reader checks: the header's size and syntax,
    known dtypes, shapes of non-negative integers, and data offsets that match
    the shapes and cover the data exactly."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ConvertError(f"{path}: cannot read: {e.strerror}")
    if len(blob) < 8:
        raise ConvertError(f"{path}: {len(blob)} bytes, too short for a safetensors file")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > HEADER_LIMIT or 8 + length > len(blob):
        raise ConvertError(f"{path}: header length {length} does not fit a file of "
                           f"{len(blob)} bytes; not a safetensors file?")
    try:
        header = json.loads(blob[8:8 + length].decode("utf-8"),
                            object_pairs_hook=collections.OrderedDict)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvertError(f"{path}: header is not valid JSON ({e})")
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + length:]
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ConvertError(f"{path}: {name}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise ConvertError(f"{path}: {name}: unsupported dtype {dtype!r} "
                               f"(supported: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ConvertError(f"{path}: {name}: shape {shape!r} is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) \
                or not 0 <= offsets[0] <= offsets[1]:
            raise ConvertError(f"{path}: {name}: data_offsets {offsets!r} are not [begin, end]")
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        want = int(np.prod(shape, dtype=np.int64)) * itemsize
        if offsets[1] - offsets[0] != want:
            raise ConvertError(f"{path}: {name}: {offsets[1] - offsets[0]} bytes for "
                               f"{dtype} {shape}, which needs {want}")
        entries.append((offsets[0], offsets[1], name, dtype, shape))
    entries.sort()
    end = 0
    for begin, stop, name, _, _ in entries:
        if begin != end:
            raise ConvertError(f"{path}: {name}: data starts at {begin}, expected {end} "
                               f"(tensors overlap or leave a hole)")
        end = stop
    if end != len(data):
        raise ConvertError(f"{path}: the tensors cover {end} bytes of data, the file "
                           f"has {len(data)}")
    return [(name, (dtype, np.frombuffer(data[begin:stop], dtype=DTYPES[dtype])
                    .reshape(shape).copy()))
            for begin, stop, name, dtype, shape in entries]


# ------------------------------------------------------------- commands

def to_safetensors(source, target):
    torch = load_torch()
    try:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except TypeError:  # a torch without weights_only
            state = torch.load(source, map_location="cpu")
    except FileNotFoundError:
        raise ConvertError(f"{source}: no such file")
    except Exception as e:  # torch raises many kinds for a file it cannot read
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise ConvertError(f"{source}: not a state_dict file torch.load(weights_only=True) "
                           f"reads ({detail[0] if detail else type(e).__name__}); "
                           f"save model.state_dict()")
    if not isinstance(state, dict):
        raise ConvertError(f"{source}: holds a {type(state).__name__}, not a state_dict "
                           f"(save model.state_dict(), not the model)")
    arrays = []
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ConvertError(f"{source}: entry {name!r} is a {type(tensor).__name__}, "
                               f"not a tensor; not a state_dict?")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            arrays.append((name, ("BF16", tensor.view(torch.int16).numpy())))
            continue
        try:
            array = tensor.numpy()
        except TypeError:
            array = None
        dtype = NUMPY_TO_DTYPE.get(array.dtype.newbyteorder("<").str) if array is not None else None
        if dtype is None:
            raise ConvertError(f"{source}: {name}: dtype {tensor.dtype} has no safetensors "
                               f"equivalent here")
        arrays.append((name, (dtype, array.astype(DTYPES[dtype], copy=False))))
    write_safetensors(target, arrays, {"format": "pt"})
    return len(arrays)


def to_torch(source, target):
    arrays = read_safetensors(source)
    torch = load_torch()
    state = collections.OrderedDict()
    for name, (dtype, array) in arrays:
        tensor = torch.from_numpy(array)
        state[name] = tensor.view(torch.bfloat16) if dtype == "BF16" else tensor
    tmp = f"{target}.tmp.{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as e:  # torch.save raises RuntimeError for a bad path
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConvertError(f"{target}: cannot write: {getattr(e, 'strerror', None) or e}")
    return len(state)


COMMANDS = {"to-safetensors": to_safetensors, "to-torch": to_torch}
USAGE = (f"usage: {PROG} to-safetensors MODEL.pt OUT.safetensors\n"
         f"       {PROG} to-torch IN.safetensors OUT.pt")


def main(argv):
    if len(argv) == 1 and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if len(argv) != 3 or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        count = COMMANDS[argv[0]](argv[1], argv[2])
    except ConvertError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(f"{argv[2]}: {count} tensors from {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
