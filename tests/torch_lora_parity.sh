#!/bin/sh
# torch_lora_parity.sh - frost's LoRA against PyTorch's (tests/torch_gpt2.py:
# PEFT's semantics written by hand): an adapter directory written with numpy in
# PEFT's layout (base_model.model.transformer.h.N..., adapter_config.json) on
# the transformers issue's parity GPT-2 loads into frost; 20 AdamW steps with
# weight decay on the adapters give per-step losses within 1e-4 of PyTorch's
# on 1 and 2 threads, on 2 ranks and with rslora; the base weights stay
# bitwise; each adapter gradient is no further from a float64 reference than
# twice PyTorch float32's distance; and the adapter frost writes after
# training gives PyTorch frost's logits.  Skipped without torch.
. "$TOP_SRCDIR/tests/common.sh"
plan 8
TOOL="$TOP_SRCDIR/tests/torch_gpt2.py"
DRIVER="$(dirname "$FROST")/../tests/gpt2_train"
torch_python_or_skip_all
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
WORK=$(mktemp -d /tmp/frost-lora.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

CONFIG='{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 32, "vocab_size": 256, "resid_pdrop": 0, "embd_pdrop": 0, "attn_pdrop": 0}'
# r 8 on c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj, B drawn non-zero so the
# adapters matter from the first step.
ADAPT="--lora c_attn,c_proj,c_fc --lora-rank 8 --lora-alpha 16"
TRAIN="--steps 20 --batch-size 4 --lr 1e-3 --weight-decay 0.01"
"$PY" "$TOOL" make-model --config-json "$CONFIG" --out "$WORK/m" --seed 1 --mask-buffers \
    --prefix transformer. >"$WORK/log" 2>&1 &&
"$PY" "$TOOL" make-data --out "$WORK/d" --vocab 256 --seq 16 --rows 38 --seed 2 >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" make-adapter --model "$WORK/m" $ADAPT --b-std 0.05 --seed 3 --out "$WORK/a" \
    >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" make-adapter --model "$WORK/m" $ADAPT --rslora --b-std 0.05 --seed 3 --out "$WORK/rs" \
    >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" train --model "$WORK/m" --data "$WORK/d" --adapter "$WORK/a" $TRAIN \
    --losses "$WORK/torch.txt" >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" train --model "$WORK/m" --data "$WORK/d" --adapter "$WORK/rs" $TRAIN \
    --losses "$WORK/torch_rs.txt" >>"$WORK/log" 2>&1
status=$?
[ $status -eq 0 ] || cat "$WORK/log" >&2

# Largest |frost - torch| over the steps, or "missing" when a run gave less.
worst() {
    awk 'NR == FNR { want[$1] = $2; next } { d = $2 - want[$1]; if (d < 0) d = -d;
         if (d > m) m = d; n++ } END { if (n != 20) print "missing"; else printf "%.3g\n", m }' \
        "$1" "$2"
}
within() { [ "$1" != missing ] && awk -v d="$1" 'BEGIN { exit !(d < 1e-4) }'; }
run() { # run ADAPTER OUT THREADS
    GPT2_ADAPTER="$1" "$DRIVER" "$WORK/m" "$WORK/d" 20 4 1e-3 0.01 "$3" >"$2" 2>>"$WORK/log"
}

GPT2_SAVE="$WORK/base.st" GPT2_SAVE_ADAPTER="$WORK/trained" run "$WORK/a" "$WORK/one.txt" 1
d=$(worst "$WORK/torch.txt" "$WORK/one.txt")
within "$d"
ok $? "LoRA r 8 on a GPT-2 (PEFT adapter written with numpy), 1 thread: 20 AdamW losses within 1e-4 of PyTorch (worst $d)"
run "$WORK/a" "$WORK/two.txt" 2
d=$(worst "$WORK/torch.txt" "$WORK/two.txt")
within "$d"
ok $? "LoRA on 2 threads: within 1e-4 of PyTorch (worst $d)"
if [ -n "$MPIRUN" ]; then
    GPT2_ADAPTER="$WORK/a" timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -x GPT2_ADAPTER -np 2 "$DRIVER" \
        "$WORK/m" "$WORK/d" 20 4 1e-3 0.01 1 >"$WORK/ranks.txt" 2>>"$WORK/log"
    d=$(worst "$WORK/torch.txt" "$WORK/ranks.txt")
    within "$d"
    ok $? "LoRA on 2 ranks: within 1e-4 of PyTorch (worst $d)"
else
    skip "no mpirun (built --without-mpi)"
fi
run "$WORK/rs" "$WORK/rs.txt" 1
d=$(worst "$WORK/torch_rs.txt" "$WORK/rs.txt")
within "$d"
ok $? "rslora (alpha / sqrt(r)): within 1e-4 of PyTorch (worst $d)"
"$PY" - "$TOOL" "$WORK/m/model.safetensors" "$WORK/base.st" >"$WORK/bits" 2>&1 <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
before, after = tool.load_safetensors(sys.argv[2]), tool.load_safetensors(sys.argv[3])
before = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in before.items()
          if not k.endswith((".attn.bias", ".attn.masked_bias"))}
same = set(before) == set(after) and all(
    (after[k].view("uint32") == before[k].view("uint32")).all() for k in after)
print(len(after), "base tensors", "bitwise unchanged" if same else "CHANGED")
sys.exit(0 if same else 1)
PY
ok $? "after 20 steps the base weights are bitwise the file's ($(cat "$WORK/bits"))"
GPT2_ADAPTER="$WORK/a" GPT2_GRADS="$WORK/frost_grads" "$DRIVER" "$WORK/m" "$WORK/d" 1 4 0 0 2 \
    >/dev/null 2>>"$WORK/log" &&
    "$PY" "$TOOL" grads --model "$WORK/m" --data "$WORK/d" --adapter "$WORK/a" --batch-size 4 \
        --dtype float32 --out "$WORK/g32.st" >>"$WORK/log" 2>&1 &&
    "$PY" "$TOOL" grads --model "$WORK/m" --data "$WORK/d" --adapter "$WORK/a" --batch-size 4 \
        --dtype float64 --out "$WORK/g64.st" >>"$WORK/log" 2>&1 &&
    "$PY" "$TOOL" grads-vs --strip base_model.model.transformer. --what "adapter gradients" \
        "$WORK/frost_grads/adapter_model.safetensors" "$WORK/g32.st" "$WORK/g64.st" >"$WORK/grads" 2>&1
ok $? "every adapter gradient (2 threads) within 2x PyTorch float32's distance to float64 ($(cat "$WORK/grads"))"
# The adapter frost wrote after training, on the base, in PyTorch: frost's logits.
GPT2_ADAPTER="$WORK/trained" GPT2_LOGITS="$WORK/frost.logits" "$DRIVER" "$WORK/m" "$WORK/d" 1 4 0 0 1 \
    >/dev/null 2>>"$WORK/log" &&
    d=$("$PY" - "$TOOL" "$WORK" <<'PY' 2>>"$WORK/log"
import subprocess, sys
import numpy as np
tool, work = sys.argv[1:3]
rows = np.load(work + "/d/train_x.npy")[:4, :-1].astype(np.int64)
np.save(work + "/rows.npy", rows)
subprocess.run([sys.executable, tool, "logits", "--model", work + "/m", "--adapter",
                work + "/trained", "--tokens", work + "/rows.npy", "--out",
                work + "/torch_logits.npy"], check=True)
torch_logits = np.load(work + "/torch_logits.npy")
frost_logits = np.fromfile(work + "/frost.logits", dtype=np.float32).reshape(torch_logits.shape)
worst = float(np.abs(frost_logits - torch_logits).max())
print("%.2g" % worst)
sys.exit(0 if worst < 1e-4 else 1)
PY
)
ok $? "the adapter frost saved after training, read by PyTorch's reader, gives frost's logits within 1e-4 (max |diff| $d)"
"$PY" "$TOOL" merge --model "$WORK/m" --adapter "$WORK/trained" --out "$WORK/torch_merged.st" \
    >>"$WORK/log" 2>&1 &&
    "$FROST" merge --weights "$WORK/m/model.safetensors" --adapter "$WORK/trained" \
        -o "$WORK/frost_merged.st" >>"$WORK/log" 2>&1 &&
    d=$("$PY" - "$TOOL" "$WORK/frost_merged.st" "$WORK/torch_merged.st" <<'PY' 2>>"$WORK/log"
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
frost, ref = tool.load_safetensors(sys.argv[2]), tool.load_safetensors(sys.argv[3])
frost = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in frost.items()
         if not k.endswith((".attn.bias", ".attn.masked_bias"))}
worst = max(float(np.abs(frost[k].astype(np.float64) - ref[k]).max()) for k in ref)
print("%.2g over %d tensors" % (worst, len(ref)))
sys.exit(0 if set(frost) == set(ref) and worst <= 1e-6 else 1)
PY
)
ok $? "frost merge writes PyTorch's merged weights within 1e-6 ($d)"
done_testing
