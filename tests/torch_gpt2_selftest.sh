#!/bin/sh
# torch_gpt2_selftest.sh - checks tests/torch_gpt2.py, the PyTorch GPT-2 that
# later tests hold frost's GPT-2 against, on a tiny model (2 layers, n_embd
# 64, 4 heads, 32 positions, vocabulary 256, 16 tokens a row, batches of 4):
# make-model's safetensors files parse (read here with json and struct alone)
# and hold Hugging Face's names and shapes, with and without --prefix and
# --mask-buffers, beside a complete config.json; the logits do not depend on
# the prefix or the buffers, agree with a forward pass written here in numpy
# and are causal; a fresh model's first loss is ln(V) within 0.1; 20 AdamW
# steps in float32 and in float64 agree on every loss within 1e-4; frozen
# parameters keep their bits; the float32 gradient is the float64 one within
# a relative 1e-3; and the tied head's gradient is the sum of the embedding's
# and the head's, computed on an untied copy.
#
# Needs a python3 that can `import torch` (Debian's python3-torch belongs to
# /usr/bin/python3, tried first, then $PYTHON3) and numpy; without them every
# check is reported as skipped.  The tool runs in three processes in all
# (its batch command), because importing torch alone takes seconds.
. "$TOP_SRCDIR/tests/common.sh"
CHECKS=17
plan $CHECKS
TOOL="$TOP_SRCDIR/tests/torch_gpt2.py"

torch_python_or_skip_all
diag "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) under $PY"

L=2 C=64 H=4 P=32 V=256 T=16 B=4 ROWS=38 STEPS=20
CONFIG="{\"n_layer\": $L, \"n_embd\": $C, \"n_head\": $H, \"n_positions\": $P, \"vocab_size\": $V, \"activation_function\": \"gelu_new\", \"resid_pdrop\": 0, \"embd_pdrop\": 0, \"attn_pdrop\": 0, \"layer_norm_epsilon\": 1e-5}"
# 38 rows in batches of 4: batch 9 is rows 36, 37, 0, 1 and the 20 steps
# go round the data twice.
TRAIN="--steps $STEPS --batch-size $B --lr 0.001 --weight-decay 0.1 --betas 0.9,0.95 --eps 1e-8"
FROZEN="h.0 *.bias wpe.weight"

# The checker: safetensors read with struct and json alone (not the tool's
# reader), and numpy.
cat > "$WORK/check.py" << 'PYEOF'
import json, math, os, struct, sys
import numpy as np

def read(path):
    """[(name, dtype, shape, array)] in header order; asserts the layout."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0, f"header length {n} not padded to 8"
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out, at = [], 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        assert begin == at, f"{name}: begins at {begin}, expected {at} (header order)"
        size = {"F32": 4, "F64": 8, "I64": 8, "U8": 1, "BOOL": 1}[info["dtype"]] \
            * math.prod(info["shape"])
        assert end - begin == size, f"{name}: {end - begin} bytes for {info['shape']}"
        a = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"]) \
            if info["dtype"] == "F32" else None
        out.append((name, info["dtype"], info["shape"], a))
        at = end
    assert at == len(data), f"{len(data) - at} bytes after the last tensor"
    return out

def weights(path):
    return {name: a for name, _, _, a in read(path)}

def cmd_names(path):
    for name, dtype, shape, _ in read(path):
        print(f"{name} {dtype} [{','.join(map(str, shape))}]")

def cmd_config(path, L, C, H, P, V):
    cfg = json.load(open(path))
    want = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": int(L),
            "n_embd": int(C), "n_head": int(H), "n_positions": int(P), "vocab_size": int(V),
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "resid_pdrop": 0,
            "embd_pdrop": 0, "attn_pdrop": 0, "tie_word_embeddings": True, "n_inner": None,
            "initializer_range": 0.02}
    bad = [f"{k}={cfg.get(k, 'missing')!r}" for k, v in want.items() if cfg.get(k, "missing") != v]
    assert not bad, "config.json: " + ", ".join(bad)
    print(f"{len(cfg)} fields")

def cmd_same_logits(ref, *others):
    a = np.load(ref)
    assert a.dtype == np.float32 and a.shape == (3, 16, 256), f"{a.dtype} {a.shape}"
    for path in others:
        assert np.array_equal(np.load(path), a), f"{path} differs from {ref}"
    print(f"float32 {list(a.shape)}")

def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

def layer_norm(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b

def forward(w, ids, L, H):
    """GPT-2 as Hugging Face computes it, in float64, one sequence."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    C = x.shape[1]
    D = C // H
    future = np.triu(np.ones((T, T), bool), 1)
    for i in range(L):
        p = lambda s: w[f"h.{i}.{s}"]
        qkv = layer_norm(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.c_attn.weight") \
            + p("attn.c_attn.bias")
        heads = []
        for h in range(H):
            q, k, v = (qkv[:, j * C + h * D:j * C + (h + 1) * D] for j in range(3))
            s = q @ k.T / math.sqrt(D)
            s[future] = -np.inf
            e = np.exp(s - s.max(-1, keepdims=True))
            heads.append(e / e.sum(-1, keepdims=True) @ v)
        x = x + np.concatenate(heads, 1) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        m = layer_norm(x, p("ln_2.weight"), p("ln_2.bias"))
        x = x + gelu_new(m @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight") \
            + p("mlp.c_proj.bias")
    return layer_norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T

def cmd_numpy_forward(model, tokens, l32, l64, L, H):
    w = weights(model)
    ids = np.load(tokens)
    ref = np.stack([forward(w, row, int(L), int(H)) for row in ids])
    a64, a32 = np.load(l64), np.load(l32)
    assert a64.dtype == np.float64
    d64, d32 = np.abs(a64 - ref).max(), np.abs(a32 - ref).max()
    print(f"float64 {d64:.2g}, float32 {d32:.2g} from numpy's float64")
    assert d64 < 1e-9 and d32 < 1e-4

def cmd_causal(tokens, changed_tokens, l32, l32changed, t):
    t = int(t)
    x, y = np.load(tokens), np.load(changed_tokens)
    assert (x[:, :t] == y[:, :t]).all() and (x[:, t] != y[:, t]).all()
    a, b = np.load(l32), np.load(l32changed)
    before = np.abs(a[:, :t] - b[:, :t]).max()
    after = np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min()  # the least-changed position
    print(f"before position {t}: max |diff| {before:.2g}; from {t} on every position "
          f"changes (by {after:.2g} at least)")
    assert before < 1e-6 and after > 1e-4

def losses(path, steps):
    rows = [line.split() for line in open(path)]
    assert [int(r[0]) for r in rows] == list(range(1, int(steps) + 1)), f"{path}: steps"
    return np.array([float(r[1]) for r in rows])

def cmd_first_loss(path, steps, V):
    first = losses(path, steps)[0]
    print(f"step 1: {first!r}, ln({V}) = {math.log(int(V))!r}")
    assert abs(first - math.log(int(V))) < 0.1

def cmd_losses(l32, l64, steps):
    a, b = losses(l32, steps), losses(l64, steps)
    d = np.abs(a - b).max()
    print(f"max |float32 - float64| = {d:.3g} over {steps} steps "
          f"({a[0]:.6f} -> {a[-1]:.6f})")
    assert d < 1e-4

def cmd_lower(path, steps):
    a = losses(path, steps)
    print(f"{a[0]:.6f} -> {a[-1]:.6f}")
    assert a[-1] < a[0] - 0.01

def cmd_frozen(init, trained, prefix, *patterns):
    import fnmatch
    a = {k[len(prefix):]: v for k, v in weights(init).items()
         if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    b = weights(trained)
    assert list(a) == list(b), "names differ"
    frozen = [n for n in a if any(fnmatch.fnmatchcase(n, p) or n.startswith(p + ".")
                                  for p in patterns)]
    kept = [n for n in frozen if a[n].tobytes() == b[n].tobytes()]
    moved = [n for n in a if n not in frozen and a[n].tobytes() != b[n].tobytes()]
    print(f"{len(kept)} of {len(frozen)} frozen tensors keep their bits, "
          f"{len(moved)} of {len(a) - len(frozen)} others moved")
    assert len(kept) == len(frozen) > 0 and len(moved) == len(a) - len(frozen)

def cmd_untie(src, dst):
    os.makedirs(dst, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["tie_word_embeddings"] = False
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    blob = open(os.path.join(src, "model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    b, e = header["wte.weight"]["data_offsets"]
    header["lm_head.weight"] = {"dtype": "F32", "shape": header["wte.weight"]["shape"],
                                "data_offsets": [len(data), len(data) + e - b]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(os.path.join(dst, "model.safetensors"), "wb").write(
        struct.pack("<Q", len(text)) + text + data + data[b:e])

def cmd_tied(tied, untied, tied_log, untied_log):
    g, u = weights(tied), weights(untied)
    assert list(u) == list(g) + ["lm_head.weight"], "names"
    loss = lambda p: open(p).read().split()[1]
    assert loss(tied_log) == loss(untied_log), f"loss {loss(tied_log)} vs {loss(untied_log)}"
    scale = max(float(np.abs(v).max()) for v in g.values())
    f64 = lambda a: a.astype(np.float64)
    summed = np.abs(f64(u["wte.weight"]) + f64(u["lm_head.weight"]) - f64(g["wte.weight"])).max()
    others = max(float(np.abs(f64(u[n]) - f64(g[n])).max()) for n in g if n != "wte.weight")
    head = float(np.abs(u["lm_head.weight"]).max()) / float(np.abs(g["wte.weight"]).max())
    emb = float(np.abs(u["wte.weight"]).max()) / float(np.abs(g["wte.weight"]).max())
    print(f"|wte + lm_head - tied wte| {summed:.2g}, other gradients {others:.2g} "
          f"(largest gradient {scale:.2g}; the head's part {head:.2g}, "
          f"the embedding's {emb:.2g} of the tied one)")
    assert summed < 1e-6 * scale and others < 1e-6 * scale and head > 0.1 and emb > 1e-3

def cmd_data(d32, d16, rows, seq, test_rows):
    a, b = np.load(os.path.join(d32, "train_x.npy")), np.load(os.path.join(d16, "train_x.npy"))
    t = np.load(os.path.join(d32, "test_x.npy"))
    assert a.dtype == np.int32 and b.dtype == np.uint16 and t.dtype == np.int32
    assert a.shape == (int(rows), int(seq) + 1) and t.shape == (int(test_rows), int(seq) + 1)
    assert (a == b).all() and not (a[:int(test_rows)] == t).all()
    print(f"train_x int32 and uint16 {list(a.shape)}, test_x {list(t.shape)}")

globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PYEOF
# check COMMAND ARGS...: runs the checker; prints its last lines on one line,
# returns its exit status.
check() {
    "$PY" "$WORK/check.py" "$@" > "$WORK/check.out" 2>&1
    s=$?
    tail -n 3 "$WORK/check.out" | tr '\n' ' ' | sed 's/ *$//'
    return $s
}

# expected PREFIX MASK: the names, dtypes and shapes make-model must write.
expected() {
    echo "$1wte.weight F32 [$V,$C]"
    echo "$1wpe.weight F32 [$P,$C]"
    i=0
    while [ $i -lt $L ]; do
        h="$1h.$i."
        echo "${h}ln_1.weight F32 [$C]"
        echo "${h}ln_1.bias F32 [$C]"
        if [ "$2" = mask ]; then
            echo "${h}attn.bias F32 [1,1,$P,$P]"
            echo "${h}attn.masked_bias F32 []"
        fi
        echo "${h}attn.c_attn.weight F32 [$C,$((3 * C))]"
        echo "${h}attn.c_attn.bias F32 [$((3 * C))]"
        echo "${h}attn.c_proj.weight F32 [$C,$C]"
        echo "${h}attn.c_proj.bias F32 [$C]"
        echo "${h}ln_2.weight F32 [$C]"
        echo "${h}ln_2.bias F32 [$C]"
        echo "${h}mlp.c_fc.weight F32 [$C,$((4 * C))]"
        echo "${h}mlp.c_fc.bias F32 [$((4 * C))]"
        echo "${h}mlp.c_proj.weight F32 [$((4 * C)),$C]"
        echo "${h}mlp.c_proj.bias F32 [$C]"
        i=$((i + 1))
    done
    echo "$1ln_f.weight F32 [$C]"
    echo "$1ln_f.bias F32 [$C]"
}

status=0
for c in make-model logits train grads make-data inspect compare batch; do
    "$PY" "$TOOL" $c --help > "$WORK/help.txt" 2>&1 && grep -q "^usage: torch_gpt2.py $c" "$WORK/help.txt" \
        || { status=1; diag "$c --help:"; sed 's/^/#   /' "$WORK/help.txt"; }
done
ok $status "every command documents itself in --help"

# 1. Models, data, logits, training and gradients: one process.
W=$WORK
w() { printf "'%s' " "$@"; echo; }
{
    w make-data --out "$W/data" --vocab $V --seq $T --rows $ROWS --seed 5 --test-rows 6
    w make-data --out "$W/data16" --vocab $V --seq $T --rows $ROWS --seed 5 --dtype uint16
    # 3 rows of 16 tokens for `logits`, and the same with token 9 changed.
    w make-data --out "$W/tok" --vocab $V --seq 15 --rows 3 --seed 6
    w make-model --config-json "$CONFIG" --out "$W/m" --seed 7
    w make-model --config-json "$CONFIG" --out "$W/mp" --seed 7 --prefix transformer.
    w make-model --config-json "$CONFIG" --out "$W/mm" --seed 7 --mask-buffers
    w make-model --config-json "$CONFIG" --out "$W/mpm" --seed 7 --prefix transformer. --mask-buffers
} > "$WORK/jobs1"
"$PY" "$TOOL" batch "$WORK/jobs1" > "$WORK/jobs1.out" 2>&1
status=$?
# Token 9 of every row of tok9 changed (tok's numbers plus 1, mod V).
mkdir -p "$W/tok9"
"$PY" -c 'import numpy as np, sys
x = np.load(sys.argv[1]); x[:, 9] = (x[:, 9] + 1) % int(sys.argv[3]); np.save(sys.argv[2], x)' \
    "$W/tok/train_x.npy" "$W/tok9/train_x.npy" $V || status=1
{
    for m in m mp mm mpm; do
        w logits --model "$W/$m" --tokens "$W/tok/train_x.npy" --out "$W/$m.logits.npy"
    done
    w logits --model "$W/m" --tokens "$W/tok9/train_x.npy" --out "$W/m.logits9.npy"
    w logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/m.logits64.npy" --dtype float64
    # shellcheck disable=SC2086 # TRAIN is split on purpose
    w train --model "$W/m" --data "$W/data" $TRAIN --losses "$W/l32.txt"
    # shellcheck disable=SC2086
    w train --model "$W/m" --data "$W/data16" $TRAIN --losses "$W/l64.txt" --dtype float64
    set -f
    # shellcheck disable=SC2086
    w train --model "$W/mpm" --data "$W/data" $TRAIN --losses "$W/lfz.txt" \
        $(for p in $FROZEN; do printf -- '--freeze %s ' "$p"; done) --save "$W/frozen.safetensors"
    set +f
    w grads --model "$W/m" --data "$W/data" --batch-size $B --out "$W/g32.safetensors"
    w grads --model "$W/m" --data "$W/data" --batch-size $B --out "$W/g64.safetensors" --dtype float64
} > "$WORK/jobs2"
"$PY" "$TOOL" batch "$WORK/jobs2" >> "$WORK/jobs1.out" 2>&1 || status=1
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/jobs1.out"
ok $status "make-data, make-model, logits, train and grads ran"

out=$(check data "$W/data" "$W/data16" $ROWS $T 6)
ok $? "make-data: $out"

# 2. The files make-model wrote.
for m in m:-:- mp:transformer.:- mm:-:mask mpm:transformer.:mask; do
    dir=${m%%:*} rest=${m#*:}
    prefix=${rest%%:*} mask=${rest#*:}
    [ "$prefix" = - ] && prefix=
    [ "$mask" = - ] && mask=
    expected "$prefix" "$mask" > "$WORK/$dir.want"
    "$PY" "$WORK/check.py" names "$W/$dir/model.safetensors" > "$WORK/$dir.got" 2>&1
    status=$?
    cmp -s "$WORK/$dir.want" "$WORK/$dir.got" || status=1
    [ $status -eq 0 ] || diff "$WORK/$dir.want" "$WORK/$dir.got" | sed 's/^/#   /'
    ok $status "make-model${prefix:+ --prefix $prefix}${mask:+ --mask-buffers}: the header parses, $(wc -l < "$WORK/$dir.want") tensors with Hugging Face's names and shapes, laid out in header order"
done
out=$(check config "$W/m/config.json" $L $C $H $P $V)
ok $? "config.json: GPT2LMHeadModel, model_type gpt2 and the given fields: $out"

# 3. Logits.
out=$(check same-logits "$W/m.logits.npy" "$W/mp.logits.npy" "$W/mm.logits.npy" "$W/mpm.logits.npy")
ok $? "logits: $out, the same bits with a prefix or mask buffers in the file"
out=$(check numpy-forward "$W/m/model.safetensors" "$W/tok/train_x.npy" "$W/m.logits.npy" \
      "$W/m.logits64.npy" $L $H)
ok $? "logits: a GPT-2 forward pass in numpy agrees: $out"
out=$(check causal "$W/tok/train_x.npy" "$W/tok9/train_x.npy" "$W/m.logits.npy" "$W/m.logits9.npy" 9)
ok $? "logits are causal: $out"

# 4. Training.
out=$(check first-loss "$W/l32.txt" $STEPS $V)
ok $? "a fresh model's first loss is ln(V) within 0.1: $out"
out=$(check losses "$W/l32.txt" "$W/l64.txt" $STEPS)
ok $? "train: float32 and float64 (from uint16 data) agree within 1e-4: $out"
out=$(check lower "$W/l32.txt" $STEPS)
ok $? "train: the loss goes down: $out"
set -f
# shellcheck disable=SC2086
out=$(check frozen "$W/mpm/model.safetensors" "$W/frozen.safetensors" transformer. $FROZEN)
ok $? "train --freeze $FROZEN (prefixed file with mask buffers): $out"
set +f

# 5. Gradients.
out=$("$PY" "$TOOL" compare --tol 1e-3 "$W/g32.safetensors" "$W/g64.safetensors" 2>&1)
ok $? "grads: float32 against float64: $out"
"$PY" "$WORK/check.py" untie "$W/m" "$W/mu" > "$WORK/untie.out" 2>&1 &&
{
    w grads --model "$W/m" --data "$W/data" --batch-size $B --out "$W/gt.safetensors" --dtype float64
    w grads --model "$W/mu" --data "$W/data" --batch-size $B --out "$W/gu.safetensors" --dtype float64
} > "$WORK/jobs3" &&
"$PY" "$TOOL" batch "$WORK/jobs3" > "$WORK/jobs3.out" 2>&1
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/untie.out" "$WORK/jobs3.out"
# The batch prints each job's "loss X" in order: tied, then untied.
sed -n 1p "$WORK/jobs3.out" > "$WORK/gt.log"
sed -n 2p "$WORK/jobs3.out" > "$WORK/gu.log"
out=$(check tied "$W/gt.safetensors" "$W/gu.safetensors" "$W/gt.log" "$W/gu.log")
ok $((status || $?)) "the tied head's gradient (float64) is the untied copy's wte.weight + lm_head.weight: $out"
done_testing
