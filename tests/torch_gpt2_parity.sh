#!/bin/sh
# torch_gpt2_parity.sh - frost's GPT-2 against PyTorch's (tests/torch_gpt2.py,
# Hugging Face's GPT2LMHeadModel in plain torch): a model written in Hugging
# Face's layout (the "transformer." prefix and the attention mask buffers
# included) loads from its config.json and model.safetensors, and 20 AdamW
# steps with weight decay on every parameter give per-step losses within 1e-4
# of PyTorch's, on 1 and 2 threads, on 2 ranks, and with wte, wpe and h.0
# frozen, which then stay bitwise unchanged; and every parameter's gradient is
# no further from a float64 reference than twice PyTorch float32's distance.
# Skipped without torch.
. "$TOP_SRCDIR/tests/common.sh"
CHECKS=9
plan $CHECKS
TOOL="$TOP_SRCDIR/tests/torch_gpt2.py"
DRIVER="$(dirname "$FROST")/../tests/gpt2_train"
torch_python_or_skip_all
MPI_FLAGS="--allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE"
WORK=$(mktemp -d /tmp/frost-gpt2.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

CONFIG='{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 32, "vocab_size": 256, "resid_pdrop": 0, "embd_pdrop": 0, "attn_pdrop": 0}'
"$PY" "$TOOL" make-model --config-json "$CONFIG" --out "$WORK/m" --seed 1 --mask-buffers \
    --prefix transformer. >"$WORK/log" 2>&1 &&
"$PY" "$TOOL" make-data --out "$WORK/d" --vocab 256 --seq 16 --rows 38 --seed 2 >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" train --model "$WORK/m" --data "$WORK/d" --steps 20 --batch-size 4 --lr 1e-3 \
    --weight-decay 0.01 --losses "$WORK/torch.txt" >>"$WORK/log" 2>&1 &&
"$PY" "$TOOL" train --model "$WORK/m" --data "$WORK/d" --steps 20 --batch-size 4 --lr 1e-3 \
    --weight-decay 0.01 --freeze wte.weight --freeze wpe.weight --freeze h.0 \
    --losses "$WORK/torch_frozen.txt" >>"$WORK/log" 2>&1
status=$?
[ $status -eq 0 ] || cat "$WORK/log" >&2

# Largest |frost - torch| over the steps, or "missing" when a run gave less.
worst() {
    awk 'NR == FNR { want[$1] = $2; next } { d = $2 - want[$1]; if (d < 0) d = -d;
         if (d > m) m = d; n++ } END { if (n != 20) print "missing"; else printf "%.3g\n", m }' \
        "$1" "$2"
}
within() { [ "$1" != missing ] && awk -v d="$1" 'BEGIN { exit !(d < 1e-4) }'; }

run() { # run OUT THREADS [FREEZE...]
    out=$1 threads=$2
    shift 2
    "$DRIVER" "$WORK/m" "$WORK/d" 20 4 1e-3 0.01 "$threads" "$@" >"$out" 2>>"$WORK/log"
}

run "$WORK/one.txt" 1
d=$(worst "$WORK/torch.txt" "$WORK/one.txt")
within "$d"
ok $? "GPT-2 (Hugging Face layout) on 1 thread: 20 AdamW losses within 1e-4 of PyTorch (worst $d)"
run "$WORK/two.txt" 2
d=$(worst "$WORK/torch.txt" "$WORK/two.txt")
within "$d"
ok $? "GPT-2 on 2 threads: within 1e-4 of PyTorch (worst $d)"
GPT2_SAVE="$WORK/frozen.safetensors" run "$WORK/frozen.txt" 1 wte wpe h.0
d=$(worst "$WORK/torch_frozen.txt" "$WORK/frozen.txt")
within "$d"
ok $? "GPT-2 with wte (and so the tied head), wpe and h.0 frozen: within 1e-4 of PyTorch (worst $d)"
"$PY" - "$TOOL" "$WORK/m/model.safetensors" "$WORK/frozen.safetensors" >"$WORK/bits" 2>&1 <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
before, after = tool.load_safetensors(sys.argv[2]), tool.load_safetensors(sys.argv[3])
before = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in before.items()}
frozen = [k for k in after if k.startswith(("wte.", "wpe.", "h.0."))]
moved = [k for k in after if not k.startswith(("wte.", "wpe.", "h.0."))
         and (after[k] != before[k]).any()]
same = all((after[k].view("uint32") == before[k].view("uint32")).all() for k in frozen)
print(len(frozen), "frozen", "bitwise unchanged" if same else "CHANGED", len(moved), "trained moved")
sys.exit(0 if same and len(frozen) == 14 and moved else 1)
PY
ok $? "the frozen tensors are bitwise unchanged and the others trained ($(cat "$WORK/bits"))"
if [ -n "$MPIRUN" ]; then
    timeout -k 10 120 "$MPIRUN" $MPI_FLAGS -np 2 "$DRIVER" "$WORK/m" "$WORK/d" 20 4 1e-3 0.01 1 >"$WORK/ranks.txt" 2>>"$WORK/log"
    d=$(worst "$WORK/torch.txt" "$WORK/ranks.txt")
    within "$d"
    ok $? "GPT-2 on 2 ranks: within 1e-4 of PyTorch (worst $d)"
else
    skip "no mpirun (built --without-mpi)"
fi
"$DRIVER" "$WORK/m" "$WORK/d" 20 4 1e-3 0.01 1 'h.9*' >/dev/null 2>"$WORK/nomatch"
[ $? -ne 0 ] && grep -q "matches no parameter" "$WORK/nomatch"
ok $? "a freeze pattern matching no GPT-2 parameter is an error ($(head -c 150 "$WORK/nomatch"))"
GPT2_GRADS="$WORK/frost_grads.st" "$DRIVER" "$WORK/m" "$WORK/d" 1 4 0 0 2 >/dev/null 2>>"$WORK/log" &&
    "$PY" "$TOOL" grads --model "$WORK/m" --data "$WORK/d" --batch-size 4 --dtype float32 \
        --out "$WORK/g32.st" >>"$WORK/log" 2>&1 &&
    "$PY" "$TOOL" grads --model "$WORK/m" --data "$WORK/d" --batch-size 4 --dtype float64 \
        --out "$WORK/g64.st" >>"$WORK/log" 2>&1 &&
    "$PY" "$TOOL" grads-vs "$WORK/frost_grads.st" "$WORK/g32.st" "$WORK/g64.st" >"$WORK/grads" 2>&1
ok $? "every parameter's gradient (2 threads) within 2x PyTorch float32's distance to float64 ($(cat "$WORK/grads"))"
# Logits, at the weights as made and as frost saved them after training: the
# saved file, beside the config, loads into PyTorch under the same names.
logits_match() { # logits_match MODEL_DIR
    GPT2_LOGITS="$WORK/frost.logits" "$DRIVER" "$1" "$WORK/d" 1 4 0 0 1 >/dev/null 2>>"$WORK/log" &&
        "$PY" - "$TOOL" "$1" "$WORK/d" "$WORK/frost.logits" "$WORK" <<'PY' 2>>"$WORK/log"
import subprocess, sys
import numpy as np
tool, model, data, frost_path, work = sys.argv[1:6]
rows = np.load(data + "/train_x.npy")[:4, :-1].astype(np.int64)
np.save(work + "/rows.npy", rows)
subprocess.run([sys.executable, tool, "logits", "--model", model, "--tokens", work + "/rows.npy",
                "--out", work + "/torch_logits.npy"], check=True)
torch_logits = np.load(work + "/torch_logits.npy")
frost_logits = np.fromfile(frost_path, dtype=np.float32).reshape(torch_logits.shape)
worst = float(np.abs(frost_logits - torch_logits).max())
print("%.2g" % worst)
sys.exit(0 if worst < 1e-4 else 1)
PY
}
d=$(logits_match "$WORK/m")
ok $? "the logits of 4 rows within 1e-4 of PyTorch's (max |diff| $d)"
mkdir -p "$WORK/saved" && cp "$WORK/m/config.json" "$WORK/saved/" &&
    cp "$WORK/frozen.safetensors" "$WORK/saved/model.safetensors" && d=$(logits_match "$WORK/saved")
ok $? "frost's saved weights load into PyTorch under their names, the same logits within 1e-4 (max |diff| $d)"
done_testing
