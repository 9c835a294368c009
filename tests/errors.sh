#!/bin/sh
# errors.sh - every kind of bad input, as a table: one row per kind.
#
# Each row runs frost once and checks what frost(1)'s EXIT STATUS promises:
#   - exit status 1 (not 0, not a crash: >= 128, not a hang: `timeout` kills it),
#   - exactly one line on stderr, `frost: ...`, matching the row's pattern
#     (which names the file, where there is one, and the problem),
#   - no output file: rows pass --save/--metrics/--checkpoint into a fresh
#     directory $O, which must still be empty afterwards (no partial file, no
#     leftover PATH.tmp.PID),
#   - no training step ran: stdout holds no progress line.  The output-path
#     rows ask for 2000 steps with a progress line after every one, so a path
#     that was checked only when it is written, after training, would show.
. "$TOP_SRCDIR/tests/common.sh"

# A frost start costs about a second, most of it Open MPI setting up its
# singleton runtime and network transports.  Every run here is one process
# (no mpirun), so tell Open MPI (ignored by other MPIs and --without-mpi) to
# start no runtime daemon and load only the in-process transport.
OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self
OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx
export OMPI_MCA_ess_singleton_isolated OMPI_MCA_pml OMPI_MCA_btl OMPI_MCA_mtl OMPI_MCA_osc

D="$WORK/data"            # good data
BAD="$WORK/bad"           # a copy of it that a row's setup breaks
O="$WORK/out"             # where rows write their outputs: must stay empty
KEEP="$WORK/keep"         # a good checkpoint that a failing run must not replace
W="$WORK/w.safetensors"   # good weights of $MLP
CK="$WORK/ck.safetensors" # a good checkpoint of $MLP
MLP='fc1 = linear(784, 32); relu; fc2 = linear(32, 10)'
MLP16='fc1 = linear(784, 16); relu; fc2 = linear(16, 10)' # used in the table (eval)
mkdir -p "$D" "$KEEP"
make_idx "$D" 200 3
"$FROST" train --model "$MLP" --data "$D" --steps 2 --momentum 0.9 --save "$W" \
    --checkpoint "$CK" > "$WORK/fixture.txt" 2>&1
ok $? "fixture: a short run writes the weights and checkpoint the rows start from"
cp "$CK" "$KEEP/ck.safetensors"
keep_sum=$(cksum < "$KEEP/ck.safetensors")

if command -v timeout > /dev/null 2>&1; then
    TIMEOUT="timeout -k 5 60" # frost takes TERM as "checkpoint and stop": -k ends a hang
else
    TIMEOUT=
fi
# ------------------------------------------------------- crafted inputs
# One python3 run (starting one can take a second) makes every broken file
# the rows use: safetensors files next to $W, named after what is wrong with
# them, and broken IDX members in $C that the data setups below put in place.
C="$WORK/crafted"
mkdir -p "$C"
"$PYTHON3" - "$WORK" "$D" "$C" <<'PY'
import gzip, json, struct, sys
work, good, crafted = sys.argv[1:4]

def read(path):
    with open(path, "rb") as f:
        return f.read()

def write(path, data):
    with open(path, "wb") as f:
        f.write(data)

# safetensors: the good weights and checkpoint, cut up and edited
w = read(f"{work}/w.safetensors")
ck = read(f"{work}/ck.safetensors")
n = struct.unpack("<Q", w[:8])[0]
header, body = w[8:8 + n], w[8 + n:]
tensors = json.loads(header)

def with_value(name, index, x):
    """The weights with one float of tensor `name` replaced by x."""
    edited = bytearray(body)
    begin = tensors[name]["data_offsets"][0] + 4 * index
    edited[begin:begin + 4] = struct.pack("<f", x)
    return w[:8 + n] + bytes(edited)

broken_json = b'{"fc1.weight": [1, 2'
broken_json += b" " * (-len(broken_json) % 8)
for name, data in {
    "text": b"not a safetensors file",
    "empty": b"",
    "half": w[:len(w) // 2],                          # data section cut short
    "short": w[:20],                                  # header cut short
    "huge": struct.pack("<Q", 1 << 62) + w[8:],       # absurd header length
    "long": struct.pack("<Q", len(w)) + w[8:],        # header length past the end
    "json": struct.pack("<Q", len(broken_json)) + broken_json + body,
    "f16": w[:8] + header.replace(b'"F32"', b'"F16"', 1) + body,
    "nan": with_value("fc2.weight", 3, float("nan")),
    "inf": with_value("fc1.bias", 0, float("inf")),
    "cut": ck[:-100],                                 # a truncated checkpoint
}.items():
    write(f"{work}/{name}.safetensors", data)

# IDX: decompressed members of the good data, edited, stored gzip'd (or raw)
images = gzip.decompress(read(f"{good}/train-images-idx3-ubyte.gz"))
labels = gzip.decompress(read(f"{good}/train-labels-idx1-ubyte.gz"))
test_labels = gzip.decompress(read(f"{good}/t10k-labels-idx1-ubyte.gz"))
count = struct.unpack(">I", images[4:8])[0]
n_test = struct.unpack(">I", test_labels[4:8])[0]
gz_images = read(f"{good}/train-images-idx3-ubyte.gz")
for name, data in {
    "images-label-magic": struct.pack(">I", 0x801) + images[4:],
    "labels-image-magic": struct.pack(">I", 0x803) + labels[4:],
    "images-truncated": images[:len(images) // 2],
    "labels-150": labels[:4] + struct.pack(">I", 150) + labels[8:8 + 150],
    "images-14x14": struct.pack(">IIII", 0x803, count, 14, 14) + bytes(count * 196),
    "t10k-images-14x14": struct.pack(">IIII", 0x803, n_test, 14, 14) + bytes(n_test * 196),
    "labels-12": labels[:13] + bytes([12]) + labels[14:],
    "t10k-labels-200": test_labels[:9] + bytes([200]) + test_labels[10:],
}.items():
    write(f"{crafted}/{name}.gz", gzip.compress(data))
write(f"{crafted}/images-raw-truncated", images[:1000])
write(f"{crafted}/images-corrupt-gzip.gz", gz_images[:20] + b"\xff" * 40 + gz_images[60:])
write(f"{crafted}/images-truncated-gzip.gz", gz_images[:len(gz_images) // 2])
PY
ok $? "fixture: python3 crafts the broken inputs"

# NumPy data: $NPY is $D as .npy files, $NPY_NHWC and $NPY_NCHW 3-channel
# (N, H, W, C) and (N, C, H, W) copies; one python3 run crafts the broken
# .npy members into $C.
NPY="$WORK/npy" NPY_NHWC="$WORK/npy-nhwc" NPY_NCHW="$WORK/npy-nchw"
RGB='input 3 28 28; conv1 = conv2d(3, 4, 3); relu; flatten; fc = linear(2704, 10)'
"$PYTHON3" "$TOP_SRCDIR/tests/make_npy.py" "$D" "$NPY" &&
    "$PYTHON3" "$TOP_SRCDIR/tests/make_npy.py" "$D" "$NPY_NHWC" --layout nhwc --channels 3 &&
    "$PYTHON3" "$TOP_SRCDIR/tests/make_npy.py" "$D" "$NPY_NCHW" --layout nchw --channels 3 &&
    "$PYTHON3" - "$NPY" "$C" <<'PY'
import struct, sys
good, crafted = sys.argv[1:3]

def read(path):
    with open(path, "rb") as f:
        return f.read()

def npy(descr, shape, body, fortran=False, header=None):
    if header is None:
        dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims)
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body

def body(data):
    return data[10 + struct.unpack("<H", data[8:10])[0]:]

x, y = read(f"{good}/train_x.npy"), read(f"{good}/train_y.npy")
pixels, labels = body(x), list(struct.unpack("<%dq" % (len(body(y)) // 8), body(y)))
test_labels = list(struct.unpack("<%dq" % (len(body(read(f"{good}/test_y.npy"))) // 8),
                                 body(read(f"{good}/test_y.npy"))))
n = len(labels)

def int64(values):
    return struct.pack("<%dq" % len(values), *values)

floats = [p / 255 for p in pixels]
floats[3 * 784 + 100] = float("nan")
for name, data in {
    "x-text": b"not a .npy file",
    "x-v4": x[:6] + b"\x04\x00" + x[8:],
    "x-fortran": npy("|u1", (n, 28, 28), pixels, fortran=True),
    "x-big-endian": npy(">f4", (n, 28, 28), struct.pack(">%df" % len(pixels), *pixels)),
    "x-f2": npy("<f2", (n, 28, 28), bytes(2 * len(pixels))),
    "x-i8": npy("<i8", (n, 28, 28), int64(pixels)),
    "x-header": npy(None, None, pixels, header="{'descr': '|u1', 'fortran_order': False "
                                               "'shape': (%d, 28, 28)}" % n),
    "x-truncated": x[:-1000],
    "x-nan": npy("<f4", (n, 28, 28), struct.pack("<%df" % len(floats), *floats)),
    "x-14x14": npy("|u1", (n, 14, 14), bytes(n * 196)),
    "y-float": npy("<f8", (n,), struct.pack("<%dd" % n, *labels)),
    "y-2d": npy("<i8", (n, 1), int64(labels)),
    "y-150": npy("<i8", (150,), int64(labels[:150])),
    "y-trailing": y + bytes(8),
    "y-negative": npy("<i8", (n,), int64(labels[:7] + [-1] + labels[8:])),
    "test-y-12": npy("<i8", (len(test_labels),), int64(test_labels[:1] + [12] + test_labels[2:])),
}.items():
    with open(f"{crafted}/npy-{name}", "wb") as f:
        f.write(data)
PY
ok $? "fixture: the data as .npy files, and broken ones crafted from them"

# ---------------------------------------------------------------- setups
# Model files.
m_kind() { printf 'fc1 = linear(784, 10)\nfc2 = lineer(10, 10)\n' > "$WORK/kind.txt"; }
m_paren() { printf 'input 1 28 28\nfc1 = linear(784, 10\n' > "$WORK/paren.txt"; }
m_args() { printf '# one argument short\nfc1 = linear(784)\n' > "$WORK/args.txt"; }
m_dup() { printf 'fc1 = linear(784, 10)\nrelu\nfc1 = linear(10, 10)\n' > "$WORK/dup.txt"; }
m_late() { printf 'fc1 = linear(784, 10)\ninput 1 28 28\n' > "$WORK/late.txt"; }
m_empty() { printf '# only a comment\n\n' > "$WORK/empty.txt"; }
m_shape() { printf 'conv1 = conv2d(1, 8, 3)\nflatten\nfc1 = linear(100, 10)\n' > "$WORK/shape.txt"; }

# Data: $BAD is a fresh copy of $D with one member replaced.
bad() { rm -rf "$BAD" && cp -R "$D" "$BAD"; }
TI=train-images-idx3-ubyte TL=train-labels-idx1-ubyte
d_magic() { bad && cp "$C/images-label-magic.gz" "$BAD/$TI.gz"; }
d_label_magic() { bad && cp "$C/labels-image-magic.gz" "$BAD/$TL.gz"; }
d_trunc_raw() { bad && rm "$BAD/$TI.gz" && cp "$C/images-raw-truncated" "$BAD/$TI"; }
d_trunc_images() { bad && cp "$C/images-truncated.gz" "$BAD/$TI.gz"; }
d_count() { bad && cp "$C/labels-150.gz" "$BAD/$TL.gz"; }
d_corrupt_gz() { bad && cp "$C/images-corrupt-gzip.gz" "$BAD/$TI.gz"; }
d_trunc_gz() { bad && cp "$C/images-truncated-gzip.gz" "$BAD/$TI.gz"; }
d_empty() { bad && : > "$BAD/$TL.gz"; }
d_no_labels() { bad && rm "$BAD/$TL.gz"; }
d_small_images() {
    bad && cp "$C/images-14x14.gz" "$BAD/$TI.gz" &&
        cp "$C/t10k-images-14x14.gz" "$BAD/t10k-images-idx3-ubyte.gz"
}
d_label_12() { bad && cp "$C/labels-12.gz" "$BAD/$TL.gz"; }
d_test_label_200() { bad && cp "$C/t10k-labels-200.gz" "$BAD/t10k-labels-idx1-ubyte.gz"; }

# NumPy data: $BAD is a fresh copy of $NPY with one member replaced.
nbad() { rm -rf "$BAD" && cp -R "$NPY" "$BAD"; }
n_x() { nbad && cp "$C/npy-x-$1" "$BAD/train_x.npy"; }
n_y() { nbad && cp "$C/npy-y-$1" "$BAD/train_y.npy"; }
n_text() { n_x text; }
n_v4() { n_x v4; }
n_fortran() { n_x fortran; }
n_big_endian() { n_x big-endian; }
n_f2() { n_x f2; }
n_i8() { n_x i8; }
n_header() { n_x header; }
n_truncated() { n_x truncated; }
n_nan() { n_x nan; }
n_small() { n_x 14x14; }
n_float_labels() { n_y float; }
n_labels_2d() { n_y 2d; }
n_count() { n_y 150; }
n_trailing() { n_y trailing; }
n_negative() { n_y negative; }
n_test_label_12() { nbad && cp "$C/npy-test-y-12" "$BAD/test_y.npy"; }
n_no_test_labels() { nbad && rm "$BAD/test_y.npy"; }

# Output paths.
o_dir() { mkdir -p "$WORK/a-directory"; }
o_fifo() { rm -f "$WORK/fifo" && mkfifo "$WORK/fifo"; }

# ------------------------------------------------------------------ rows
# description | pattern (grep -E, after "frost: ") | setup (- for none) | frost arguments
# The arguments are read by the shell (eval), so quote as on a command line.
TABLE=$(cat <<'ROWS'
# ---- model files: syntax and meaning, every message names file and line
unknown layer kind           | kind\.txt:2: unknown layer kind 'lineer'       | m_kind  | train --model "$WORK/kind.txt" --data "$D" --save "$O/w.st"
missing parenthesis          | paren\.txt:2: expected '\)'                     | m_paren | train --model "$WORK/paren.txt" --data "$D" --save "$O/w.st"
wrong argument count         | args\.txt:2: linear takes 2 arguments, got 1   | m_args  | train --model "$WORK/args.txt" --data "$D" --save "$O/w.st"
duplicate layer name         | dup\.txt:3: layer name 'fc1' is used twice     | m_dup   | train --model "$WORK/dup.txt" --data "$D" --save "$O/w.st"
input line after a layer     | late\.txt:2: 'input' must come before          | m_late  | train --model "$WORK/late.txt" --data "$D" --save "$O/w.st"
model with no layers         | empty\.txt: no layers                          | m_empty | train --model "$WORK/empty.txt" --data "$D" --save "$O/w.st"
inline model error           | --model: model text:2: unknown layer kind 'bogus' | -       | train --model 'fc1 = linear(784, 10); bogus' --data "$D" --save "$O/w.st"
missing model file           | nothere\.txt: no such model file               | -       | train --model "$WORK/nothere.txt" --data "$D" --save "$O/w.st"
shape mismatch names both layers and shapes | shape\.txt:3: fc1: linear\(100, 10\) .*5408.*'1' \(flatten\) | m_shape | train --model "$WORK/shape.txt" --data "$D" --save "$O/w.st"
too many weights names that layer alone | --model: model text:3: fc2: linear\(100000, 100000\) has too many weights$ | - | train --model 'fc1 = linear(784, 100000); relu; fc2 = linear(100000, 100000)' --data "$D" --save "$O/w.st"
input shape vs first layer   | --model: model text:2: conv1: conv2d\(1, 8, 3\) expects 1 input channels, got 3x28x28 | - | train --model 'input 3 28 28; conv1 = conv2d(1, 8, 3)' --data "$D"
images of another size than the model input | bad/train-images-idx3-ubyte.gz: images have 196 values, the model's input takes 784 | d_small_images | train --model "$MLP" --data "$BAD" --save "$O/w.st"
freeze pattern matching nothing | --freeze pattern 'conv\*' matches no parameter | -   | train --model "$MLP" --data "$D" --freeze 'conv*' --save "$O/w.st"

# ---- flags: unknown, malformed, out of range, contradictory
unknown flag                 | unknown option '--lrate'                       | -       | train --model "$MLP" --data "$D" --lrate 0.1 --save "$O/w.st"
flag without a value         | --steps needs a value                          | -       | train --model "$MLP" --data "$D" --save "$O/w.st" --steps
negative learning rate       | --lr -1: must be between 0 and                 | -       | train --model "$MLP" --data "$D" --lr -1 --save "$O/w.st"
learning rate not a number   | --lr 'nan': expected a number                  | -       | train --model "$MLP" --data "$D" --lr nan --save "$O/w.st"
zero batch size              | --batch-size 0: must be between 1 and 1048576  | -       | train --model "$MLP" --data "$D" --batch-size 0 --save "$O/w.st"
zero threads                 | --threads 0: must be between 1 and 1024        | -       | train --model "$MLP" --data "$D" --threads 0 --save "$O/w.st"
epochs not a number          | --epochs 'x': expected a whole number          | -       | train --model "$MLP" --data "$D" --epochs x --save "$O/w.st"
fractional steps             | --steps '1.5': expected a whole number         | -       | train --model "$MLP" --data "$D" --steps 1.5 --save "$O/w.st"
unknown optimizer            | --optimizer 'rmsprop': expected sgd, adam or adamw | -   | train --model "$MLP" --data "$D" --optimizer rmsprop --save "$O/w.st"
--checkpoint-every without --checkpoint | --checkpoint-every needs --checkpoint | -    | train --model "$MLP" --data "$D" --checkpoint-every 5 --save "$O/w.st"
--resume together with --init | --resume and --init both give starting weights | -    | train --model "$MLP" --data "$D" --resume "$CK" --init "$W" --save "$O/w.st"
flag of another command      | 'frost eval' does not take --save              | -       | eval --model "$MLP" --data "$D" --init "$W" --save "$O/w.st"
eval without weights         | 'frost eval' needs --init                      | -       | eval --model "$MLP" --data "$D"

# ---- safetensors given to --init (train) and to frost eval --init
--init: not safetensors      | text\.safetensors: header length [0-9]+ exceeds the limit | -      | train --model "$MLP" --data "$D" --init "$WORK/text.safetensors" --save "$O/w.st"
--init: empty file           | empty\.safetensors: file is empty              | -       | train --model "$MLP" --data "$D" --init "$WORK/empty.safetensors" --save "$O/w.st"
--init: truncated data       | half\.safetensors: tensor 'fc1\.weight': data_offsets .* run past the end of the data section | -       | train --model "$MLP" --data "$D" --init "$WORK/half.safetensors" --save "$O/w.st"
--init: truncated header     | short\.safetensors: header length [0-9]+ runs past the end of the file | -              | train --model "$MLP" --data "$D" --init "$WORK/short.safetensors" --save "$O/w.st"
--init: huge header length   | huge\.safetensors: header length 4611686018427387904 exceeds the limit | -      | train --model "$MLP" --data "$D" --init "$WORK/huge.safetensors" --save "$O/w.st"
--init: header length past the end | long\.safetensors: header length [0-9]+ runs past the end | -          | train --model "$MLP" --data "$D" --init "$WORK/long.safetensors" --save "$O/w.st"
--init: broken JSON header   | json\.safetensors: .*fc1\.weight             | -       | train --model "$MLP" --data "$D" --init "$WORK/json.safetensors" --save "$O/w.st"
--init: not float32          | f16\.safetensors: tensor 'fc1\.weight' has dtype F16 | -     | train --model "$MLP" --data "$D" --init "$WORK/f16.safetensors" --save "$O/w.st"
--init: weights of another model | w\.safetensors: tensor 'fc1\.weight' has shape \[32, 784\], the model needs \[16, 784\] | - | train --model "$MLP16" --data "$D" --init "$W" --save "$O/w.st"
--init: missing file         | nothere\.safetensors: no such file            | -       | train --model "$MLP" --data "$D" --init "$WORK/nothere.safetensors" --save "$O/w.st"
eval --init: not safetensors | text\.safetensors: header length             | -       | eval --model "$MLP" --data "$D" --init "$WORK/text.safetensors"
eval --init: truncated data  | half\.safetensors: tensor 'fc1\.weight': data_offsets .* run past the end | -       | eval --model "$MLP" --data "$D" --init "$WORK/half.safetensors"
eval --init: truncated header | short\.safetensors: header length [0-9]+ runs past | -              | eval --model "$MLP" --data "$D" --init "$WORK/short.safetensors"
eval --init: huge header length | huge\.safetensors: header length 4611686018427387904 exceeds | -      | eval --model "$MLP" --data "$D" --init "$WORK/huge.safetensors"
eval --init: weights of another model | w\.safetensors: tensor 'fc1\.weight' has shape \[32, 784\] | - | eval --model "$MLP16" --data "$D" --init "$W"
--resume: a weights file, not a checkpoint | w\.safetensors: a weights file, not a training checkpoint \(use --init\) | - | train --model "$MLP" --data "$D" --resume "$W" --save "$O/w.st" --checkpoint "$O/c.st"
--resume: truncated checkpoint | cut\.safetensors: .*is the file truncated\? | -            | train --model "$MLP" --data "$D" --resume "$WORK/cut.safetensors" --save "$O/w.st"
--resume: missing file       | nothere\.safetensors: no such file            | -       | train --model "$MLP" --data "$D" --resume "$WORK/nothere.safetensors" --save "$O/w.st"

# ---- data: IDX and gzip
missing data directory       | nodata: no such directory                      | -       | train --model "$MLP" --data "$WORK/nodata" --save "$O/w.st"
images with the label magic  | train-images-idx3-ubyte\.gz: magic number 0x00000801 .*expected 0x00000803 | d_magic | train --model "$MLP" --data "$BAD" --save "$O/w.st"
labels with the image magic  | train-labels-idx1-ubyte\.gz: magic number 0x00000803 | d_label_magic | train --model "$MLP" --data "$BAD" --save "$O/w.st"
truncated raw images         | train-images-idx3-ubyte: truncated: expected 156800 bytes of pixel data, found 984 | d_trunc_raw | train --model "$MLP" --data "$BAD" --save "$O/w.st"
truncated images in gzip     | train-images-idx3-ubyte\.gz: truncated: expected 156800 bytes | d_trunc_images | train --model "$MLP" --data "$BAD" --save "$O/w.st"
image and label counts differ | train-images-idx3-ubyte\.gz has 200 images but .*train-labels-idx1-ubyte\.gz has 150 labels | d_count | train --model "$MLP" --data "$BAD" --save "$O/w.st"
corrupt gzip                 | train-images-idx3-ubyte\.gz: corrupt gzip data | d_corrupt_gz | train --model "$MLP" --data "$BAD" --save "$O/w.st"
truncated gzip               | train-images-idx3-ubyte\.gz: truncated gzip data | d_trunc_gz | train --model "$MLP" --data "$BAD" --save "$O/w.st"
empty label file             | train-labels-idx1-ubyte\.gz: empty file        | d_empty | train --model "$MLP" --data "$BAD" --save "$O/w.st"
missing label file           | train-labels-idx1-ubyte\[\.gz\]: no such file  | d_no_labels | train --model "$MLP" --data "$BAD" --save "$O/w.st"
training label beyond the model's outputs | bad/train-labels-idx1-ubyte.gz: label 12 is out of range for a model with 10 outputs | d_label_12 | train --model "$MLP" --data "$BAD" --save "$O/w.st"
labels beyond a smaller model's outputs | data/train-labels-idx1-ubyte.gz: label 9 is out of range for a model with 4 outputs | - | train --model 'fc1 = linear(784, 4)' --data "$D" --save "$O/w.st"
eval: test label beyond the outputs | bad/t10k-labels-idx1-ubyte.gz: label 200 is out of range for a model with 10 outputs | d_test_label_200 | eval --model "$MLP" --data "$BAD" --init "$W"

# ---- data: NumPy .npy files
not a .npy file              | bad/train_x\.npy: not a NumPy \.npy file       | n_text  | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy format version 4.0      | train_x\.npy: \.npy format version 4\.0, expected 1\.0, 2\.0 or 3\.0 | n_v4 | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy in Fortran order        | train_x\.npy: fortran_order is True            | n_fortran | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy big-endian float32      | train_x\.npy: dtype '>f4' is big-endian        | n_big_endian | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy float16 images          | train_x\.npy: dtype '<f2' is not supported     | n_f2    | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy int64 images            | train_x\.npy: images of dtype '<i8'; frost reads uint8 | n_i8 | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy malformed header        | train_x\.npy: malformed \.npy header at byte [0-9]+: expected ',' or '}' | n_header | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy truncated images        | train_x\.npy: truncated: expected 156800 bytes of array data, found 155800 | n_truncated | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy images holding NaN      | train_x\.npy: sample 3 holds nan; images must be finite | n_nan | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy images of another size than the model input | train_x\.npy: images have 196 values, the model's input takes 784 | n_small | train --model "$MLP" --data "$BAD" --save "$O/w.st"
NHWC .npy read as NCHW       | npy-nhwc/train_x\.npy: images are 28x28x3 \(C x H x W\), the model's input is 3x28x28 \(N, H, W, C data\? give --data-layout nhwc\) | - | train --model "$RGB" --data "$NPY_NHWC" --save "$O/w.st"
NCHW .npy read as NHWC       | npy-nchw/train_x\.npy: images are 28x3x28 \(C x H x W\), the model's input is 3x28x28 \(N, C, H, W data\? leave out --data-layout nhwc\) | - | train --model "$RGB" --data "$NPY_NCHW" --data-layout nhwc --save "$O/w.st"
.npy float labels            | train_y\.npy: labels of dtype '<f8'; labels must be integers | n_float_labels | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy labels of shape (N, 1)  | train_y\.npy: labels of shape \(200, 1\); labels must be 1-D | n_labels_2d | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy image and label counts differ | bad/train_x\.npy has 200 images but .*bad/train_y\.npy has 150 labels | n_count | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy labels with trailing bytes | train_y\.npy: 8 trailing bytes after the 1600 bytes of array data | n_trailing | train --model "$MLP" --data "$BAD" --save "$O/w.st"
.npy negative label          | train_y\.npy: label -1 \(sample 7\) is out of range 0-2147483647 | n_negative | train --model "$MLP" --data "$BAD" --save "$O/w.st"
eval: .npy test label beyond the outputs | bad/test_y\.npy: label 12 is out of range for a model with 10 outputs | n_test_label_12 | eval --model "$MLP" --data "$BAD" --init "$W"
.npy directory without test_y.npy | bad/test_y\.npy\[\.gz\]: no such file     | n_no_test_labels | train --model "$MLP" --data "$BAD" --save "$O/w.st"
unknown --data-layout        | --data-layout 'chw': expected nchw or nhwc      | -       | train --model "$MLP" --data "$NPY" --data-layout chw --save "$O/w.st"
--normalize without a std    | --normalize '0\.5': expected MEAN,STD pairs separated by ';' | - | train --model "$MLP" --data "$NPY" --normalize 0.5 --save "$O/w.st"
--normalize with std 0       | --normalize '0\.5,0': std 0 \(pair 1\) must be positive | - | train --model "$MLP" --data "$NPY" --normalize 0.5,0 --save "$O/w.st"
--normalize pairs for another channel count | --normalize: .*npy/train_x\.npy: 2 mean,std pairs for images of 1 channel: give one pair, or one per channel | - | train --model "$MLP" --data "$NPY" --normalize '0.5,0.2;0.4,0.2' --save "$O/w.st"
--normalize on IDX data      | --normalize: .*train-images-idx3-ubyte\.gz: 3 mean,std pairs for images of 1 channel | - | train --model "$MLP" --data "$D" --normalize '0.5,0.2;0.4,0.2;0.1,1' --save "$O/w.st"

# ---- output paths that cannot be written: refused before the first step
--save under a missing directory | --save .*/no/such/w\.st: directory .*/no/such does not exist | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save "$O/no/such/w.st"
--metrics under a missing directory | --metrics .*/no/m\.csv: directory .*/no does not exist | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --metrics "$O/no/m.csv"
--checkpoint under a missing directory | --checkpoint .*/no/c\.st: directory .*/no does not exist | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --checkpoint "$O/no/c.st"
--save is a directory        | --save .*/a-directory: is a directory          | o_dir   | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save "$WORK/a-directory"
--checkpoint in /proc        | --checkpoint /proc/frost-test\.st: cannot create a file in /proc | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save "$O/w.st" --checkpoint /proc/frost-test.st
--save over a /proc file     | --save /proc/version: cannot create a file in /proc | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save /proc/version
--metrics in /proc           | --metrics /proc/frost-test\.csv: cannot create a file in /proc | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save "$O/w.st" --metrics /proc/frost-test.csv
--metrics is a FIFO          | --metrics .*/fifo: not a regular file          | o_fifo  | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --metrics "$WORK/fifo"
--save under a file, not a directory | --save .*/w\.safetensors/x\.st: .*/w\.safetensors is not a directory | - | train --model "$MLP" --data "$D" --steps 2000 --log-every 1 --save "$W/x.st"

# ---- NaN and Inf: the run stops at step 1 naming the parameter, keeps the old checkpoint
--init with a NaN weight     | the last checkpoint .*/ck\.safetensors is kept: the loss is nan at step 1; parameter 'fc2\.weight' holds nan | -     | train --model "$MLP" --data "$D" --init "$WORK/nan.safetensors" --checkpoint "$KEEP/ck.safetensors" --save "$O/w.st" --metrics "$O/m.csv" --log-every 1
--init with an Inf bias      | the last checkpoint .*/ck\.safetensors is kept: the loss is -?nan at step 1; parameter 'fc1\.bias' holds inf | -     | train --model "$MLP" --data "$D" --init "$WORK/inf.safetensors" --checkpoint "$KEEP/ck.safetensors" --save "$O/w.st" --metrics "$O/m.csv" --log-every 1
ROWS
)

trim() { printf '%s' "$1" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//'; }

# run_row DESCRIPTION PATTERN SETUP ARGUMENTS: run frost, then check the row.
run_row() {
    desc=$1 pattern=$2 setup=$3 args=$4
    rm -rf "$O" && mkdir "$O"
    [ "$setup" = - ] || $setup || diag "setup $setup failed"
    eval "set -- $args"
    $TIMEOUT "$FROST" "$@" < /dev/null > "$WORK/stdout" 2> "$WORK/stderr"
    status=$?
    why=
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then why="hung (killed by timeout)"
    elif [ $status -ge 128 ]; then why="crashed (status $status)"
    elif [ $status -ne 1 ]; then why="exit status $status, expected 1"
    elif [ "$(wc -l < "$WORK/stderr")" -ne 1 ]; then why="stderr has $(wc -l < "$WORK/stderr") lines, expected 1"
    elif ! grep -Eq -- "^frost: .*$pattern" "$WORK/stderr"; then why="message does not match /$pattern/"
    elif [ -n "$(ls -A "$O")" ]; then why="output left behind: $(ls -A "$O" | tr '\n' ' ')"
    elif grep -q '^epoch ' "$WORK/stdout"; then why="training ran before the error"
    fi
    [ -z "$why" ]
    ok $? "$desc: $(head -c 300 "$WORK/stderr" | head -1)"
    if [ -n "$why" ]; then
        diag "  $why"
        sed 's/^/#   stderr: /' "$WORK/stderr" | head -5
    fi
}

rows=$(printf '%s\n' "$TABLE" | grep -Ev '^[[:space:]]*(#|$)' | wc -l)
diag "$rows rows"
rows_run=0
while IFS= read -r line; do
    case $line in '' | '#'*) continue ;; esac
    rows_run=$((rows_run + 1))
    desc=$(trim "${line%%|*}") rest=${line#*|}
    pattern=$(trim "${rest%%|*}") rest=${rest#*|}
    setup=$(trim "${rest%%|*}") args=$(trim "${rest#*|}")
    run_row "$desc" "$pattern" "$setup" "$args"
done <<EOF
$TABLE
EOF
# The plan is counted at the end here, so a loop that stopped early would pass.
[ "$rows" -gt 0 ] && [ "$rows_run" -eq "$rows" ]
ok $? "all $rows rows of the table ran ($rows_run)"

# The NaN/Inf rows gave an existing --checkpoint: it must be the same file.
[ "$(cksum < "$KEEP/ck.safetensors")" = "$keep_sum" ]
ok $? "a run stopped by NaN/Inf leaves the earlier checkpoint untouched (checksum)"
[ -z "$(find "$KEEP" "$WORK" -name '*.tmp.*')" ]
ok $? "no temporary *.tmp.* file is left anywhere"
[ ! -e /proc/frost-test.st ] && [ ! -e /proc/frost-test.csv ]
ok $? "nothing was created in /proc"

done_testing
