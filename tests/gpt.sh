#!/bin/sh
# gpt.sh - GPT-2 on the command line, on real text (this repository's
# README.md as bytes): a Hugging Face config.json builds the network the
# model text builds, language modelling trains and evaluates per position,
# freezing by block, the feature cache for a frozen prefix of blocks, a
# bitwise resume, 2 ranks, sequence classification, frost generate, and
# bad input (each one line naming the file, no output file written).
. "$TOP_SRCDIR/tests/common.sh"
plan 30
WORK=$(mktemp -d /tmp/frost-gpt.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
TOKENS="$PYTHON3 $TOP_SRCDIR/tests/make_tokens.py"
head -c 12000 "$TOP_SRCDIR/README.md" >"$WORK/text"
$TOKENS "$WORK/lm" "$WORK/text" 16 --test-rows 32
mkdir -p "$WORK/cfg"
config() { # config DIR EXTRA-JSON
    mkdir -p "$1"
    printf '{"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 16, "vocab_size": 256, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"%s}\n' "$2" >"$1/config.json"
}
config "$WORK/cfg" ""
CFG="$WORK/cfg/config.json"
cat >"$WORK/gpt.txt" <<'MODEL'
input 16 tokens
wte = embedding(256, 32)
wpe = position_embedding(16, 32)
block h.0 {
    residual { ln_1 = layernorm(32, eps=1e-5); attn.c_attn = conv1d(96, 32); attention(4); attn.c_proj = conv1d(32, 32) }
    residual { ln_2 = layernorm(32); mlp.c_fc = conv1d(128, 32); gelu(approximate='tanh'); mlp.c_proj = conv1d(32, 128) }
}
block h.1 {
    residual { ln_1 = layernorm(32, eps=1e-5); attn.c_attn = conv1d(96, 32); attention(4); attn.c_proj = conv1d(32, 32) }
    residual { ln_2 = layernorm(32); mlp.c_fc = conv1d(128, 32); gelu(approximate='tanh'); mlp.c_proj = conv1d(32, 128) }
}
ln_f = layernorm(32)
lm_head = linear(32, 256, bias=False)
tie lm_head.weight wte.weight
MODEL

# -- the network: config.json and model text alike
"$FROST" inspect --model "$CFG" >"$WORK/cfg.txt" 2>&1 &&
    "$FROST" inspect --model "$WORK/gpt.txt" >"$WORK/text.txt" 2>&1
cmp -s "$WORK/cfg.txt" "$WORK/text.txt"
ok $? "config.json and the model text give the same parameters ($(grep -c trainable "$WORK/cfg.txt") lines)"
grep -q '^# lm_head.weight is wte.weight (tied' "$WORK/cfg.txt"
ok $? "frost inspect says the head is tied to wte"

# -- language modelling
TRAIN="--data $WORK/lm --optimizer adamw --lr 3e-3 --batch-size 8 --no-shuffle --log-every 10"
"$FROST" train --model "$CFG" $TRAIN --steps 60 --threads 2 --save "$WORK/w.st" \
    --metrics "$WORK/m.csv" >"$WORK/train.txt" 2>&1
ok $? "frost train on config.json and token data exits 0"
# A batch's loss is noisy: the first logged loss against the mean of the last half's.
awk -F, 'NR > 1 { loss[++n] = $3 } END { for (i = int(n / 2) + 1; i <= n; i++) { s += loss[i]; k++ }
         exit !(n >= 4 && s / k < loss[1] - 0.5) }' "$WORK/m.csv"
ok $? "the loss falls on real text ($(awk -F, 'NR > 1 { printf "%s ", $3 }' "$WORK/m.csv"))"
grep -q '^test: loss [0-9.]* accuracy [0-9.]*% (32 samples)' "$WORK/train.txt"
ok $? "the test split is evaluated per position ($(grep '^test' "$WORK/train.txt"))"
"$FROST" eval --model "$WORK/gpt.txt" --init "$WORK/w.st" --data "$WORK/lm" >"$WORK/eval.txt" 2>&1
[ "$(grep '^test' "$WORK/eval.txt")" = "$(grep '^test' "$WORK/train.txt")" ]
ok $? "frost eval of the saved weights through the model text gives the same test loss"

"$FROST" train --model "$CFG" $TRAIN --steps 20 --freeze wte --freeze wpe --freeze h.0 \
    --save "$WORK/frozen.st" >"$WORK/frozen.txt" 2>&1
grep -q '^frozen parameters: [0-9]*, unchanged' "$WORK/frozen.txt"
ok $? "wte (so the tied head), wpe and block h.0 frozen stay unchanged ($(grep '^frozen' "$WORK/frozen.txt"))"
trainable=$(awk '/^parameters/ { for (i = 1; i <= NF; i++) if ($i == "trainable") print $(i + 1) }' "$WORK/frozen.txt")
[ "$trainable" = 12768 ]
ok $? "only block h.1 and ln_f train: 12768 parameters ($trainable)"

# -- the feature cache of a frozen prefix of blocks: the same bits as without it
for c in cache no-cache; do
    flag=
    [ $c = no-cache ] && flag=--no-cache
    "$FROST" train --model "$CFG" $TRAIN --epochs 3 --freeze wte --freeze wpe --freeze h.0 \
        $flag --save "$WORK/$c.st" >"$WORK/$c.txt" 2>&1
done
grep -q '^feature cache' "$WORK/cache.txt" && cmp -s "$WORK/cache.st" "$WORK/no-cache.st"
ok $? "a cached frozen prefix (wte, wpe, h.0) trains to the bits of --no-cache ($(grep '^feature cache' "$WORK/cache.txt" | head -c 90))"

"$FROST" train --model "$CFG" $TRAIN --epochs 2 --freeze wte --freeze wpe --freeze h.0 \
    --cache-mb 0.2 >"$WORK/small-cache.txt" 2>&1 &&
    grep -q '^feature cache: 0.2 MB of frozen-prefix outputs for [0-9]* of [0-9]* samples (all would take [0-9.]* MB; --cache-mb raises' "$WORK/small-cache.txt"
ok $? "a cache budget that holds part of the data says how much and what all would take ($(grep '^feature cache' "$WORK/small-cache.txt" | head -c 120))"

# -- checkpoints: stopped after step 7 and resumed, the same bits
"$FROST" train --model "$CFG" $TRAIN --steps 15 --save "$WORK/whole.st" >/dev/null 2>&1
FROST_STOP_AFTER_STEP=7 "$FROST" train --model "$CFG" $TRAIN --steps 15 \
    --checkpoint "$WORK/c.st" >/dev/null 2>&1
stopped=$?
"$FROST" train --model "$CFG" $TRAIN --steps 15 --resume "$WORK/c.st" --save "$WORK/resumed.st" \
    >/dev/null 2>&1
[ $stopped -eq 75 ] && cmp -s "$WORK/whole.st" "$WORK/resumed.st"
ok $? "stopped after step 7 (exit $stopped) and resumed, GPT-2 ends bit for bit as the uninterrupted run"

# -- gradual unfreezing by block
"$FROST" train --model "$CFG" $TRAIN --steps 20 --freeze wte --freeze wpe --freeze 'h.*' \
    --unfreeze-at s10:h.1 --save "$WORK/gradual.st" >"$WORK/gradual.txt" 2>&1
ok $? "--unfreeze-at s10:h.1 unfreezes a block mid-run ($(grep -i 'unfreez' "$WORK/gradual.txt" | head -1 | head -c 100))"

# -- 2 ranks: the same losses, and 4 bytes per trainable parameter on the wire
if [ -n "${MPIRUN:-}" ]; then
    timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -np 2 "$FROST" train --model "$CFG" $TRAIN --steps 20 \
        --freeze wte --freeze wpe --freeze h.0 --metrics "$WORK/m2.csv" >"$WORK/two.txt" 2>&1
    ok $? "2 ranks train GPT-2 with a frozen prefix"
    "$FROST" train --model "$CFG" $TRAIN --steps 20 --freeze wte --freeze wpe --freeze h.0 \
        --metrics "$WORK/m1.csv" >/dev/null 2>&1
    paste -d, "$WORK/m1.csv" "$WORK/m2.csv" | awk -F, -v n=9 'NR > 1 { d = $3 - $(3 + n); if (d < 0) d = -d; if (d > m) m = d; rows++ } END { exit !(rows == 2 && m < 1e-4) }'
    ok $? "2 ranks give one process's losses within 1e-4 ($(wc -l <"$WORK/m2.csv") metrics lines)"
    awk -F, 'NR > 1 && $6 != 4 * 12768 { bad = 1 } END { exit bad }' "$WORK/m2.csv"
    ok $? "each step sends exactly 4 x 12768 bytes ($(awk -F, 'END { print $6 }' "$WORK/m2.csv"))"
else
    skip "built without MPI"; skip "built without MPI"; skip "built without MPI"
fi

# -- sequence classification: token rows and one class each
$TOKENS "$WORK/cls" "$WORK/text" 16 --labels 3 --test-rows 24 --dtype u2
"$FROST" train --model "input 16 tokens; wte = embedding(256, 16); block h.0 { residual { ln_1 = layernorm(16); attn.c_attn = conv1d(48, 16); attention(2); attn.c_proj = conv1d(16, 16) } }; pool_sequence(mode='mean'); head = linear(16, 3)" \
    --data "$WORK/cls" --optimizer adam --lr 1e-3 --batch-size 16 --steps 10 >"$WORK/cls.txt" 2>&1 &&
    grep -q '^test: loss [0-9.]* accuracy' "$WORK/cls.txt"
ok $? "sequence classification (uint16 token rows, a class each, mean over positions) trains and evaluates"

# -- a pretrained trunk with a new head: --init-new leaves the head to the seeded init
CLSMODEL="$(sed -e '/^lm_head/d' -e '/^tie/d' "$WORK/gpt.txt"); pool_sequence(mode='last'); head = linear(32, 3)"
"$FROST" train --model "$CLSMODEL" --data "$WORK/cls" --init "$WORK/w.st" --steps 3 \
    --save "$WORK/out.st" >"$WORK/strict.txt" 2>&1
[ $? -ne 0 ] && [ ! -e "$WORK/out.st" ] && grep -q "no tensor 'head.weight' for the model" "$WORK/strict.txt"
ok $? "--init refuses a file without the model's new head ($(grep frost: "$WORK/strict.txt"))"
"$FROST" train --model "$CLSMODEL" --data "$WORK/cls" --init "$WORK/w.st" --init-new head \
    --freeze wte --freeze wpe --freeze 'h.*' --freeze ln_f --steps 5 --save "$WORK/cls.st" \
    >"$WORK/init-new.txt" 2>&1 &&
    grep -q '^frozen parameters: [0-9]*, unchanged' "$WORK/init-new.txt"
ok $? "--init-new head loads the pretrained trunk and trains a fresh head on it"

# -- frost generate
"$FROST" generate --model "$CFG" --weights "$WORK/w.st" --prompt "frost is " --tokens 20 \
    --seed 3 >"$WORK/g1.txt" 2>&1 &&
    "$FROST" generate --model "$CFG" --weights "$WORK/w.st" --prompt "frost is " --tokens 20 \
        --seed 3 >"$WORK/g2.txt" 2>&1
[ $? -eq 0 ] && cmp -s "$WORK/g1.txt" "$WORK/g2.txt" && [ "$(head -c 9 "$WORK/g1.txt")" = "frost is " ] &&
    [ "$(wc -c <"$WORK/g1.txt")" -eq 30 ]
ok $? "frost generate continues the prompt with 20 bytes, the same for the same seed"
"$FROST" generate --model "$CFG" --weights "$WORK/w.st" --prompt "frost is " --tokens 20 \
    --seed 4 >"$WORK/g3.txt" 2>&1
"$FROST" generate --model "$CFG" --weights "$WORK/w.st" --prompt "frost is " --tokens 20 \
    --temperature 0 --seed 5 >"$WORK/g4.txt" 2>&1 &&
    "$FROST" generate --model "$CFG" --weights "$WORK/w.st" --prompt "frost is " --tokens 20 \
        --temperature 0 --seed 6 >"$WORK/g5.txt" 2>&1
! cmp -s "$WORK/g1.txt" "$WORK/g3.txt" && cmp -s "$WORK/g4.txt" "$WORK/g5.txt"
ok $? "another seed samples other text; temperature 0 takes the most likely token whatever the seed"

# GPT-2's BPE through --tokenizer: a vocabulary of the 256 bytes (bytes_to_unicode) and two merges
"$PYTHON3" - "$WORK/bpe" <<'PY'
import json, os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
chars = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {chars[b]: i for i, b in enumerate(range(256))}
vocab["fr"], vocab["fro"], vocab["<|endoftext|>"] = 256, 257, 258
json.dump(vocab, open(os.path.join(out, "encoder.json"), "w"))
open(os.path.join(out, "vocab.bpe"), "w").write("#version: 0.2\nf r\nfr o\n")
PY
config "$WORK/bpe" ', "vocab_size": 259'
"$FROST" train --model "$WORK/bpe/config.json" --data "$WORK/lm" --steps 2 --batch-size 8 \
    --save "$WORK/bpe.st" >/dev/null 2>&1 &&
    "$FROST" generate --model "$WORK/bpe/config.json" --weights "$WORK/bpe.st" --tokenizer "$WORK/bpe" \
        --prompt "frost" --tokens 5 --seed 1 >"$WORK/bpe.txt" 2>&1 &&
    [ "$(head -c 5 "$WORK/bpe.txt")" = frost ]
ok $? "frost generate --tokenizer DIR encodes the prompt and decodes the samples with GPT-2's BPE ($(head -c 40 "$WORK/bpe.txt" | od -An -c | head -1))"

# -- bad input: one line naming the file, a non-zero exit, no output file
bad() { # bad MESSAGE-REGEX DESCRIPTION ARGS...
    want=$1 what=$2
    shift 2
    rm -f "$WORK/out.st"
    "$FROST" "$@" >"$WORK/bad.txt" 2>&1
    status=$?
    [ $status -ne 0 ] && [ ! -e "$WORK/out.st" ] && [ "$(grep -c . "$WORK/bad.txt")" -le 3 ] &&
        grep -q "^frost: .*$want" "$WORK/bad.txt"
    ok $? "$what: $(grep '^frost:' "$WORK/bad.txt" | head -c 160)"
}
$TOKENS "$WORK/big" "$WORK/text" 16 --bad-token 300
bad "train_x.npy: token id 300 is out of range for the model's vocabulary of 256" \
    "a token id past the vocabulary" train --model "$CFG" --data "$WORK/big" --save "$WORK/out.st"
$TOKENS "$WORK/floats" "$WORK/text" 16 --floats --labels 3
bad "train_x.npy holds values, but the model's input is token ids" "float data for a model of tokens" \
    train --model "$CFG" --data "$WORK/floats" --save "$WORK/out.st"
bad "has a target per position, not one class per sample" "--classes on language-modelling data" \
    train --model "$CFG" --data "$WORK/lm" --classes 0-3 --save "$WORK/out.st"
bad "train_y.npy: 1 targets per sample, the model's output takes 16" \
    "class labels for a language model" train --model "$CFG" --data "$WORK/cls" --save "$WORK/out.st"
config "$WORK/bert" ', "model_type": "bert"'
bad "config.json: not a GPT-2 config" "a config.json of another model" \
    train --model "$WORK/bert/config.json" --data "$WORK/lm" --save "$WORK/out.st"
config "$WORK/adrop" ', "attn_pdrop": 0.1'
bad "attn_pdrop 0.1: dropout of the attention weights is not implemented" "attention dropout" \
    train --model "$WORK/adrop/config.json" --data "$WORK/lm" --save "$WORK/out.st"
mkdir -p "$WORK/broken" && printf '{"model_type": "gpt2", "n_layer": 2,' >"$WORK/broken/config.json"
bad "config.json: invalid JSON" "a truncated config.json" \
    train --model "$WORK/broken/config.json" --data "$WORK/lm" --save "$WORK/out.st"
$TOKENS "$WORK/long" "$WORK/text" 20
bad "sequences of 20 tokens, more than n_positions 16" "rows longer than n_positions" \
    train --model "$CFG" --data "$WORK/long" --save "$WORK/out.st"
bad "not a language model" "frost generate with an image classifier" \
    generate --model "$TOP_SRCDIR/examples/cnn.txt" --weights "$WORK/w.st" --prompt x
done_testing
