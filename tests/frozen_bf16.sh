#!/bin/sh
# frozen_bf16.sh - --frozen-dtype bf16 on a GPT-2 fine-tuned with LoRA on real
# text (the GPL's first 12,000 bytes): the frozen weights take half
# their memory; 100 steps stay close to float32's (per-step loss and the final
# test loss, bounded); the values kept are float32's rounded to nearest even
# once; the frozen check, a bitwise resume, 2 ranks, a block unfrozen mid-run
# (float32 again, trained), eval and generate; and the same numbers on a CPU
# without AVX512_BF16 (acted out with FROST_BF16_FALLBACK=1).
. "$TOP_SRCDIR/tests/common.sh"
plan 14
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
TOKENS="$PYTHON3 $TOP_SRCDIR/tests/make_tokens.py"
# Real text that does not change with this repository: the GPL (Debian's base-files).
head -c 12000 /usr/share/common-licenses/GPL-3 >"$WORK/text"
$TOKENS "$WORK/lm" "$WORK/text" 16 --test-rows 32
mkdir -p "$WORK/cfg"
printf '{"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 16, "vocab_size": 256, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"}\n' >"$WORK/cfg/config.json"
CFG="$WORK/cfg/config.json"
TRAIN="--data $WORK/lm --optimizer adamw --lr 2e-3 --batch-size 8 --no-shuffle"
LORA="--lora c_attn,c_fc --lora-rank 4 --lora-alpha 8"
test_loss() { awk '/^test/ { print $3 }' "$1"; }
weights_mb() { sed -n 's/^memory: weights \([0-9.]*\) MB.*/\1/p' "$1"; }
# |a - b| <= bound
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= t) }'; }

"$FROST" train --model "$CFG" $TRAIN --lr 3e-3 --steps 60 --save "$WORK/base.st" >/dev/null 2>&1
ok $? "a base model trains (the weights the fine-tunes start from)"
for d in f32 bf16; do
    "$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 100 --log-every 1 \
        --frozen-dtype $d --metrics "$WORK/$d.csv" --save "$WORK/$d.st" --save-adapter "$WORK/ad-$d" \
        >"$WORK/$d.txt" 2>&1
done
grep -q '^frozen weights in bf16: 10 tensors, weights [0-9.]* MB -> [0-9.]* MB' "$WORK/bf16.txt" &&
    grep -q '^frozen parameters: [0-9]*, unchanged' "$WORK/bf16.txt"
ok $? "LoRA on a bf16 base trains; the 10 frozen weight tensors are kept in bf16 and stay unchanged ($(grep '^frozen weights' "$WORK/bf16.txt"))"
f32_mb=$(weights_mb "$WORK/f32.txt") bf16_mb=$(weights_mb "$WORK/bf16.txt")
awk -v a="$f32_mb" -v b="$bf16_mb" 'BEGIN { exit !(b > 0 && b <= 0.56 * a) }'
ok $? "the weights take about half the memory ($f32_mb MB in float32, $bf16_mb MB with a bf16 base)"
# Rounding the base once perturbs every step a little, and 100 AdamW steps
# carry it on: the mean per-step difference stays small, the worst one
# (one noisy batch) a few times larger; compilers round differently too.
stats=$(paste -d, "$WORK/f32.csv" "$WORK/bf16.csv" |
    awk -F, 'NR > 1 { d = $3 - $12; if (d < 0) d = -d; if (d > m) m = d; s += d; n++ } END { if (n == 100) printf "%.4f %.4f", s / n, m; else print "missing missing" }')
mean=${stats% *} worst=${stats#* }
close "$mean" 0 0.02 && close "$worst" 0 0.15
ok $? "over 100 steps the loss stays near float32's: mean |difference| $mean (at most 0.02), worst $worst (at most 0.15)"
close "$(test_loss "$WORK/bf16.txt")" "$(test_loss "$WORK/f32.txt")" 0.03
ok $? "the final test loss is within 0.03 of float32's ($(test_loss "$WORK/f32.txt") float32, $(test_loss "$WORK/bf16.txt") bf16)"
"$PYTHON3" - "$WORK/base.st" "$WORK/bf16.st" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP_SRCDIR"], "tests"))
import st_raw
def load(path):
    return {k: st_raw.words(v) for k, v in st_raw.read(path)[1].items()}
def rne(u):  # float32 bits -> float32 bits of the nearest bf16 (ties to even); finite inputs
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
base, kept = load(sys.argv[1]), load(sys.argv[2])
weights = [k for k in base if k.endswith("weight") and not k.startswith(("h.0.ln", "h.1.ln", "ln_f"))]
ok = set(base) == set(kept) and len(weights) == 10
ok = ok and all(kept[k] == tuple(rne(u) for u in base[k]) for k in weights)
ok = ok and all(kept[k] == base[k] for k in base if k not in weights)
sys.exit(0 if ok else 1)
PY
ok $? "--save writes the bf16 weights as float32: each exactly the original rounded to nearest even, the rest bitwise"

# -- a bitwise resume, the same on 2 ranks
"$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 15 --frozen-dtype bf16 \
    --save-adapter "$WORK/whole" >/dev/null 2>&1
FROST_STOP_AFTER_STEP=7 "$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 15 \
    --frozen-dtype bf16 --checkpoint "$WORK/c.st" >/dev/null 2>&1
stopped=$?
"$FROST" train --model "$CFG" $TRAIN $LORA --steps 15 --frozen-dtype bf16 --resume "$WORK/c.st" \
    --save-adapter "$WORK/resumed" >/dev/null 2>&1
[ $stopped -eq 75 ] && cmp -s "$WORK/whole/adapter_model.safetensors" "$WORK/resumed/adapter_model.safetensors"
ok $? "with a bf16 base, stopped after step 7 (exit $stopped) and resumed, the adapter ends bit for bit"
if [ -n "${MPIRUN:-}" ]; then
    timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -np 2 "$FROST" train --model "$CFG" $TRAIN \
        --init "$WORK/base.st" $LORA --steps 20 --log-every 5 --frozen-dtype bf16 \
        --metrics "$WORK/m2.csv" >"$WORK/two.txt" 2>&1 &&
        "$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 20 --log-every 5 \
            --frozen-dtype bf16 --metrics "$WORK/m1.csv" >/dev/null 2>&1
    [ $? -eq 0 ] && paste -d, "$WORK/m1.csv" "$WORK/m2.csv" |
        awk -F, -v n=9 'NR > 1 { d = $3 - $(3 + n); if (d < 0) d = -d; if (d > m) m = d; rows++ } END { exit !(rows == 4 && m < 1e-4) }'
    ok $? "2 ranks on a bf16 base give one process's losses within 1e-4"
else
    skip "built without MPI"
fi

# -- a block unfrozen mid-run: float32 again, and it trains
"$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 10 --frozen-dtype bf16 \
    --unfreeze-at s5:h.1 --save "$WORK/thawed.st" >"$WORK/thawed.txt" 2>&1 &&
    "$PYTHON3" - "$WORK/bf16.st" "$WORK/thawed.st" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP_SRCDIR"], "tests"))
import st_raw
kept, thawed = st_raw.read(sys.argv[1])[1], st_raw.read(sys.argv[2])[1]
low = st_raw.words(thawed["h.1.mlp.c_fc.weight"])
sys.exit(0 if kept["h.0.mlp.c_fc.weight"] == thawed["h.0.mlp.c_fc.weight"]
         and any(u & 0xFFFF for u in low) else 1)
PY
ok $? "--unfreeze-at s5:h.1 gives h.1's bf16 weights float32 storage and trains them; h.0 stays as kept"

# -- eval and generate on a bf16 base
"$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/ad-f32" \
    >"$WORK/e32.txt" 2>&1 &&
    "$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/ad-f32" \
        --frozen-dtype bf16 >"$WORK/e16.txt" 2>&1
[ $? -eq 0 ] && close "$(test_loss "$WORK/e16.txt")" "$(test_loss "$WORK/e32.txt")" 0.01
ok $? "frost eval --frozen-dtype bf16 is within 0.01 of float32 ($(test_loss "$WORK/e32.txt") -> $(test_loss "$WORK/e16.txt"))"
"$FROST" generate --model "$CFG" --weights "$WORK/base.st" --frozen-dtype bf16 --prompt "frost " \
    --tokens 12 --seed 2 >"$WORK/g1.txt" 2>&1 &&
    "$FROST" generate --model "$CFG" --weights "$WORK/base.st" --frozen-dtype bf16 --prompt "frost " \
        --tokens 12 --seed 2 >"$WORK/g2.txt" 2>&1
[ $? -eq 0 ] && cmp -s "$WORK/g1.txt" "$WORK/g2.txt" && [ "$(wc -c <"$WORK/g1.txt")" -eq 19 ]
ok $? "frost generate --frozen-dtype bf16 samples 12 bytes after the prompt, the same for the same seed"

# -- without AVX512_BF16: widened on the fly, the same numbers up to summation order
FROST_BF16_FALLBACK=1 "$FROST" train --model "$CFG" $TRAIN --init "$WORK/base.st" $LORA --steps 100 \
    --log-every 1 --frozen-dtype bf16 --metrics "$WORK/fallback.csv" >"$WORK/fallback.txt" 2>&1
ok $? "with FROST_BF16_FALLBACK=1 a bf16 base still trains ($(grep '^frozen weights' "$WORK/fallback.txt" | head -c 120))"
grep -q 'no AVX512_BF16' "$WORK/fallback.txt"
ok $? "and the run says once, at the start, that this CPU has no AVX512_BF16"
# The same products summed in another order: the first step's loss agrees
# closely; over 100 AdamW steps the difference grows as any rounding's does.
first=$(paste -d, "$WORK/bf16.csv" "$WORK/fallback.csv" |
    awk -F, 'NR == 2 { d = $3 - $12; if (d < 0) d = -d; printf "%.2g", d }')
worst=$(paste -d, "$WORK/bf16.csv" "$WORK/fallback.csv" |
    awk -F, 'NR > 1 { d = $3 - $12; if (d < 0) d = -d; if (d > m) m = d; n++ } END { if (n == 100) printf "%.2g", m; else print "missing" }')
close "$first" 0 1e-5 && close "$worst" 0 0.15
ok $? "its first loss is the native kernel's within 1e-5 ($first) and its 100 within 0.15 (worst $worst)"
done_testing
