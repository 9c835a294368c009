#!/bin/sh
# lora.sh - LoRA adapters on the command line, on real text (this
# repository's README.md as bytes) with a GPT-2 from a config.json: which
# layers --lora names (PEFT's target_modules rule), what trains and what stays
# bitwise frozen, the PEFT adapter directory frost writes and reads, eval,
# generate and frost merge with an adapter, continuing from an adapter and a
# bitwise resume, gradual unfreezing from adapters to a whole block, 2 ranks
# (4 bytes per adapter parameter on the wire), and bad adapters and flags (one
# line naming the file or flag, nothing written).
. "$TOP_SRCDIR/tests/common.sh"
plan 40
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
TOKENS="$PYTHON3 $TOP_SRCDIR/tests/make_tokens.py"
head -c 12000 "$TOP_SRCDIR/README.md" >"$WORK/text"
$TOKENS "$WORK/lm" "$WORK/text" 16 --test-rows 32
mkdir -p "$WORK/cfg"
printf '{"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 16, "vocab_size": 256, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"}\n' >"$WORK/cfg/config.json"
CFG="$WORK/cfg/config.json"
TRAIN="--data $WORK/lm --optimizer adamw --lr 3e-3 --batch-size 8 --no-shuffle --log-every 5"
LORA="--lora c_attn,mlp.c_fc --lora-rank 4 --lora-alpha 8"
# The names, dtypes and shapes of a safetensors file's tensors, one line each
# (tests/st_raw.py: no numpy needed).
tensors() {
    "$PYTHON3" - "$1" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP_SRCDIR"], "tests"))
import st_raw
for name, t in sorted(st_raw.read(sys.argv[1])[0].items()):
    print(name, t["dtype"], t["shape"])
PY
}
trainable() { awk '/^trainable parameters/ { print $3 }' "$1"; }

# -- which layers: PEFT's suffix rule, and what trains
"$FROST" inspect --model "$CFG" $LORA >"$WORK/inspect.txt" 2>&1
ok $? "frost inspect --lora lists the adapters"
grep -c 'lora_[AB].weight' "$WORK/inspect.txt" | grep -qx 8 &&
    grep -q '^h.0.attn.c_attn.lora_A.weight \[4, 32\] 128 trainable' "$WORK/inspect.txt" &&
    grep -q '^h.1.mlp.c_fc.lora_B.weight \[128, 4\] 512 trainable' "$WORK/inspect.txt"
ok $? "'c_attn,mlp.c_fc' names the 4 conv1d layers, each with A [r, in] and B [out, r] ($(grep -c lora_ "$WORK/inspect.txt") adapter tensors)"
# per block: c_attn 4*32 + 96*4, c_fc 4*32 + 128*4
[ "$(trainable "$WORK/inspect.txt")" = $((2 * (128 + 384 + 128 + 512))) ] &&
    grep -q 'h.0.attn.c_attn.weight \[32, 96\] 3072 frozen' "$WORK/inspect.txt" &&
    grep -q '^ln_f.weight \[32\] 32 frozen' "$WORK/inspect.txt"
ok $? "only the adapters train, every base parameter frozen as PEFT's ($(trainable "$WORK/inspect.txt") trainable)"
"$FROST" inspect --model "$CFG" $LORA --unfreeze 'ln_f.*' >"$WORK/unfreeze.txt" 2>&1 &&
    [ "$(trainable "$WORK/unfreeze.txt")" = $((2 * 1152 + 64)) ]
ok $? "--unfreeze 'ln_f.*' trains ln_f fully beside the adapters ($(trainable "$WORK/unfreeze.txt"))"

# -- training: the loss falls, the base stays bitwise, the adapter directory
"$FROST" train --model "$CFG" $TRAIN --steps 40 --save "$WORK/base.st" >/dev/null 2>&1
ok $? "a base model trains (the weights LoRA starts from)"
"$FROST" train --model "$CFG" $TRAIN --steps 40 --init "$WORK/base.st" $LORA \
    --save "$WORK/after.st" --save-adapter "$WORK/ad" >"$WORK/lora.txt" 2>&1
ok $? "frost train --lora --save-adapter exits 0"
"$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" >"$WORK/eval-base.txt" 2>&1
before=$(awk '/^test/ { print $3 }' "$WORK/eval-base.txt")
after=$(awk '/^test/ { print $3 }' "$WORK/lora.txt")
awk -v a="$before" -v b="$after" 'BEGIN { exit !(b < a) }'
ok $? "the adapters alone lower the test loss ($before -> $after)"
cmp -s "$WORK/base.st" "$WORK/after.st" && grep -q '^frozen parameters: [0-9]*, unchanged' "$WORK/lora.txt"
ok $? "--save writes the base weights bitwise as they came in, no adapter in them"
grep -q "^allreduce: $((4 * 2304)) bytes per step" "$WORK/lora.txt"
ok $? "the allreduce carries 4 bytes per adapter parameter ($(grep '^allreduce' "$WORK/lora.txt" | head -c 40))"
tensors "$WORK/ad/adapter_model.safetensors" >"$WORK/ad.txt" 2>&1
[ "$(wc -l <"$WORK/ad.txt")" -eq 8 ] &&
    grep -qx 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight F32 \[4, 32\]' "$WORK/ad.txt" &&
    grep -qx 'base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight F32 \[128, 4\]' "$WORK/ad.txt"
ok $? "adapter_model.safetensors holds PEFT's keys for GPT2LMHeadModel (base_model.model.transformer.h.N...)"
"$PYTHON3" - "$WORK/ad/adapter_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
want = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0, "bias": "none",
        "fan_in_fan_out": True, "use_rslora": False, "task_type": "CAUSAL_LM",
        "target_modules": ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc",
                           "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"]}
sys.exit(any(c.get(k) != v for k, v in want.items()))
PY
ok $? "adapter_config.json says LORA, r 4, alpha 8, bias none, fan_in_fan_out, the target modules"

# -- eval, merge and generate with the adapter
"$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/ad" \
    >"$WORK/eval-ad.txt" 2>&1
[ "$(grep '^test' "$WORK/eval-ad.txt")" = "$(grep '^test' "$WORK/lora.txt")" ]
ok $? "frost eval --adapter gives the training run's test loss ($(grep '^test' "$WORK/eval-ad.txt"))"
[ "$(grep '^test' "$WORK/eval-base.txt")" != "$(grep '^test' "$WORK/eval-ad.txt")" ]
ok $? "without the adapter the base model's loss differs ($(grep '^test' "$WORK/eval-base.txt"))"
"$FROST" merge --weights "$WORK/base.st" --adapter "$WORK/ad" -o "$WORK/merged.st" >"$WORK/merge.txt" 2>&1 &&
    "$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/merged.st" >"$WORK/eval-merged.txt" 2>&1
ok $? "frost merge writes weights that frost eval loads without an adapter"
awk '/^test/ { print $3 }' "$WORK/eval-ad.txt" "$WORK/eval-merged.txt" |
    awk 'NR == 1 { a = $1 } NR == 2 { d = a - $1; if (d < 0) d = -d; exit !(d <= 1e-4) }'
ok $? "the merged weights give the adapter's test loss within 1e-4 ($(awk '/^test/ { print $3 }' "$WORK/eval-merged.txt"))"
[ "$(tensors "$WORK/merged.st" | wc -l)" = "$(tensors "$WORK/base.st" | wc -l)" ] &&
    ! cmp -s "$WORK/merged.st" "$WORK/base.st"
ok $? "the merged file has the base's tensors under their names, the adapted ones changed"
"$FROST" generate --model "$CFG" --weights "$WORK/base.st" --adapter "$WORK/ad" --prompt "frost " \
    --tokens 16 --temperature 0 >"$WORK/gen-ad.txt" 2>&1 &&
    "$FROST" generate --model "$CFG" --weights "$WORK/merged.st" --prompt "frost " --tokens 16 \
        --temperature 0 >"$WORK/gen-merged.txt" 2>&1
[ $? -eq 0 ] && cmp -s "$WORK/gen-ad.txt" "$WORK/gen-merged.txt"
ok $? "frost generate --adapter continues the prompt as the merged weights do"

# -- continuing from an adapter directory, and a bitwise resume
SGD="--data $WORK/lm --optimizer sgd --lr 0.05 --batch-size 8 --no-shuffle"
"$FROST" train --model "$CFG" $SGD --epochs 2 --init "$WORK/base.st" $LORA --save-adapter "$WORK/two" \
    >/dev/null 2>&1 &&
    "$FROST" train --model "$CFG" $SGD --epochs 1 --init "$WORK/base.st" $LORA --save-adapter "$WORK/one" \
        >/dev/null 2>&1 &&
    "$FROST" train --model "$CFG" $SGD --epochs 1 --init "$WORK/base.st" --adapter "$WORK/one" \
        --save-adapter "$WORK/cont" >"$WORK/cont.txt" 2>&1
[ $? -eq 0 ] && cmp -s "$WORK/two/adapter_model.safetensors" "$WORK/cont/adapter_model.safetensors"
ok $? "--adapter DIR continues a fine-tune: 1 epoch + 1 epoch (SGD) gives 2 epochs' adapter bit for bit"
"$FROST" train --model "$CFG" $TRAIN --steps 15 --init "$WORK/base.st" $LORA \
    --save-adapter "$WORK/whole" >/dev/null 2>&1
FROST_STOP_AFTER_STEP=7 "$FROST" train --model "$CFG" $TRAIN --steps 15 --init "$WORK/base.st" $LORA \
    --checkpoint "$WORK/c.st" >/dev/null 2>&1
stopped=$?
"$FROST" train --model "$CFG" $TRAIN --steps 15 $LORA --resume "$WORK/c.st" \
    --save-adapter "$WORK/resumed" >/dev/null 2>&1
[ $stopped -eq 75 ] && cmp -s "$WORK/whole/adapter_model.safetensors" "$WORK/resumed/adapter_model.safetensors"
ok $? "stopped after step 7 (exit $stopped) and resumed (AdamW state in the checkpoint), the adapter ends bit for bit"

# -- gradual unfreezing: from adapters to a whole block
"$FROST" train --model "$CFG" $TRAIN --steps 10 --init "$WORK/base.st" $LORA --unfreeze-at s5:h.1 \
    --save "$WORK/gradual.st" >"$WORK/gradual.txt" 2>&1
grep -q '^step 5: --unfreeze-at s5:h.1: trainable parameters 2304 -> ' "$WORK/gradual.txt"
ok $? "--unfreeze-at s5:h.1 switches block h.1 from adapters to full training ($(grep '^step 5:' "$WORK/gradual.txt" | head -c 100))"
"$PYTHON3" - "$WORK/base.st" "$WORK/gradual.st" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP_SRCDIR"], "tests"))
import st_raw
a, b = st_raw.read(sys.argv[1])[1], st_raw.read(sys.argv[2])[1]
moved = {k for k in a if a[k] != b[k]}
sys.exit(not (moved and all(k.startswith("h.1.") for k in moved)
              and "h.1.attn.c_attn.weight" in moved))
PY
ok $? "after the switch h.1's base weights train, everything else stays bitwise"

# -- the best evaluation's adapters
"$FROST" train --model "$CFG" $TRAIN --steps 10 --init "$WORK/base.st" $LORA --eval-every 5 \
    --save-best "$WORK/best" >"$WORK/best.txt" 2>&1 &&
    "$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/best" \
        >"$WORK/best-eval.txt" 2>&1
best=$(sed -n 's/^eval at step [0-9]*: test loss \([0-9.]*\) .*the best so far.*/\1/p' "$WORK/best.txt" | tail -n 1)
[ -n "$best" ] && [ "$(awk '/^test/ { print $3 }' "$WORK/best-eval.txt")" = "$best" ]
ok $? "--save-best with adapters keeps the best evaluation's adapter directory (test loss $best)"

# -- dropout on the adapters' input
"$FROST" train --model "$CFG" $TRAIN --steps 10 --init "$WORK/base.st" $LORA --lora-dropout 0.1 \
    --rslora --save-adapter "$WORK/drop" --metrics "$WORK/drop.csv" >"$WORK/drop.txt" 2>&1 &&
    grep -q '"lora_dropout": 0.100000001' "$WORK/drop/adapter_config.json" &&
    grep -q '"use_rslora": true' "$WORK/drop/adapter_config.json"
ok $? "--lora-dropout 0.1 --rslora train, and adapter_config.json records both"
"$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/drop" >"$WORK/e1.txt" 2>&1 &&
    "$FROST" eval --model "$CFG" --data "$WORK/lm" --init "$WORK/base.st" --adapter "$WORK/drop" --threads 1 >"$WORK/e2.txt" 2>&1
[ "$(grep '^test' "$WORK/e1.txt")" = "$(grep '^test' "$WORK/drop.txt")" ] &&
    [ "$(grep '^test' "$WORK/e2.txt")" = "$(grep '^test' "$WORK/e1.txt")" ]
ok $? "evaluation drops nothing: the same test loss in training, on 2 threads and on 1"

# -- 2 ranks: the same losses, and 4 bytes per adapter parameter on the wire
if [ -n "${MPIRUN:-}" ]; then
    # An MPI profiling layer counts the bytes each rank sends (tests/pmpi_count.c);
    # a sanitizer build lists it before its runtime, which ASan allows when told.
    PRELOAD=$(dirname "$FROST")/../tests/.libs/libpmpicount.so
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
    export ASAN_OPTIONS
    timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -x LD_PRELOAD="$PRELOAD" -x PMPI_COUNT_FILE="$WORK/count" \
        -np 2 "$FROST" train --model "$CFG" $TRAIN --steps 20 \
        --init "$WORK/base.st" $LORA --metrics "$WORK/m2.csv" >"$WORK/two.txt" 2>&1
    ok $? "2 ranks train the adapters"
    [ "$(cut -d' ' -f2 "$WORK/count.0")" = $((20 * 4 * 2304)) ] &&
        [ "$(cut -d' ' -f2 "$WORK/count.1")" = $((20 * 4 * 2304)) ]
    ok $? "each rank put exactly 20 steps x 4 x 2304 bytes on the wire, counted by PMPI ($(cut -d' ' -f2 "$WORK/count.0" "$WORK/count.1" | tr '\n' ' '))"
    "$FROST" train --model "$CFG" $TRAIN --steps 20 --init "$WORK/base.st" $LORA \
        --metrics "$WORK/m1.csv" >/dev/null 2>&1
    paste -d, "$WORK/m1.csv" "$WORK/m2.csv" | awk -F, -v n=9 'NR > 1 { d = $3 - $(3 + n); if (d < 0) d = -d; if (d > m) m = d; rows++ } END { exit !(rows == 4 && m < 1e-4) }'
    ok $? "2 ranks give one process's losses within 1e-4"
    awk -F, 'NR > 1 && $6 != 4 * 2304 { bad = 1 } END { exit bad }' "$WORK/m2.csv"
    ok $? "2 ranks: each step sends exactly 4 x 2304 bytes, the adapters' gradients only"
else
    skip "built without MPI"; skip "built without MPI"; skip "built without MPI"
    skip "built without MPI"
fi

# -- bad adapters and flags: one line naming the file or flag, nothing written
fails() { # fails PATTERN DESCRIPTION COMMAND...: exits non-zero, one line matching, no out.st
    pattern=$1 what=$2
    shift 2
    rm -f "$WORK/out.st"
    "$@" >"$WORK/bad.txt" 2>&1
    status=$?
    [ $status -ne 0 ] && [ ! -e "$WORK/out.st" ] && [ "$(grep -c . "$WORK/bad.txt")" -le 3 ] &&
        grep 'frost:' "$WORK/bad.txt" | grep -q -- "$pattern"
    ok $? "$what: $(grep 'frost:' "$WORK/bad.txt" | head -c 160)"
}
copy_adapter() { rm -rf "$WORK/$1" && cp -r "$WORK/ad" "$WORK/$1"; }
edit_config() { # edit_config DIR PYTHON-STATEMENT on c
    "$PYTHON3" -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); $2; json.dump(c, open(p, 'w'))" \
        "$WORK/$1/adapter_config.json"
}
rename_tensor() { # rename_tensor DIR OLD NEW: the header rewritten, the data kept
    "$PYTHON3" - "$WORK/$1/adapter_model.safetensors" "$2" "$3" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["TOP_SRCDIR"], "tests"))
import st_raw
path, old, new = sys.argv[1:]
head, _ = st_raw.read(path)
head[new] = head.pop(old)
st_raw.write(path, head, st_raw.data_section(path))
PY
}
RUN="$FROST train --model $CFG $TRAIN --steps 2 --init $WORK/base.st --save $WORK/out.st"
fails "matches no layer" "--lora naming nothing" $RUN --lora 'nothing'
fails "no linear or conv1d" "--lora naming only layernorms" $RUN --lora 'ln_*'
fails "need --lora" "--lora-rank without --lora" $RUN --lora-rank 4
fails "use one" "--adapter and --lora together" $RUN --adapter "$WORK/ad" --lora c_attn
copy_adapter notlora && edit_config notlora 'c["peft_type"] = "PREFIX_TUNING"'
fails "notlora/adapter_config.json: peft_type is \"PREFIX_TUNING\"" "an adapter of another PEFT type" $RUN --adapter "$WORK/notlora"
copy_adapter bias && edit_config bias 'c["bias"] = "all"'
fails "bias/adapter_config.json: bias \"all\"" "an adapter that trains biases" $RUN --adapter "$WORK/bias"
copy_adapter rank && edit_config rank 'c["r"] = 2'
fails "rank/adapter_model.safetensors: tensor 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' has shape \[4, 32\], but r 2" "a rank other than the config's" $RUN --adapter "$WORK/rank"
copy_adapter missing && rename_tensor missing base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight base_model.model.transformer.h.7.mlp.c_fc.lora_A.weight
fails "missing/adapter_model.safetensors: tensor 'base_model.model.transformer.h.7.mlp.c_fc.lora_A.weight': the model has no module 'transformer.h.7.mlp.c_fc'" "a module the model lacks" $RUN --adapter "$WORK/missing"
copy_adapter target && edit_config target 'c["target_modules"] = ["c_attn", "c_proj_typo"]'
fails "target_modules names 'c_proj_typo'" "target_modules naming a module the model lacks" $RUN --adapter "$WORK/target"
fails "nowhere/adapter_config.json" "an adapter directory that is not there" $RUN --adapter "$WORK/nowhere"
printf 'x' >"$WORK/afile"
fails "--save-adapter $WORK/afile: not a directory" "--save-adapter onto a file, refused before training" $RUN $LORA --save-adapter "$WORK/afile"
"$FROST" train --model "input 16 tokens; wte = embedding(256, 8); lm_head = linear(8, 256)" \
    --data "$WORK/lm" --steps 1 --save "$WORK/small.st" >/dev/null 2>&1
fails "small.st: no 'transformer.h.0.attn.c_attn.weight'" "frost merge onto another model's weights" \
    "$FROST" merge --weights "$WORK/small.st" --adapter "$WORK/ad" -o "$WORK/out.st"
done_testing
