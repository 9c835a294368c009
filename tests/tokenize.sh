#!/bin/sh
# tokenize.sh - frost tokenize as a user meets it: language-modelling windows
# (shape, the ids are the files' bytes, what is dropped), --test-fraction,
# the dtypes, GPT-2's <|endoftext|> between files, --label-per-file on
# '%'-separated and blank-line-separated files, files of an earlier run
# removed, and every kind of bad input refused with one `frost: ` line
# naming the file, a non-zero exit and no output left behind.  The .npy
# files are read with od, and with numpy where $PYTHON3 or /usr/bin/python3
# has it (numpy.save must write the same bytes); test_tokenizer reads them
# with frost's own parser.
. "$TOP_SRCDIR/tests/common.sh"

plan 45
T="$WORK/text"
mkdir -p "$T"
printf 'The quick brown fox jumps over the lazy dog.\n' > "$T/a.txt"   # 45 bytes
printf 'Pack my box with five dozen liquor jugs!\n' > "$T/b.txt"       # 41 bytes
printf 'ab' > "$T/ab.txt"
printf 'cd' > "$T/cd.txt"
printf 'abc' > "$T/short.txt"
: > "$T/empty.txt"
printf '%%\n%%\n' > "$T/pct.txt"
# Fortune files: records between lines holding only '%'; one is longer than 16 bytes.
printf 'one\n%%\nsecond record\n%%\nthe third record is long\n%%\n' > "$T/c1.txt"
printf 'alpha\n%%\nbeta\n' > "$T/c2.txt"
# No '%' line: paragraphs between blank lines (however many, blanks in them).
printf 'para one\nstill one\n\n\n  \npara two\n \t\npara three\n' > "$T/c3.txt"

# bytes_of FILE...: the files' bytes, one decimal value a line.
bytes_of() { cat "$@" | od -An -v -t u1 | tr -s ' ' '\n' | sed '/^$/d'; }
bytes_of "$T/a.txt" "$T/b.txt" > "$WORK/ab_bytes"

# GPT-2 vocabularies written here: ids 0-255 the bytes, <|endoftext|> 256 (or
# 70000), no merges; and two broken ones.
"$PYTHON3" - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
names, spare = {}, 0
for b in range(256):
    if b in printable:
        names[b] = chr(b)
    else:
        names[b] = chr(0x100 + spare)
        spare += 1
def vocab(name, end_of_text, merges="#version: 0.2\n", encoder_text=None):
    os.makedirs(f"{work}/{name}")
    encoder = {names[b]: b for b in range(256)}
    encoder["<|endoftext|>"] = end_of_text
    with open(f"{work}/{name}/encoder.json", "w", encoding="utf-8") as f:
        f.write(encoder_text if encoder_text is not None else json.dumps(encoder))
    with open(f"{work}/{name}/vocab.bpe", "w", encoding="utf-8") as f:
        f.write(merges)
vocab("tiny", 256)
vocab("big", 70000)
vocab("badvocab", 256, encoder_text='{"a": 1, "b": ')
vocab("badmerges", 256, merges="#version: 0.2\na b c\n")
PY
ok $? "fixture: python3 writes a tiny GPT-2 vocabulary and broken ones"

# tokenize NAME ARGS...: frost tokenize --out $WORK/NAME ARGS, stdout in NAME.out.
tokenize() {
    name=$1
    shift
    "$FROST" tokenize --out "$WORK/$name" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
    status=$?
    [ $status -eq 0 ] || sed 's/^/#   /' "$WORK/$name.err"
    return $status
}

# ---- language modelling, bytes: 86 bytes in windows of 8
tokenize lm --seq-len 7 "$T/a.txt" "$T/b.txt"
ok $? "frost tokenize --seq-len 7 on two text files succeeds"
[ "$(wc -l < "$WORK/lm.out")" -eq 1 ] && [ ! -s "$WORK/lm.err" ] &&
    grep -Eq '^frost tokenize: 2 files, 86 tokens \(byte\), 10 windows of 8 \(train 10, test 0\) int32 in .*/lm; 6 tokens dropped' "$WORK/lm.out"
ok $? "one summary line: 2 files, 86 tokens, 10 windows of 8, 6 tokens dropped ($(cat "$WORK/lm.out"))"
[ "$(ls "$WORK/lm")" = train_x.npy ]
ok $? "language modelling writes train_x.npy alone (no train_y.npy, no test files without --test-fraction)"
[ "$(npy_dict "$WORK/lm/train_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (10, 8), }" ] &&
    [ $(($(npy_header_bytes "$WORK/lm/train_x.npy") % 64)) -eq 0 ]
ok $? "train_x.npy: numpy's format-1.0 header, int32 (10, 8), padded to 64 bytes"
npy_ids "$WORK/lm/train_x.npy" d4 > "$WORK/lm_ids"
head -n 80 "$WORK/ab_bytes" | cmp -s - "$WORK/lm_ids"
ok $? "the windows hold the files' bytes in order, nothing between the files, the last 6 dropped"
# ---- --test-fraction: the last round(F*N) windows
tokenize split --seq-len 7 --test-fraction 0.3 "$T/a.txt" "$T/b.txt"
[ "$(npy_dict "$WORK/split/train_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (7, 8), }" ] &&
    [ "$(npy_dict "$WORK/split/test_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }" ] &&
    grep -q '(train 7, test 3)' "$WORK/split.out"
ok $? "--test-fraction 0.3 of 10 windows: train_x.npy (7, 8), test_x.npy (3, 8)"
npy_ids "$WORK/split/train_x.npy" d4 > "$WORK/split_ids" &&
    npy_ids "$WORK/split/test_x.npy" d4 >> "$WORK/split_ids" &&
    cmp -s "$WORK/lm_ids" "$WORK/split_ids"
ok $? "train_x.npy then test_x.npy are the same windows in the same order: the test set is the last 3"

# ---- dtypes
tokenize u16 --seq-len 7 --dtype uint16 "$T/a.txt" "$T/b.txt" &&
    [ "$(npy_dict "$WORK/u16/train_x.npy")" = "{'descr': '<u2', 'fortran_order': False, 'shape': (10, 8), }" ] &&
    npy_ids "$WORK/u16/train_x.npy" u2 | cmp -s - "$WORK/lm_ids"
ok $? "--dtype uint16: '<u2', the same ids"
tokenize i64 --seq-len 7 --dtype int64 "$T/a.txt" "$T/b.txt" &&
    [ "$(npy_dict "$WORK/i64/train_x.npy")" = "{'descr': '<i8', 'fortran_order': False, 'shape': (10, 8), }" ] &&
    npy_ids "$WORK/i64/train_x.npy" d8 | cmp -s - "$WORK/lm_ids"
ok $? "--dtype int64: '<i8', the same ids"

# ---- GPT-2: <|endoftext|> between files
tokenize gpt2 --tokenizer "$WORK/tiny" --seq-len 4 "$T/ab.txt" "$T/cd.txt" &&
    [ "$(npy_ids "$WORK/gpt2/train_x.npy" d4 | tr '\n' ' ')" = "97 98 256 99 100 " ] &&
    grep -q '5 tokens (gpt2, 256 between files), 1 windows of 5' "$WORK/gpt2.out"
ok $? "--tokenizer DIR (GPT-2 files): <|endoftext|> goes between two files, not after the last ($(npy_ids "$WORK/gpt2/train_x.npy" d4 | tr '\n' ' '))"

# ---- --label-per-file: one class per file, records as rows
tokenize cls --label-per-file --seq-len 16 --test-fraction 0.2 "$T/c1.txt" "$T/c2.txt"
ok $? "--label-per-file on two '%'-separated files succeeds"
[ "$(ls "$WORK/cls" | tr '\n' ' ')" = "classes.txt test_x.npy test_y.npy train_x.npy train_y.npy " ] &&
    [ "$(cat "$WORK/cls/classes.txt")" = "$(printf 'c1.txt\nc2.txt')" ]
ok $? "it writes train_x/train_y/test_x/test_y and classes.txt (c1.txt, c2.txt)"
[ "$(npy_dict "$WORK/cls/train_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 16), }" ] &&
    [ "$(npy_dict "$WORK/cls/train_y.npy")" = "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }" ] &&
    [ "$(npy_dict "$WORK/cls/test_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 16), }" ] &&
    [ "$(npy_dict "$WORK/cls/test_y.npy")" = "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }" ]
ok $? "5 records, --test-fraction 0.2: train_x (4, 16) int32, train_y (4,) int64, test_x (1, 16), test_y (1,)"
grep -Eq '2 classes, 5 records, 5 rows of 16 \(train 4, test 1\) int32 and int64 labels in .*; 1 truncated \(9 tokens dropped\), 4 padded with 0' "$WORK/cls.out"
ok $? "the summary counts records, the truncated one and the padded ones ($(cat "$WORK/cls.out"))"
"$PYTHON3" - "$WORK/cls" <<'PY'
import struct, sys
d = sys.argv[1]
def load(name, code, size):
    data = open(f"{d}/{name}", "rb").read()
    header = 10 + struct.unpack("<H", data[8:10])[0]
    body = data[header:]
    return list(struct.unpack("<%d%s" % (len(body) // size, code), body))
ids = load("train_x.npy", "i", 4) + load("test_x.npy", "i", 4)
labels = load("train_y.npy", "q", 8) + load("test_y.npy", "q", 8)
rows = [(bytes(ids[16 * r:16 * r + 16]), labels[r]) for r in range(5)]
def row(text):
    return (text.encode() + bytes(16))[:16]
expected = [(row("one\n"), 0), (row("second record\n"), 0), (row("the third record is long\n"), 0),
            (row("alpha\n"), 1), (row("beta\n"), 1)]
assert sorted(rows) == sorted(expected), rows
PY
ok $? "each row is one record's bytes (its final newline kept), cut at 16 or padded with 0, labelled with its file's position"
tokenize cls_again --label-per-file --seq-len 16 --test-fraction 0.2 "$T/c1.txt" "$T/c2.txt" &&
    cmp -s "$WORK/cls/train_x.npy" "$WORK/cls_again/train_x.npy" &&
    cmp -s "$WORK/cls/train_y.npy" "$WORK/cls_again/train_y.npy"
ok $? "the shuffle is fixed by --seed (default 0): a second run writes the same files"
tokenize blank --label-per-file --seq-len 12 "$T/c3.txt" &&
    grep -q '3 records, 3 rows of 12' "$WORK/blank.out"
ok $? "a file without '%' lines splits at blank lines (runs of them, blanks inside): 3 records"

# ---- numpy reads every kind of file written above
NUMPY_PYTHON=
for python in "$PYTHON3" /usr/bin/python3; do
    if "$python" -c 'import numpy' 2> /dev/null; then
        NUMPY_PYTHON=$python
        break
    fi
done
if [ -n "$NUMPY_PYTHON" ]; then
    "$NUMPY_PYTHON" - "$WORK" "$T" <<'PY'
import io, sys, numpy as np
work, text = sys.argv[1:3]
ab = np.frombuffer(open(f"{text}/a.txt", "rb").read() + open(f"{text}/b.txt", "rb").read(), np.uint8)
windows = ab[:80].reshape(10, 8)
for name, dtype in (("lm", np.int32), ("u16", np.uint16), ("i64", np.int64)):
    x = np.load(f"{work}/{name}/train_x.npy")
    assert x.dtype == dtype and x.shape == (10, 8) and (x == windows).all(), name
    saved = io.BytesIO()
    np.save(saved, x)
    assert saved.getvalue() == open(f"{work}/{name}/train_x.npy", "rb").read(), name
train, test = np.load(f"{work}/split/train_x.npy"), np.load(f"{work}/split/test_x.npy")
assert (np.concatenate([train, test]) == windows).all() and test.shape == (3, 8)
x, y = np.load(f"{work}/cls/train_x.npy"), np.load(f"{work}/cls/train_y.npy")
tx, ty = np.load(f"{work}/cls/test_x.npy"), np.load(f"{work}/cls/test_y.npy")
assert x.dtype == np.int32 and x.shape == (4, 16) and y.dtype == np.int64 and y.shape == (4,)
assert tx.shape == (1, 16) and ty.shape == (1,) and sorted(np.concatenate([y, ty])) == [0, 0, 0, 1, 1]
PY
    ok $? "numpy.load ($NUMPY_PYTHON) reads them all (int32, uint16, int64 windows of the files' bytes, the split, the classification arrays); numpy.save writes the same bytes"
else
    skip "neither $PYTHON3 nor /usr/bin/python3 has numpy: numpy.load not tried"
fi

# ---- files of an earlier run: a language-modelling run into the classification directory
cp -R "$WORK/cls" "$WORK/reuse" && printf 'x' > "$WORK/reuse/train_y.npy.gz" &&
    tokenize reuse --seq-len 7 "$T/a.txt" "$T/b.txt" &&
    [ "$(ls "$WORK/reuse")" = train_x.npy ]
ok $? "a run removes the data files of an earlier one it does not write (train_y, test_x, test_y, .gz, classes.txt)"

# ---- a write that fails takes this run's other files with it
mkdir -p "$WORK/half/test_x.npy"
"$FROST" tokenize --out "$WORK/half" --seq-len 7 --test-fraction 0.3 "$T/a.txt" "$T/b.txt" \
    > "$WORK/half.out" 2> "$WORK/half.err"
status=$?
[ $status -eq 1 ] && [ "$(wc -l < "$WORK/half.err")" -eq 1 ] &&
    grep -q '^frost: .*half/test_x\.npy' "$WORK/half.err" && [ ! -e "$WORK/half/train_x.npy" ] &&
    [ -z "$(find "$WORK/half" -name '*.tmp.*')" ]
ok $? "test_x.npy cannot be written (a directory is in the way): exit 1, one line naming it, train_x.npy removed ($(cat "$WORK/half.err"))"

# ---- help
"$FROST" tokenize --help > "$WORK/help.out" 2>&1 && grep -q '^usage: frost tokenize --out DIR' "$WORK/help.out" &&
    "$FROST" --help 2>&1 | grep -q '^usage: frost tokenize'
ok $? "frost tokenize --help and frost --help show the usage"

# ---- bad input: one row each
# description | pattern (grep -E, after "frost: ") | frost tokenize arguments
O="$WORK/out"
mkdir -p "$WORK/nothing"
: > "$WORK/a-file"
TABLE=$(cat <<'ROWS'
missing input file          | missing\.txt: no such file                          | --out "$O" "$T/a.txt" "$T/missing.txt"
empty input file            | empty\.txt: the file is empty                       | --out "$O" "$T/empty.txt"
fewer tokens than a window  | short\.txt: 3 tokens, fewer than one window of 8    | --out "$O" --seq-len 7 "$T/short.txt"
--seq-len 0                 | --seq-len 0: must be between 1 and 1048576          | --out "$O" --seq-len 0 "$T/a.txt"
--seq-len not a number      | --seq-len 'ten': expected a whole number            | --out "$O" --seq-len ten "$T/a.txt"
--seq-len without a value   | --seq-len needs a value                             | --out "$O" "$T/a.txt" --seq-len
tokenizer directory without encoder.json | nothing/encoder\.json: no such file    | --out "$O" --tokenizer "$WORK/nothing" "$T/a.txt"
tokenizer neither byte nor a directory | --tokenizer .*/nodir: neither 'byte' nor a directory | --out "$O" --tokenizer "$WORK/nodir" "$T/a.txt"
malformed encoder.json      | badvocab/encoder\.json: invalid JSON                | --out "$O" --tokenizer "$WORK/badvocab" "$T/a.txt"
vocab.bpe line of three tokens | badmerges/vocab\.bpe: line 2: expected a merge   | --out "$O" --tokenizer "$WORK/badmerges" "$T/a.txt"
uint16 too small for an id  | --dtype uint16: token id 70000 does not fit         | --out "$O" --tokenizer "$WORK/big" --dtype uint16 --seq-len 3 "$T/ab.txt" "$T/cd.txt"
--test-fraction 1           | --test-fraction '1': expected the fraction          | --out "$O" --test-fraction 1 "$T/a.txt"
--test-fraction leaving no training rows | --test-fraction 0\.9 of 1 windows leaves no training rows | --out "$O" --seq-len 40 --test-fraction 0.9 "$T/a.txt"
unknown --dtype             | --dtype 'float32': expected int32, uint16 or int64  | --out "$O" --dtype float32 "$T/a.txt"
a class file without records | pct\.txt: no records                               | --out "$O" --label-per-file "$T/c1.txt" "$T/pct.txt"
--label-per-file with a value | --label-per-file takes no value                   | --out "$O" --label-per-file=yes "$T/c1.txt"
no input files              | needs at least one text FILE                        | --out "$O"
no --out                    | needs --out DIR                                     | "$T/a.txt"
unknown option              | unknown option '--vocab' for 'frost tokenize'       | --out "$O" --vocab x "$T/a.txt"
--out is a file             | --out .*/a-file: exists and is not a directory      | --out "$WORK/a-file" "$T/a.txt"
--out under a missing directory | --out .*/out/no/such: cannot create the directory | --out "$O/no/such" --seq-len 7 "$T/a.txt"
ROWS
)
trim() { printf '%s' "$1" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//'; }
rows=0
while IFS= read -r line; do
    [ -n "$line" ] || continue
    rows=$((rows + 1))
    desc=$(trim "${line%%|*}") rest=${line#*|}
    pattern=$(trim "${rest%%|*}") args=$(trim "${rest#*|}")
    rm -rf "$O"
    eval "set -- $args"
    "$FROST" tokenize "$@" < /dev/null > "$WORK/stdout" 2> "$WORK/stderr"
    status=$?
    why=
    if [ $status -ge 128 ]; then why="crashed (status $status)"
    elif [ $status -ne 1 ]; then why="exit status $status, expected 1"
    elif [ "$(wc -l < "$WORK/stderr")" -ne 1 ]; then why="stderr has $(wc -l < "$WORK/stderr") lines, expected 1"
    elif ! grep -Eq -- "^frost: .*$pattern" "$WORK/stderr"; then why="message does not match /$pattern/"
    elif [ -e "$O" ]; then why="output left behind: $(ls -A "$O" | tr '\n' ' ')"
    elif [ -s "$WORK/stdout" ]; then why="a summary was printed"
    fi
    [ -z "$why" ]
    ok $? "refused, exit 1, one line, nothing written: $desc ($(head -1 "$WORK/stderr"))"
    [ -z "$why" ] || diag "  $why"
done <<EOF
$TABLE
EOF
[ "$rows" -eq 21 ]
ok $? "all 21 rows of the table ran ($rows)"
[ -z "$(find "$WORK" -name '*.tmp.*')" ] && [ ! -s "$WORK/a-file" ]
ok $? "no temporary *.tmp.* file is left anywhere, and the file given as --out is untouched"

done_testing
