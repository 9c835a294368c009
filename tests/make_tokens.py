"""make_tokens.py OUT_DIR TEXT_FILE SEQ [--test-rows M] [--dtype i4|i8|u2] [--labels K]
                 [--bad-token ID] [--floats]

Token data for the tests, standard library only: TEXT_FILE's bytes cut into
rows of SEQ + 1 byte ids (language modelling: train_x.npy (N, SEQ+1), no
labels) or, with --labels K, rows of SEQ ids and a class id (row % K) each in
train_y.npy (classification).  --test-rows moves the last M rows to test_*.
--bad-token puts ID at row 1, column 2 (a token outside a vocabulary);
--floats writes the ids as float32 (not token data).
"""
import argparse, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_npy import npy_bytes  # noqa: E402
import struct  # noqa: E402

FORMATS = {"i4": "<i", "i8": "<q", "u2": "<H", "f4": "<f"}


def write(path, descr, rows):
    """rows: a list of lists (2-D) or of numbers (1-D), as numpy.save writes them."""
    code = FORMATS[descr]
    two_d = isinstance(rows[0], list)
    values = [v for row in rows for v in row] if two_d else rows
    shape = (len(rows), len(rows[0])) if two_d else (len(rows),)
    body = b"".join(struct.pack(code, v) for v in values)
    with open(path, "wb") as f:
        f.write(npy_bytes("<" + descr, shape, body))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out"), p.add_argument("text"), p.add_argument("seq", type=int)
    p.add_argument("--test-rows", type=int, default=0)
    p.add_argument("--dtype", default="i4", choices=["i4", "i8", "u2"])
    p.add_argument("--labels", type=int, default=0)
    p.add_argument("--bad-token", type=int)
    p.add_argument("--floats", action="store_true")
    a = p.parse_args()
    data = open(a.text, "rb").read()
    width = a.seq if a.labels else a.seq + 1
    rows = [list(data[i:i + width]) for i in range(0, len(data) - width + 1, width)]
    if a.bad_token is not None:
        rows[1][2] = a.bad_token
    os.makedirs(a.out, exist_ok=True)
    split = len(rows) - a.test_rows
    dtype = "f4" if a.floats else a.dtype
    for name, part, first in (("train", rows[:split], 0), ("test", rows[split:], split)):
        if not part:
            continue
        write(os.path.join(a.out, name + "_x.npy"), dtype, [[float(v) for v in r] if a.floats
                                                             else r for r in part])
        if a.labels:
            write(os.path.join(a.out, name + "_y.npy"), "i8",
                  [(first + i) % a.labels for i in range(len(part))])


main()
