#!/bin/sh
# torch_lora_selftest.sh - checks the LoRA of tests/torch_gpt2.py (PEFT's,
# written by hand), which later tests hold frost's LoRA against, on the tiny
# GPT-2 of torch_gpt2_selftest.sh (2 layers, n_embd 64, 4 heads, 32
# positions, vocabulary 256) and an untied copy of it: make-adapter writes
# PEFT's adapter_config.json byte for byte and PEFT's keys, shapes and init
# (lora_A U(-1/sqrt(in), 1/sqrt(in)) drawn as PEFT draws it, lora_B zeros or
# normal(0, --b-std)); a fresh adapter leaves the logits' bits alone; merge
# adds scaling * (B @ A)^T to a Conv1D and scaling * B @ A to the head (checked
# in numpy) and the merged model's float64 logits are the adapter's within
# 1e-10; --rslora scales by alpha/sqrt(r); train --adapter keeps the base's
# bits but for --unfreeze, moves every adapter tensor, agrees in float32 and
# float64, and a fresh --lora adapter is make-adapter's with the same seed;
# grads --adapter gives PEFT's names, zero lora_A gradients when B is zero,
# float32 within 1e-3 of float64 and float64 within 1e-6 of central
# differences; and a bad adapter directory (peft_type, bias, a missing module,
# the rank, an unknown key) or a tied lm_head target is one line on stderr
# that names the file or the option.
#
# Needs a python3 that can `import torch` (Debian's python3-torch belongs to
# /usr/bin/python3, tried first, then $PYTHON3) and numpy; without them every
# check is reported as skipped.
. "$TOP_SRCDIR/tests/common.sh"
CHECKS=25
plan $CHECKS
TOOL="$TOP_SRCDIR/tests/torch_gpt2.py"

torch_python_or_skip_all
diag "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) under $PY"

L=2 C=64 H=4 P=32 V=256 T=16 B=4
CONFIG="{\"n_layer\": $L, \"n_embd\": $C, \"n_head\": $H, \"n_positions\": $P, \"vocab_size\": $V}"
UNTIED="{\"n_layer\": $L, \"n_embd\": $C, \"n_head\": $H, \"n_positions\": $P, \"vocab_size\": $V, \"tie_word_embeddings\": false}"
TARGETS='c_attn,h.*.mlp.c_fc'
LORA="--lora $TARGETS --lora-rank 4 --lora-alpha 8"
TRAIN="--data $WORK/d --steps 10 --batch-size $B --lr 0.01 --weight-decay 0.1"

# The checker: safetensors read with struct and json alone (not the tool's
# reader), numpy, and torch for PEFT's init.
cat > "$WORK/check.py" << 'PYEOF'
import json, math, os, struct, sys
import numpy as np

def read(path):
    """(metadata, {name: (dtype, shape, float64 array)}) in header order."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        kind = {"F32": "<f4", "F64": "<f8"}[info["dtype"]]
        out[name] = (info["dtype"], info["shape"],
                     np.frombuffer(data[begin:end], kind).reshape(info["shape"]).astype(np.float64))
    return meta, out

def arrays(path):
    return {k: a for k, (_, _, a) in read(path)[1].items()}

def write(path, named):
    """F64 safetensors of (name, array) pairs."""
    header, blobs, at = {}, [], 0
    for name, a in named:
        raw = np.ascontiguousarray(a, "<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(a.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

def modules(L, lm_head=False):
    """[(name, in, out)] of the targets 'c_attn,h.*.mlp.c_fc' (or of
    'mlp.c_proj,lm_head' with lm_head) in model order, for C=64, V=256."""
    C = 64
    if lm_head:
        return [(f"h.{i}.mlp.c_proj", 4 * C, C) for i in range(L)] + [("lm_head", C, 256)]
    return [m for i in range(L) for m in ((f"h.{i}.attn.c_attn", C, 3 * C), (f"h.{i}.mlp.c_fc", C, 4 * C))]

def peft_config(r, alpha, targets, rslora=False):
    return json.dumps({
        "alpha_pattern": {}, "base_model_name_or_path": None, "bias": "none",
        "fan_in_fan_out": True, "inference_mode": False, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha,
        "lora_dropout": 0.0, "modules_to_save": None, "peft_type": "LORA", "r": r,
        "rank_pattern": {}, "revision": None, "target_modules": targets,
        "task_type": "CAUSAL_LM", "use_rslora": rslora}, indent=2, sort_keys=True)

def cmd_config(adir, L):
    got = open(os.path.join(adir, "adapter_config.json")).read()
    want = peft_config(4, 8, ["transformer." + m for m, _, _ in modules(int(L))])
    assert got == want, f"adapter_config.json:\n{got}\nexpected\n{want}"
    print(f"{len(json.loads(got))} fields, target_modules {json.loads(got)['target_modules'][:2]}...")

def cmd_init(a0, a1, bare, seed, std, L):
    """PEFT's keys, shapes and init: after torch.manual_seed(seed), per module
    nn.Linear(in, r), nn.Linear(r, out), then kaiming_uniform_(A, a=sqrt(5))."""
    import torch
    meta, t0 = read(os.path.join(a0, "adapter_model.safetensors"))
    _, t1 = read(os.path.join(a1, "adapter_model.safetensors"))
    _, tb = read(os.path.join(bare, "adapter_model.safetensors"))
    assert meta == {"format": "pt"}, f"metadata {meta}"
    mods = modules(int(L))
    keys = [f"base_model.model.transformer.{m}.lora_{w}.weight" for m, _, _ in mods for w in "AB"]
    assert list(t0) == keys and list(t1) == keys, f"keys {list(t0)}"
    assert list(tb) == [k.replace("transformer.", "") for k in keys], f"--prefix '': {list(tb)}"
    torch.manual_seed(int(seed))
    worst = 0.0
    for m, fan_in, fan_out in mods:
        A = torch.nn.Linear(fan_in, 4, bias=False)
        torch.nn.Linear(4, fan_out, bias=False)
        torch.nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))
        k = f"base_model.model.transformer.{m}.lora_"
        for t in (t0, t1):
            assert t[k + "A.weight"][:2] == ("F32", [4, fan_in]), f"{m}: A {t[k + 'A.weight'][:2]}"
            assert t[k + "B.weight"][:2] == ("F32", [fan_out, 4]), f"{m}: B {t[k + 'B.weight'][:2]}"
            assert np.array_equal(t[k + "A.weight"][2], A.weight.detach().double().numpy()), f"{m}: A's init"
        a = t0[k + "A.weight"][2]
        assert np.abs(a).max() <= 1 / math.sqrt(fan_in) and a.std() > 0.4 / math.sqrt(fan_in)
        assert not t0[k + "B.weight"][2].any(), f"{m}: B not zero"
        worst = max(worst, abs(t1[k + "B.weight"][2].std() / float(std) - 1))
        assert np.array_equal(tb[k.replace("transformer.", "") + "B.weight"][2], t1[k + "B.weight"][2])
    assert worst < 0.25, f"--b-std {std}: a std off by {worst:.0%}"
    print(f"{len(keys)} F32 tensors, A drawn as PEFT draws it, B zeros; with --b-std {std} "
          f"the same A and B's std within {worst:.0%}")

def cmd_same(*paths):
    a = np.load(paths[0])
    for p in paths[1:]:
        b = np.load(p)
        assert a.dtype == b.dtype and np.array_equal(a, b), \
            f"{p}: {np.abs(a - b).max():.3g} from {paths[0]}"
    print(f"{a.dtype} {list(a.shape)}, the same bits")

def cmd_close(ref, other, base, tol):
    a, b, c = np.load(ref), np.load(other), np.load(base)
    assert a.dtype == b.dtype == np.float64
    d, moved = np.abs(a - b).max(), np.abs(a - c).max()
    print(f"max |diff| {d:.3g}; the adapter moves the logits by {moved:.3g}")
    assert d < float(tol) and moved > 1e-2

def cmd_merge(base, adir, merged, merged32, scaling):
    w, m = arrays(base), arrays(merged)
    m32 = read(merged32)[1]
    ad = arrays(os.path.join(adir, "adapter_model.safetensors"))
    s = float(eval(scaling, {"sqrt": math.sqrt}))
    prefix = {k[:-len("wte.weight")] for k in w if k.endswith("wte.weight")}.pop()
    w = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in w.items()}
    assert list(m) == list(w) == list(m32), "names"
    targets = {k[len("base_model.model."):-len(".lora_A.weight")].replace("transformer.", "")
               for k in ad if k.endswith(".lora_A.weight")}
    lm_head = "lm_head" in targets
    worst = 0.0
    for name in w:
        assert m32[name][0] == "F32" and np.array_equal(m32[name][2], m[name].astype(np.float32)), \
            f"{name}: the F32 file is not the F64 one rounded"
        mod = name[:-len(".weight")]
        if mod not in targets:
            assert np.array_equal(m[name], w[name]), f"{name} changed"
            continue
        key = "base_model.model." + ("" if mod == "lm_head" else "transformer.") + mod
        A, B = ad[key + ".lora_A.weight"], ad[key + ".lora_B.weight"]
        delta = s * (B @ A) if mod == "lm_head" else s * (A.T @ B.T)
        err = np.abs(m[name] - w[name] - delta).max() / np.abs(delta).max()
        worst = max(worst, err)
    assert worst < 1e-12, f"relative error {worst:.3g}"
    print(f"W' - W = {scaling} * ({'B @ A for lm_head, ' if lm_head else ''}A^T @ B^T for Conv1D) "
          f"within {worst:.2g} (relative) in {len(targets)} tensors, the rest unchanged, "
          f"the F32 file the F64 one rounded")

def cmd_rslora(rs, a16, a8):
    cmd_same(rs, a16)
    d = np.abs(np.load(rs) - np.load(a8)).max()
    print(f"and {d:.3g} from alpha 8 without --rslora")
    assert d > 1e-3

def cmd_trained(init, trained, adir, adir_trained, unfrozen):
    w = {k[len("transformer."):] if k.startswith("transformer.") else k: v
         for k, v in arrays(init).items()}
    t = arrays(trained)
    assert list(w) == list(t), "--save wrote other names than the base's"
    moved = [n for n in w if not np.array_equal(w[n], t[n])]
    want = [n for n in w if n.startswith(unfrozen + ".")]
    assert moved == want, f"moved {moved}, expected {want}"
    a = arrays(os.path.join(adir, "adapter_model.safetensors"))
    b = arrays(os.path.join(adir_trained, "adapter_model.safetensors"))
    assert list(a) == list(b), "--save-adapter keys"
    same = [k for k in a if np.array_equal(a[k], b[k])]
    assert not same, f"adapter tensors not trained: {same}"
    ca = json.load(open(os.path.join(adir, "adapter_config.json")))
    cb = json.load(open(os.path.join(adir_trained, "adapter_config.json")))
    assert ca == cb, "adapter_config.json differs"
    print(f"{len(w) - len(moved)} frozen base tensors keep their bits, {unfrozen}'s "
          f"{len(moved)} moved, and all {len(a)} adapter tensors")

def losses(path):
    return np.array([float(line.split()[1]) for line in open(path)])

def cmd_losses(l32, l64):
    a, b = losses(l32), losses(l64)
    d = np.abs(a - b).max()
    print(f"max |float32 - float64| {d:.3g} over {len(a)} steps ({a[0]:.6f} -> {a[-1]:.6f})")
    assert len(a) == len(b) == 10 and d < 1e-4

def cmd_same_losses(a, b):
    assert open(a).read() == open(b).read() and len(losses(a)) == 10
    print(f"{len(losses(a))} losses, the same text")

def cmd_grad_names(g, g0, L):
    meta, t = read(g)
    want = [f"{m}.lora_{w}.weight" for m, _, _ in modules(int(L)) for w in "AB"]
    assert list(t) == want, f"names {list(t)}"
    z = arrays(g0)
    assert list(z) == want
    a_zero = all(not z[n].any() for n in want if ".lora_A." in n)
    b_moved = all(z[n].any() for n in want if ".lora_B." in n)
    assert a_zero and b_moved, "with B = 0 the A gradients must be zero and the B ones not"
    print(f"{len(want)} tensors named like {want[0]}; with B = 0, lora_A's gradients are zero "
          f"and lora_B's not")

def cmd_fd_files(adir, g64, out, h):
    """Adapters with one element of two tensors moved by +-h (F64 files)."""
    ad = arrays(os.path.join(adir, "adapter_model.safetensors"))
    g = arrays(g64)
    picks = []
    for name in ("h.0.attn.c_attn.lora_A.weight", "h.1.mlp.c_fc.lora_B.weight"):
        idx = np.unravel_index(np.abs(g[name]).argmax(), g[name].shape)
        picks.append((name, idx))
        for sign, tag in ((1, "p"), (-1, "m")):
            d = f"{out}/{name.split('.')[1]}{name.split('.')[-2][-1]}{tag}"
            os.makedirs(d, exist_ok=True)
            named = []
            for k, v in ad.items():
                v = v.copy()
                if k == "base_model.model.transformer." + name:
                    v[idx] += sign * float(h)
                named.append((k, v))
            write(os.path.join(d, "adapter_model.safetensors"), named)
            open(os.path.join(d, "adapter_config.json"), "w").write(
                open(os.path.join(adir, "adapter_config.json")).read())
            print(d)
    json.dump([(n, [int(i) for i in idx]) for n, idx in picks], open(f"{out}/picks.json", "w"))

def cmd_fd(g64, out, log, h):
    g = arrays(g64)
    picks = json.load(open(f"{out}/picks.json"))
    loss = [float(line.split()[1]) for line in open(log)]
    worst = 0.0
    for k, (name, idx) in enumerate(picks):
        fd = (loss[2 * k] - loss[2 * k + 1]) / (2 * float(h))
        an = g[name][tuple(idx)]
        worst = max(worst, abs(fd - an) / abs(an))
        print(f"{name}{idx}: autograd {an:.9g}, central difference {fd:.9g}")
    assert worst < 1e-6, f"relative error {worst:.3g}"

def cmd_errors(adir, out):
    """Broken copies of an adapter directory."""
    src = os.path.join(adir, "adapter_config.json")
    cfg = open(src).read()
    def copy(name, text=cfg, tensors=None):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "adapter_config.json"), "w").write(text)
        t = arrays(os.path.join(adir, "adapter_model.safetensors"))
        write(os.path.join(d, "adapter_model.safetensors"), list((tensors or (lambda t: t))(t).items()))
    copy("peft_type", cfg.replace('"peft_type": "LORA"', '"peft_type": "PREFIX_TUNING"'))
    copy("bias", cfg.replace('"bias": "none"', '"bias": "all"'))
    copy("module", tensors=lambda t: {k.replace(".h.1.", ".h.5."): v for k, v in t.items()})
    copy("rank", cfg.replace('"r": 4', '"r": 8'))
    copy("unknown", tensors=lambda t: dict(t, **{"base_model.model.transformer.h.0.attn.c_attn.bias":
                                                 np.zeros(192)}))

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

status=0
for c in make-adapter merge; do
    "$PY" "$TOOL" $c --help > "$WORK/help.txt" 2>&1 && grep -q "^usage: torch_gpt2.py $c" "$WORK/help.txt" \
        || { status=1; diag "$c --help:"; sed 's/^/#   /' "$WORK/help.txt"; }
done
for c in train logits grads; do
    "$PY" "$TOOL" $c --help > "$WORK/help.txt" 2>&1 && grep -q -- "--adapter ADIR" "$WORK/help.txt" \
        || { status=1; diag "$c --help has no --adapter:"; sed 's/^/#   /' "$WORK/help.txt"; }
done
ok $status "make-adapter and merge document themselves in --help; train, logits and grads take --adapter"

# 1. Models, data and adapters; logits, merges, training and gradients.
W=$WORK
w() { printf "'%s' " "$@"; echo; }
{
    w make-data --out "$W/d" --vocab $V --seq $T --rows 38 --seed 5
    w make-data --out "$W/tok" --vocab $V --seq 15 --rows 3 --seed 6
    w make-model --config-json "$CONFIG" --out "$W/m" --seed 7 --prefix transformer.
    w make-model --config-json "$UNTIED" --out "$W/mu" --seed 8
    # shellcheck disable=SC2086 # LORA is split on purpose
    w make-adapter --model "$W/m" $LORA --out "$W/a0" --seed 3
    # shellcheck disable=SC2086
    w make-adapter --model "$W/m" $LORA --out "$W/a1" --seed 3 --b-std 0.05
    # shellcheck disable=SC2086
    w make-adapter --model "$W/m" $LORA --out "$W/a1bare" --seed 3 --b-std 0.05 --prefix ''
    for a in "rs:8:--rslora" "a16:16:" "a8:8:"; do
        name=${a%%:*} rest=${a#*:}
        # shellcheck disable=SC2086
        w make-adapter --model "$W/m" --lora c_attn,attn.c_proj --lora-rank 4 \
            --lora-alpha "${rest%%:*}" ${rest#*:} --out "$W/$name" --seed 4 --b-std 0.05
    done
    w make-adapter --model "$W/mu" --lora mlp.c_proj,lm_head --lora-rank 2 --lora-alpha 3 \
        --out "$W/au" --seed 9 --b-std 0.05
} > "$WORK/jobs1"
"$PY" "$TOOL" batch "$WORK/jobs1" > "$WORK/jobs.out" 2>&1
status=$?
for m in m1:m:a1 mrs:m:rs mu1:mu:au; do
    dir=${m%%:*} rest=${m#*:}
    mkdir -p "$W/$dir" && cp "$W/${rest%%:*}/config.json" "$W/$dir/" || status=1
done
{
    w logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/base32.npy"
    w logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/a0_32.npy" --adapter "$W/a0"
    w logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/base.npy" --dtype float64
    for a in a0 a1 a1bare rs a16 a8; do
        w logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/$a.npy" --dtype float64 \
            --adapter "$W/$a"
    done
    w logits --model "$W/mu" --tokens "$W/tok/train_x.npy" --out "$W/ubase.npy" --dtype float64
    w logits --model "$W/mu" --tokens "$W/tok/train_x.npy" --out "$W/au.npy" --dtype float64 --adapter "$W/au"
    w merge --model "$W/m" --adapter "$W/a1" --out "$W/m1/model.safetensors" --dtype float64
    w merge --model "$W/m" --adapter "$W/a1" --out "$W/m1_32.safetensors"
    w merge --model "$W/m" --adapter "$W/rs" --out "$W/mrs/model.safetensors" --dtype float64
    w merge --model "$W/m" --adapter "$W/rs" --out "$W/mrs_32.safetensors"
    w merge --model "$W/mu" --adapter "$W/au" --out "$W/mu1/model.safetensors" --dtype float64
    w merge --model "$W/mu" --adapter "$W/au" --out "$W/mu1_32.safetensors"
    w logits --model "$W/m1" --tokens "$W/tok/train_x.npy" --out "$W/m1.npy" --dtype float64
    w logits --model "$W/mrs" --tokens "$W/tok/train_x.npy" --out "$W/mrs.npy" --dtype float64
    w logits --model "$W/mu1" --tokens "$W/tok/train_x.npy" --out "$W/mu1.npy" --dtype float64
    # shellcheck disable=SC2086 # TRAIN and LORA are split on purpose
    w train --model "$W/m" $TRAIN --adapter "$W/a1" --unfreeze ln_f --losses "$W/t32.txt" \
        --save "$W/t32.safetensors" --save-adapter "$W/a1t"
    # shellcheck disable=SC2086
    w train --model "$W/m" $TRAIN --adapter "$W/a1" --unfreeze ln_f --losses "$W/t64.txt" --dtype float64
    # shellcheck disable=SC2086
    w train --model "$W/m" $TRAIN $LORA --seed 3 --losses "$W/fresh.txt"
    # shellcheck disable=SC2086
    w train --model "$W/m" $TRAIN --adapter "$W/a0" --seed 3 --losses "$W/a0.txt"
    w grads --model "$W/m" --data "$W/d" --batch-size $B --adapter "$W/a1" --out "$W/g32.safetensors"
    w grads --model "$W/m" --data "$W/d" --batch-size $B --adapter "$W/a1" --out "$W/g64.safetensors" \
        --dtype float64
    w grads --model "$W/m" --data "$W/d" --batch-size $B --adapter "$W/a0" --out "$W/g0.safetensors"
} > "$WORK/jobs2"
"$PY" "$TOOL" batch "$WORK/jobs2" >> "$WORK/jobs.out" 2>&1 || status=1
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/jobs.out"
ok $status "make-model, make-data, make-adapter, logits, merge, train and grads ran"

# 2. make-adapter's files.
out=$(check config "$W/a0" $L)
ok $? "make-adapter: adapter_config.json is PEFT's, byte for byte: $out"
out=$(check init "$W/a0" "$W/a1" "$W/a1bare" 3 0.05 $L)
ok $? "make-adapter: PEFT's keys (base_model.model.transformer.MODULE.lora_A/B.weight; no transformer. with --prefix ''), shapes and init: $out"

# 3. Logits.
out=$(check same "$W/base32.npy" "$W/a0_32.npy")
ok $? "logits: a fresh adapter (B zeros) leaves the float32 logits alone: $out"
out=$(check same "$W/base.npy" "$W/a0.npy")
ok $? "logits: and the float64 ones: $out"
out=$(check same "$W/a1.npy" "$W/a1bare.npy")
ok $? "logits: keys without transformer. read as with it: $out"
out=$(check close "$W/a1.npy" "$W/m1.npy" "$W/base.npy" 1e-10)
ok $? "merge: the merged model's float64 logits are the adapter's within 1e-10: $out"
out=$(check close "$W/au.npy" "$W/mu1.npy" "$W/ubase.npy" 1e-10)
ok $? "merge: the same with the untied head (nn.Linear) adapted: $out"
out=$(check merge "$W/m/model.safetensors" "$W/a1" "$W/m1/model.safetensors" "$W/m1_32.safetensors" 8/4)
ok $? "merge (Conv1D): $out"
out=$(check merge "$W/mu/model.safetensors" "$W/au" "$W/mu1/model.safetensors" "$W/mu1_32.safetensors" 3/2)
ok $? "merge (the head): $out"

# 4. rslora.
out=$(check merge "$W/m/model.safetensors" "$W/rs" "$W/mrs/model.safetensors" "$W/mrs_32.safetensors" "8/sqrt(4)")
ok $? "merge --rslora scales by alpha/sqrt(r): $out"
out=$(check rslora "$W/rs.npy" "$W/a16.npy" "$W/a8.npy")
ok $? "logits: r 4, alpha 8 with --rslora are those of alpha 16 without (scaling 4): $out"

# 5. Training.
out=$(check trained "$W/m/model.safetensors" "$W/t32.safetensors" "$W/a1" "$W/a1t" ln_f)
ok $? "train --adapter --unfreeze ln_f: $out"
out=$(check losses "$W/t32.txt" "$W/t64.txt")
ok $? "train --adapter: float32 and float64 agree within 1e-4: $out"
out=$(check same-losses "$W/fresh.txt" "$W/a0.txt")
ok $? "train --lora ... --seed 3 starts from make-adapter --seed 3's adapter: $out"

# 6. Gradients.
out=$(check grad-names "$W/g32.safetensors" "$W/g0.safetensors" $L)
ok $? "grads --adapter: $out"
out=$("$PY" "$TOOL" compare --tol 1e-3 "$W/g32.safetensors" "$W/g64.safetensors" 2>&1)
ok $? "grads --adapter: float32 against float64: $out"
HSTEP=1e-5
"$PY" "$WORK/check.py" fd-files "$W/a1" "$W/g64.safetensors" "$W/fd" $HSTEP > "$WORK/fd.dirs" 2>&1 &&
while read -r d; do
    w grads --model "$W/m" --data "$W/d" --batch-size $B --adapter "$d" --out "$d/g.safetensors" --dtype float64
done < "$WORK/fd.dirs" > "$WORK/jobs3" &&
"$PY" "$TOOL" batch "$WORK/jobs3" > "$WORK/fd.log" 2>&1
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/fd.dirs" "$WORK/fd.log"
out=$(check fd "$W/g64.safetensors" "$W/fd" "$W/fd.log" $HSTEP)
ok $((status || $?)) "grads --adapter (float64) against central differences (h $HSTEP) within 1e-6: $out"

# 7. Errors: one line on stderr, naming the file, exit status 1.
"$PY" "$WORK/check.py" errors "$W/a1" "$W/bad" > "$WORK/errors.out" 2>&1 || sed 's/^/#   /' "$WORK/errors.out"
for e in "peft_type:adapter_config.json:peft_type 'PREFIX_TUNING'" \
         "bias:adapter_config.json:bias 'all'" \
         "module:adapter_model.safetensors:no module h.5.attn.c_attn" \
         "rank:adapter_model.safetensors:shape [4, 64], expected [8, 64]" \
         "unknown:adapter_model.safetensors:h.0.attn.c_attn.bias: unknown tensor"; do
    name=${e%%:*} rest=${e#*:}
    file=$W/bad/$name/${rest%%:*} want=${rest#*:} status=0
    "$PY" "$TOOL" logits --model "$W/m" --tokens "$W/tok/train_x.npy" --out "$W/x.npy" \
        --adapter "$W/bad/$name" > "$WORK/err.out" 2> "$WORK/err.txt"
    s=$?
    if [ $s -ne 1 ] || [ -s "$WORK/err.out" ] || [ "$(wc -l < "$WORK/err.txt")" -ne 1 ] ||
        ! grep -qF "torch_gpt2: $file: " "$WORK/err.txt" || ! grep -qF "$want" "$WORK/err.txt"; then
        status=1
        diag "$name: exit status $s, expected 1 and one line naming $file and saying $want:"
        sed 's/^/#   /' "$WORK/err.out" "$WORK/err.txt"
    else
        diag "$name: $(cat "$WORK/err.txt")"
    fi
    ok $status "a bad adapter directory ($name) is one line naming ${rest%%:*}"
done
"$PY" "$TOOL" make-adapter --model "$W/m" --lora c_attn,lm_head --lora-rank 4 --lora-alpha 8 \
    --out "$W/x" > "$WORK/err.out" 2> "$WORK/err.txt"
s=$?
[ $s -eq 1 ] && [ "$(wc -l < "$WORK/err.txt")" -eq 1 ] && grep -q "^torch_gpt2: --lora lm_head: .*tied" "$WORK/err.txt"
status=$?
[ $status -eq 0 ] || sed 's/^/#   /' "$WORK/err.txt"
ok $status "--lora lm_head with a tied head is an error: $(cat "$WORK/err.txt")"
done_testing
