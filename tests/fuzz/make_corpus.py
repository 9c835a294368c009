#!/usr/bin/env python3
"""make_corpus.py - (re)write the fuzzers' seed corpora under tests/fuzz/corpus/.

    python3 tests/fuzz/make_corpus.py [CORPUS_DIR]

The seeds are small valid inputs and near-valid variants of them, so the
fuzzers start deep inside the parsers instead of at their first check:
  corpus/model/        model texts (DESIGN.md's and variants); after a NUL
                       byte, freeze/unfreeze patterns (fuzz_model.c)
  corpus/safetensors/  weights and a checkpoint of fuzz_safetensors.c's model
                       ("input 1 2 2; fc1 = linear(4, 3); relu; fc2 = linear(3, 2)")
  corpus/idx/          a 2-byte little-endian label-file length, the label
                       file, the image file; raw and gzip'd (fuzz_idx.c)
  corpus/npy/          the same framing around NumPy .npy files: labels and
                       images of each dtype, layout and format version
                       (fuzz_npy.c)
The output is deterministic (fixed values, gzip mtime 0), so rerunning it
changes nothing.
"""
import gzip
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


# ------------------------------------------------------------------ models

DESIGN = """input 1 28 28
conv1 = conv2d(1, 32, 3)        # in, out, kernel[, stride[, padding]]
relu
conv2 = conv2d(32, 64, 3)
relu
maxpool2d(2)
flatten
fc1 = linear(9216, 128)
relu
fc2 = linear(128, 10)
"""

MODELS = {
    "design.txt": DESIGN,
    "design_freeze.txt": DESIGN + "\0conv*\0conv2\0*.bias\0fc[12].weight",
    "inline.txt": "fc1 = linear(784, 64); relu; fc2 = linear(64, 10)",
    "inline_freeze.txt": "fc1 = linear(784, 64); relu; fc2 = linear(64, 10)\0*\0fc2",
    "keywords.txt": "input 3, 32, 32\nc = Conv2d(3, 8, kernel_size=3, stride=2, padding=1)\n"
                    "ReLU()\nMaxPool2d(kernel=2, stride=1)\nFlatten()\nout = Linear(in_features=1800, out_features=4)\n",
    "unnamed.txt": "conv2d(1, 4, 5)\nrelu\nmaxpool2d(2, 2)\nflatten\nlinear(576, 10)\0" "0\0" "4.*\0" "*",
    "small.txt": "input 1 2 2\nfc1 = linear(4, 3)\nrelu\nfc2 = linear(3, 2)\n",
    "comments.txt": "# a comment\n\n  input 1 4 4 # trailing\n;;\nflatten ; fc = linear(16, 2) # end",
    "vector.txt": "input 5 1 1\nlinear(5, 5)\nrelu\nlinear(5, 1)",
    "crlf.txt": "input 1 8 8\r\nconv2d(1, 2, 3, 1, 1)\r\nflatten\r\nlinear(128, 3)\r\n",
    # Near misses: each should fail with a one-line message.
    "bad_shape.txt": "input 1 28 28\nconv1 = conv2d(1, 32, 3)\nflatten\nfc1 = linear(100, 10)\n",
    "bad_kind.txt": "fc1 = lineer(784, 10)",
    "bad_args.txt": "conv2d(1, 2)\nlinear(1, 2, 3)\nmaxpool2d(stride=2)",
    "bad_keyword.txt": "conv2d(1, 2, kernel_size=3, 4)",
    "bad_input.txt": "relu\ninput 1 2 3\ninput 1 2",
    "bad_number.txt": "linear(-1, 10); linear(1e3, 2); linear(99999999999, 1); linear(0x10, 2)",
    "bad_name.txt": "fc.1 = linear(4, 2)\nfc = relu\nfc = relu",
    "bad_paren.txt": "linear(4, 2\nrelu)\nflatten()()",
    "big.txt": "input 1000 1000 100\nconv2d(1000, 1000000, 1000, 1, 1000000)\nflatten\nlinear(1000000, 1000000)",
    "empty.txt": "  # nothing\n;\n",
    "no_input_relu.txt": "relu\nlinear(4, 2)",
    # Found by fuzz_model: a pattern or layer name with a newline put a second
    # line into the error message (fixed in freeze.c).
    "regress_freeze_newline.txt": "fc1 = linear(4, 2)\0no\nmatch\0x\ny\0fc\r2",
}

# ----------------------------------------------------------- safetensors

SMALL_PARAMS = [("fc1.weight", [3, 4]), ("fc1.bias", [3]), ("fc2.weight", [2, 3]), ("fc2.bias", [2])]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def safetensors(tensors, metadata=None, pad=True, gaps=None, header_override=None):
    """tensors: list of (name, shape, values); gaps: bytes of padding before each tensor."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for i, (name, shape, values) in enumerate(tensors):
        if gaps:
            data += b"\0" * gaps[i]
        begin = len(data)
        data += struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(data)]}
    text = header_override if header_override is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def values(shape, seed):
    return [((i * 7 + seed * 13) % 17 - 8) / 8.0 for i in range(numel(shape))]


def small_weights(extra=(), metadata=None, **kw):
    tensors = [(n, s, values(s, i)) for i, (n, s) in enumerate(SMALL_PARAMS)]
    tensors += list(extra)
    return safetensors(tensors, metadata=metadata, **kw)


def safetensors_seeds():
    seeds = {}
    seeds["weights.safetensors"] = small_weights(metadata={"format": "pt"})
    seeds["weights_nometa.safetensors"] = small_weights()
    momentum = [(n + ".momentum", s, values(s, 5 + i)) for i, (n, s) in enumerate(SMALL_PARAMS)]
    seeds["checkpoint.safetensors"] = small_weights(
        extra=momentum,
        metadata={"format": "pt", "frost.checkpoint": "1", "frost.step": "12",
                  "frost.optimizer": "sgd", "frost.frozen": "",
                  "frost.param_steps": "fc1.weight=12,fc1.bias=12,fc2.weight=12,fc2.bias=12"})
    # Holes before and between tensors: refused, as the reference's InvalidOffset.
    seeds["gaps.safetensors"] = small_weights(gaps=[2, 1, 0, 3])
    # Bytes after the last tensor (a polyglot file): refused, as the reference's
    # MetadataIncompleteBuffer.
    seeds["polyglot.safetensors"] = small_weights(metadata={"format": "pt"}) + b"<html></html>"
    # Valid in the reference: keys a tensor entry does not need are ignored
    # (any JSON value), __metadata__ may be null, whitespace may come first,
    # tensors in any order, empty ones anywhere.
    seeds["ignored_keys.safetensors"] = safetensors(
        [("x", [1], [2.0])],
        header_override='\t\n {"__metadata__":null,"x":{"note":[1,-2.5e+3,{"k":null},true,"s"],'
                        '"dtype":"F32","shape":[1],"data_offsets":[0,4],"more":{}}}')
    seeds["any_order.safetensors"] = safetensors(
        [("a", [2], [1.0, 2.0]), ("b", [1], [3.0])],
        header_override='{"e":{"dtype":"F32","shape":[0],"data_offsets":[12,12]},'
                        '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},'
                        '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')
    seeds["unpadded.safetensors"] = small_weights(metadata={"format": "pt"}, pad=False)
    seeds["scalar_empty.safetensors"] = safetensors(
        [("s", [], [1.5]), ("e", [0], []), ("z", [2, 0, 3], []), ("m", [1, 1, 1, 2], [1.0, -2.0])],
        metadata={"k": "v"})
    esc = '{"__metadata__":{"a\\"b":"\\u00e9\\ud83d\\ude00\\n\\t\\/"},' \
          '"fc\\u0031.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    seeds["escapes.safetensors"] = safetensors([("x", [1], [2.0])], header_override=esc)
    seeds["wrong_shape.safetensors"] = safetensors(
        [(n, [numel(s)], values(s, 0)) for n, s in SMALL_PARAMS])
    seeds["extra_tensor.safetensors"] = small_weights(extra=[("fc3.weight", [1], [0.0])])
    seeds["missing_tensor.safetensors"] = safetensors(
        [(n, s, values(s, 0)) for n, s in SMALL_PARAMS[:3]])
    bad = small_weights(metadata={"format": "pt"})
    seeds["truncated.safetensors"] = bad[:-5]
    seeds["bad_dtype.safetensors"] = bad.replace(b'"F32"', b'"F16"', 1)
    seeds["overlap.safetensors"] = safetensors(
        [("a", [2], [1.0, 2.0])],
        header_override='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                        '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')
    seeds["big_length.safetensors"] = struct.pack("<Q", 1 << 62) + b"{}"
    seeds["trailing_comma.safetensors"] = safetensors(
        [], header_override='{"a":{"dtype":"F32","shape":[0,],"data_offsets":[0,0]},}')
    # An I64 tensor (a BatchNorm's num_batches_tracked) at an offset that is
    # not 8-aligned, beside F32 ones: the reader keeps it apart from the floats.
    body = struct.pack("<f", 1.5) + struct.pack("<q", 12) + struct.pack("<2q", -1, 1 << 40)
    header = ('{"bn.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
              '"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[4,12]},'
              '"pair":{"dtype":"I64","shape":[2],"data_offsets":[12,28]}}').encode()
    header += b" " * (-len(header) % 8)
    seeds["i64.safetensors"] = struct.pack("<Q", len(header)) + header + body
    return seeds


# --------------------------------------------------------------------- IDX

def idx_images(count, rows, cols, seed=0):
    pixels = bytes(((i * 37 + seed * 11) % 256) for i in range(count * rows * cols))
    return struct.pack(">IIII", 0x803, count, rows, cols) + pixels


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def idx_input(labels, images):
    return struct.pack("<H", len(labels)) + labels + images


def idx_seeds():
    labels = idx_labels([0, 3, 7, 9, 2])
    images = idx_images(5, 3, 4)
    big_labels = idx_labels([i % 10 for i in range(100)])
    big_images = idx_images(100, 8, 8, 2)
    seeds = {
        "raw.idx": idx_input(labels, images),
        "gz.idx": idx_input(gz(labels), gz(images)),
        "raw_labels_gz_images.idx": idx_input(labels, gz(images)),
        "one.idx": idx_input(idx_labels([255]), idx_images(1, 1, 1, 3)),
        "many_classes.idx": idx_input(idx_labels(list(range(0, 256, 15))), idx_images(18, 2, 2, 1)),
        # Two gzip members, as `cat a.gz b.gz` makes.
        "gz_members.idx": idx_input(gz(labels[:6]) + gz(labels[6:]), gz(images[:20]) + gz(images[20:])),
        # The gzip trailer's size covers only the last member: here it
        # understates the output, so the reader has to grow its buffer.
        "gz_members_grow.idx": idx_input(gz(big_labels), gz(big_images[:6000]) + gz(big_images[6000:])),
        # Near misses.
        "count_mismatch.idx": idx_input(idx_labels([1, 2, 3]), images),
        "swapped.idx": idx_input(images[:200], labels),
        "truncated.idx": idx_input(labels, images[:-3]),
        "trailing.idx": idx_input(labels, images + b"\0"),
        "truncated_gz.idx": idx_input(gz(labels), gz(images)[:-6]),
        "zero_dim.idx": idx_input(idx_labels([]), idx_images(0, 28, 28)),
        "huge_header.idx": idx_input(labels, struct.pack(">IIII", 0x803, 100000000, 4096, 4096)),
    }
    return seeds


# ------------------------------------------------------------------- NumPy

def npy(descr, shape, body, version=1, fortran=False, header=None):
    """A .npy file as numpy.save writes it (header padded to 64 bytes)."""
    if header is None:
        dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims)
    length_bytes = 2 if version == 1 else 4
    header += " " * (-(8 + length_bytes + len(header) + 1) % 64) + "\n"
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header.encode() + body


def npy_seeds():
    labels_i8 = npy("<i8", (4,), struct.pack("<4q", 3, 0, 9, 255))
    labels_u1 = npy("|u1", (4,), bytes([1, 2, 3, 4]))
    pixels = bytes((i * 37) % 256 for i in range(4 * 3 * 2 * 2))
    floats = struct.pack("<48f", *((i - 20) / 7 for i in range(48)))
    seeds = {
        "u8_nhw.npy": idx_input(labels_i8, npy("|u1", (4, 6, 2), pixels)),
        "u8_nchw_v2.npy": idx_input(labels_u1, npy("|u1", (4, 3, 2, 2), pixels, version=2)),
        "f4_nhwc_v3.npy": idx_input(npy("<i4", (4,), struct.pack("<4i", 1, 1, 0, 7), version=3),
                                    npy("<f4", (4, 2, 2, 3), floats, version=3)),
        "f8_features.npy": idx_input(npy("<u2", (4,), struct.pack("<4H", 5, 4, 3, 2)),
                                     npy("<f8", (4, 12), struct.pack("<48d", *range(48)))),
        "gz.npy": idx_input(gz(labels_i8), gz(npy("|u1", (4, 1, 3, 4), pixels))),
        "dict_variants.npy": idx_input(
            npy(None, None, struct.pack("<4Q", 0, 1, 2, 3),
                header='{ "shape":(4L,),"descr":"<u8","fortran_order":False }'),
            npy("|u1", (4, 12), pixels)),
        # Near misses.
        "fortran.npy": idx_input(labels_i8, npy("|u1", (4, 6, 2), pixels, fortran=True)),
        "big_endian.npy": idx_input(labels_i8, npy(">f4", (4, 12), floats)),
        "float16.npy": idx_input(labels_i8, npy("<f2", (4, 12), bytes(96))),
        "structured.npy": idx_input(labels_i8, npy(None, None, pixels,
                                                   header="{'descr': [('a', '|u1')], "
                                                          "'fortran_order': False, 'shape': (48,), }")),
        "count_mismatch.npy": idx_input(labels_u1, npy("|u1", (3, 16), pixels)),
        "label_range.npy": idx_input(npy("<i8", (4,), struct.pack("<4q", -1, 256, 0, 1)),
                                     npy("|u1", (4, 12), pixels)),
        "float_labels.npy": idx_input(npy("<f4", (4,), struct.pack("<4f", 0, 1, 2, 3)),
                                      npy("|u1", (4, 12), pixels)),
        "truncated.npy": idx_input(labels_i8, npy("|u1", (4, 6, 2), pixels)[:-5]),
        "trailing.npy": idx_input(labels_i8, npy("|u1", (4, 6, 2), pixels) + b"\0\0"),
        "nan.npy": idx_input(labels_i8, npy("<f4", (4, 12), floats[:-4] + struct.pack("<f", float("nan")))),
        "huge_shape.npy": idx_input(labels_i8, npy("|u1", (4611686018427387904, 4), b"")),
        "version4.npy": idx_input(labels_i8, npy("|u1", (4, 12), pixels)[:6] + b"\x04\x00" +
                                  npy("|u1", (4, 12), pixels)[8:]),
    }
    return seeds


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    for name, text in MODELS.items():
        write(os.path.join(root, "model"), name, text)
    for name, data in safetensors_seeds().items():
        write(os.path.join(root, "safetensors"), name, data)
    for name, data in idx_seeds().items():
        write(os.path.join(root, "idx"), name, data)
    for name, data in npy_seeds().items():
        write(os.path.join(root, "npy"), name, data)


if __name__ == "__main__":
    main()
