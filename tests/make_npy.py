"""make_npy.py IDX_DIR OUT_DIR [options] - the same data as NumPy .npy files.

Reads the train- and t10k- IDX pairs of IDX_DIR (raw or gzip'd, as
make_idx.py writes them) and writes OUT_DIR/train_x.npy, train_y.npy,
test_x.npy and test_y.npy, byte for byte what numpy.save would write.
Only the standard library is used, so the tests need no numpy.

  --dtype uint8|float32|float64  images: the pixels, or p / 255 (uint8)
  --layout nhw|nchw|nhwc          (N, H, W), or 4-D with the channels (nhw)
  --channels K                    K channels: channel k is pixel XOR 37k (1)
  --labels u1|i4|i8               the labels' dtype (i8, numpy's default)
  --version 1|2|3                 the .npy format version (1)
  --gzip                          write NAME.npy.gz instead
  --normalize MEAN,STD            float images of (p / 255 - MEAN) / STD, rounded to
                                  float32 once: torchvision's float32 arithmetic when
                                  STD is a power of two (each step is then exact)
"""
import argparse, gzip, os, struct, sys


def read_idx(path):
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            with open(candidate, "rb") as f:
                data = f.read()
            return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    sys.exit(f"make_npy.py: no {path}[.gz]")


def npy_bytes(descr, shape, body, version=1):
    """A .npy file as numpy.save writes it: the header padded with spaces to a
    multiple of 64 bytes, ending in a newline."""
    shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_text)
    length_bytes = 2 if version == 1 else 4
    prefix = 6 + 2 + length_bytes
    padding = -(prefix + len(header) + 1) % 64
    header = (header + " " * padding + "\n").encode("latin1" if version < 3 else "utf8")
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header + body


def convert(images, count, rows, cols, args):
    """The pixels as the asked layout, channels and dtype; returns descr, shape, body."""
    plane = rows * cols
    channels = args.channels
    if args.layout == "nhw" and channels != 1:
        sys.exit("make_npy.py: --layout nhw has one channel")
    values = bytearray()
    for s in range(count):
        sample = images[s * plane:(s + 1) * plane]
        chans = [bytes(p ^ (37 * k % 256) for p in sample) for k in range(channels)]
        if args.layout == "nhwc":
            for i in range(plane):
                values.extend(chans[k][i] for k in range(channels))
        else:
            for k in range(channels):
                values.extend(chans[k])
    if args.layout == "nhw":
        shape = (count, rows, cols)
    elif args.layout == "nchw":
        shape = (count, channels, rows, cols)
    else:
        shape = (count, rows, cols, channels)
    if args.dtype == "uint8":
        if args.normalize:
            sys.exit("make_npy.py: --normalize needs --dtype float32 or float64")
        return "|u1", shape, bytes(values)
    code = "f" if args.dtype == "float32" else "d"
    floats = [p / 255 for p in values]
    if args.dtype == "float32":  # what the loader's p / 255.0f gives
        floats = list(struct.unpack("<%df" % len(floats), struct.pack("<%df" % len(floats), *floats)))
    if args.normalize:
        mean, std = (float(v) for v in args.normalize.split(","))
        floats = [(v - mean) / std for v in floats]
    body = struct.pack("<%d%s" % (len(values), code), *floats)
    return ("<f4" if code == "f" else "<f8"), shape, body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("idx_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="uint8", choices=["uint8", "float32", "float64"])
    parser.add_argument("--layout", default="nhw", choices=["nhw", "nchw", "nhwc"])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--labels", default="i8", choices=["u1", "i4", "i8"])
    parser.add_argument("--version", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--normalize")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for idx_prefix, split in (("train", "train"), ("t10k", "test")):
        images = read_idx(f"{args.idx_dir}/{idx_prefix}-images-idx3-ubyte")
        labels = read_idx(f"{args.idx_dir}/{idx_prefix}-labels-idx1-ubyte")
        count, rows, cols = struct.unpack(">III", images[4:16])
        descr, shape, body = convert(images[16:], count, rows, cols, args)
        label_values = labels[8:]
        code = {"u1": "B", "i4": "i", "i8": "q"}[args.labels]
        label_body = struct.pack("<%d%s" % (len(label_values), code), *label_values)
        label_descr = {"u1": "|u1", "i4": "<i4", "i8": "<i8"}[args.labels]
        for name, data in ((f"{split}_x.npy", npy_bytes(descr, shape, body, args.version)),
                           (f"{split}_y.npy", npy_bytes(label_descr, (count,), label_body,
                                                        args.version))):
            path = os.path.join(args.out_dir, name)
            if args.gzip:
                with gzip.open(path + ".gz", "wb") as f:
                    f.write(data)
            else:
                with open(path, "wb") as f:
                    f.write(data)


if __name__ == "__main__":
    main()
