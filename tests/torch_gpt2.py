"""torch_gpt2.py - a PyTorch reference GPT-2, for the tests that check frost's.

A GPT-2 written in plain torch modules that computes what Hugging Face's
GPT2LMHeadModel computes (its eager attention path), with Hugging Face's
parameter names and layouts, its config.json and its initialisation, and
safetensors read and written with numpy and json: torch and numpy are the only
requirements (Debian's python3-torch and python3-numpy, under /usr/bin/python3);
the transformers and safetensors packages are not used.

  torch_gpt2.py make-model --config-json JSON --out DIR [--seed S]
                           [--prefix P] [--mask-buffers]
  torch_gpt2.py logits     --model DIR --tokens X.npy --out L.npy [--dtype D]
                           [--adapter ADIR]
  torch_gpt2.py train      --model DIR --data DATADIR --steps K --batch-size B
                           --lr LR [--weight-decay WD] [--betas B1,B2] [--eps E]
                           [--freeze PATTERN]... --losses OUT.txt
                           [--save W.safetensors] [--dtype D] [--seed S]
                           [--adapter ADIR | --lora PATTERNS --lora-rank R
                            --lora-alpha A [--lora-dropout P] [--rslora]]
                           [--unfreeze PATTERN]... [--save-adapter ADIR]
  torch_gpt2.py grads      --model DIR --data DATADIR --batch-size B --out G.safetensors
                           [--dtype D] [--adapter ADIR [--unfreeze PATTERN]...]
  torch_gpt2.py make-adapter --model DIR --lora PATTERNS --lora-rank R --lora-alpha A
                           [--lora-dropout P] [--rslora] [--prefix P] --out ADIR
                           [--seed S] [--b-std X]
  torch_gpt2.py merge      --model DIR --adapter ADIR --out W.safetensors [--dtype D]
  torch_gpt2.py make-data  --out DIR --vocab V --seq T --rows N [--seed S]
                           [--dtype int32|int64|uint16] [--test-rows M]
  torch_gpt2.py inspect    FILE.safetensors
  torch_gpt2.py compare    [--tol X] [--floor F] A.safetensors REF.safetensors
  torch_gpt2.py grads-vs   [--strip P] FROST.safetensors REF32.safetensors REF64.safetensors
  torch_gpt2.py batch      JOBS

`torch_gpt2.py COMMAND --help` describes each command.

The model (Hugging Face's GPT2Model, names without a prefix):
  wte.weight [V,C], wpe.weight [P,C], then for each block i:
  h.i.ln_1.weight/bias [C], h.i.attn.c_attn.weight [C,3C] and .bias [3C],
  h.i.attn.c_proj.weight [C,C] and .bias [C], h.i.ln_2.weight/bias [C],
  h.i.mlp.c_fc.weight [C,I] and .bias [I], h.i.mlp.c_proj.weight [I,C] and
  .bias [C]; then ln_f.weight/bias [C]; and lm_head.weight [V,C] only when
  tie_word_embeddings is false (by default the head is wte.weight: one
  parameter used twice, its gradients added).  I = n_inner, or 4*C when null.
  The c_attn/c_proj/c_fc weights are Hugging Face's Conv1D: stored [in, out],
  y = x @ W + b (torch.addmm).
    x = wte[ids] + wpe[0..T-1]
    per block: x = x + c_proj(attn(c_attn(ln_1(x))))
               x = x + mlp.c_proj(act(mlp.c_fc(ln_2(x))))
    logits = ln_f(x) @ head^T (no bias)
  attention: q, k, v = split(c_attn output, C), H heads of C/H,
  softmax(where(causal, q k^T / sqrt(C/H), finfo.min)) v, heads merged again.
  act: activation_function "gelu_new" (Hugging Face's tanh formula), "gelu"
  (exact, erf), "gelu_pytorch_tanh", "relu", "silu"/"swish".  Dropout
  (attn_pdrop, resid_pdrop, embd_pdrop) only in `train`, as nn.Dropout.

A model directory holds config.json and model.safetensors.  Reading one, a
common prefix in front of every GPT2Model name (say "transformer.", as
GPT2LMHeadModel saves them) is dropped, the causal-mask buffers of old
checkpoints (h.i.attn.bias, h.i.attn.masked_bias) are skipped, and a
lm_head.weight of a tied model is accepted only if it has wte.weight's values.
Any other name, a missing parameter or a wrong shape is an error.  Weights of
any float dtype are read and converted to the run's dtype.

LoRA as PEFT (0.7+) does it, written here (peft is not used): a target module
(a Conv1D, or lm_head when the head is untied) with base weight W gets
lora_A = nn.Linear(in, r, bias=False) and lora_B = nn.Linear(r, out,
bias=False), named <module>.lora_A.weight [r, in] and <module>.lora_B.weight
[out, r] (h.0.attn.c_attn.lora_A.weight), and computes
    y = base(x) + lora_B(lora_A(dropout(x))) * scaling,
scaling = alpha/r, or alpha/sqrt(r) with rslora.  PEFT's init: lora_A
kaiming_uniform_(a=sqrt(5)), lora_B zeros.  The base is frozen but for
--unfreeze.  An adapter directory is PEFT's: adapter_config.json and
adapter_model.safetensors with keys base_model.model.[transformer.]MODULE
.lora_A.weight and .lora_B.weight (make-adapter --help has the details).

Exit status: 0 on success, 1 on an error (a message on stderr), 2 on a usage
error.
"""
import argparse
import fnmatch
import json
import math
import os
import re
import shlex
import sys

import numpy as np

torch = None  # imported by need_torch(): make-data, inspect and compare run without it
nn = None
F = None


class ToolError(Exception):
    pass


def need_torch():
    global torch, nn, F
    if torch is None:
        import torch as imported
        torch = imported
        nn = torch.nn
        F = torch.nn.functional
        define_modules()
    return torch


# ---------------------------------------------------------- safetensors

# safetensors dtype -> numpy dtype (little-endian); BF16 is read only.
ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
NP_TO_ST = {np.dtype(v): k for k, v in ST_DTYPES.items()}


def save_safetensors(path, named_arrays, metadata=None):
    """Writes (name, numpy array) pairs in that order (the data in the order
    of the header), atomically.  The dtype follows the array's: F64, F32,
    F16, I64, I32, I16, I8, U64, U32, U16, U8 or BOOL.  The header is padded
    with spaces to a multiple of 8 bytes, as the safetensors library does."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in named_arrays:
        a = np.asarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt not in NP_TO_ST:
            raise ToolError(f"{path}: {name}: numpy dtype {a.dtype} has no safetensors dtype")
        if name in header:
            raise ToolError(f"{path}: {name} twice")
        raw = np.ascontiguousarray(a, dtype=dt).tobytes()
        header[name] = {"dtype": NP_TO_ST[dt], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def load_safetensors(path, with_dtypes=False):
    """{name: numpy array} in header order (and {name: safetensors dtype}
    with with_dtypes); the header and every tensor's extent are checked."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ToolError(f"{path}: shorter than a safetensors header")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ToolError(f"{path}: header length {n} runs past the end of the file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ToolError(f"{path}: header is not JSON: {e}")
    if not isinstance(header, dict):
        raise ToolError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    out, dtypes, extents = {}, {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ToolError(f"{path}: {name}: needs dtype, shape and data_offsets [begin, end]")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ToolError(f"{path}: {name}: bad shape {shape}")
        count = math.prod(shape)
        if dtype == "BF16":
            size = 2 * count
        elif dtype in ST_DTYPES:
            size = np.dtype(ST_DTYPES[dtype]).itemsize * count
        else:
            raise ToolError(f"{path}: {name}: unsupported dtype {dtype}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(data)):
            raise ToolError(f"{path}: {name}: data_offsets [{begin}, {end}] outside the "
                            f"{len(data)} bytes of data")
        if end - begin != size:
            raise ToolError(f"{path}: {name}: {end - begin} bytes for {dtype} {shape} "
                            f"(needs {size})")
        extents.append((begin, end, name))
        if dtype == "BF16":
            bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            a = bits.view(np.float32)
        else:
            a = np.frombuffer(data[begin:end], dtype=ST_DTYPES[dtype]).copy()
        out[name] = a.reshape(shape)
        dtypes[name] = dtype
    extents.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(extents, extents[1:]):
        if b1 < e0:
            raise ToolError(f"{path}: {n0} and {n1} overlap")
    return (out, dtypes) if with_dtypes else out


# --------------------------------------------------------------- config

# Hugging Face's GPT2Config defaults (what a config.json without the field means).
HF_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
    "n_head": 12, "n_inner": None, "activation_function": "gelu_new",
    "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
    "summary_type": "cls_index", "summary_use_proj": True, "summary_activation": None,
    "summary_proj_to_labels": True, "summary_first_dropout": 0.1,
    "scale_attn_weights": True, "use_cache": True,
    "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256,
}
MAKE_MODEL_KEYS = set(HF_DEFAULTS) | {"model_type", "architectures", "n_ctx", "torch_dtype"}
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu", "swish")


def read_config(source, text):
    """The config (a dict with every field, Hugging Face's defaults filled
    in) of a config.json's text; source names it in messages."""
    try:
        given = json.loads(text)
    except ValueError as e:
        raise ToolError(f"{source}: not JSON: {e}")
    if not isinstance(given, dict):
        raise ToolError(f"{source}: not a JSON object")
    if given.get("model_type", "gpt2") != "gpt2":
        raise ToolError(f"{source}: model_type {given['model_type']!r}, expected \"gpt2\"")
    cfg = dict(HF_DEFAULTS)
    cfg.update(given)
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ToolError(f"{source}: {key} {cfg[key]!r}: needs a positive integer")
    if cfg["n_inner"] is not None and (not isinstance(cfg["n_inner"], int) or cfg["n_inner"] < 1):
        raise ToolError(f"{source}: n_inner {cfg['n_inner']!r}: needs null or a positive integer")
    if cfg["n_embd"] % cfg["n_head"]:
        raise ToolError(f"{source}: n_embd {cfg['n_embd']} is not a multiple of n_head {cfg['n_head']}")
    if cfg["activation_function"] not in ACTIVATIONS:
        raise ToolError(f"{source}: activation_function {cfg['activation_function']!r}: "
                        f"one of {', '.join(ACTIVATIONS)}")
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if not 0 <= float(cfg[key]) < 1:
            raise ToolError(f"{source}: {key} {cfg[key]!r}: needs 0 <= p < 1")
    return cfg


def inner_size(cfg):
    return cfg["n_inner"] if cfg["n_inner"] is not None else 4 * cfg["n_embd"]


# ---------------------------------------------------------------- model

def define_modules():
    """The modules, defined once torch is imported."""
    global Conv1D, Attention, MLP, Block, GPT2

    class Conv1D(nn.Module):
        """Hugging Face's Conv1D: weight [in, out], y = x @ W + b (plus a LoRA
        adapter's term once attach_lora has given it one)."""

        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.empty(nx, nf))
            self.bias = nn.Parameter(torch.zeros(nf))

        def forward(self, x):
            size_out = x.size()[:-1] + (self.nf,)
            y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return with_lora(self, x, y.view(size_out))

    class Attention(nn.Module):
        """GPT2Attention's eager path, no cache, no cross-attention."""

        def __init__(self, cfg, layer_idx):
            super().__init__()
            C, P = cfg["n_embd"], cfg["n_positions"]
            self.embed_dim, self.num_heads = C, cfg["n_head"]
            self.head_dim = C // self.num_heads
            self.scale_attn_weights = cfg["scale_attn_weights"]
            self.inverse_layer = cfg["scale_attn_by_inverse_layer_idx"]
            self.layer_idx = layer_idx
            # Not in the state dict (persistent=False): old checkpoints' copy
            # of it is skipped when reading.
            self.register_buffer("bias", torch.tril(torch.ones((P, P), dtype=torch.bool))
                                 .view(1, 1, P, P), persistent=False)
            self.c_attn = Conv1D(3 * C, C)
            self.c_proj = Conv1D(C, C)
            self.attn_dropout = nn.Dropout(cfg["attn_pdrop"])
            self.resid_dropout = nn.Dropout(cfg["resid_pdrop"])

        def split_heads(self, x):
            x = x.view(x.size()[:-1] + (self.num_heads, self.head_dim))
            return x.permute(0, 2, 1, 3)  # (batch, head, seq, head_dim)

        def forward(self, hidden):
            query, key, value = self.c_attn(hidden).split(self.embed_dim, dim=2)
            query, key, value = map(self.split_heads, (query, key, value))
            w = torch.matmul(query, key.transpose(-1, -2))
            if self.scale_attn_weights:
                w = w / torch.full([], value.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
            if self.inverse_layer:
                w = w / float(self.layer_idx + 1)
            q_len, k_len = query.size(-2), key.size(-2)
            causal = self.bias[:, :, k_len - q_len:k_len, :k_len]
            mask_value = torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype, device=w.device)
            w = torch.where(causal, w, mask_value)
            w = F.softmax(w, dim=-1).type(value.dtype)
            w = self.attn_dropout(w)
            out = torch.matmul(w, value)
            out = out.permute(0, 2, 1, 3).contiguous()
            out = out.view(out.size()[:-2] + (self.embed_dim,))
            return self.resid_dropout(self.c_proj(out))

    class MLP(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            C, I = cfg["n_embd"], inner_size(cfg)
            self.c_fc = Conv1D(I, C)
            self.c_proj = Conv1D(C, I)
            self.act = cfg["activation_function"]
            self.dropout = nn.Dropout(cfg["resid_pdrop"])

        def forward(self, x):
            x = self.c_fc(x)
            if self.act == "gelu_new":  # transformers' NewGELUActivation
                x = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                                * (x + 0.044715 * torch.pow(x, 3.0))))
            elif self.act == "gelu":
                x = F.gelu(x)
            elif self.act == "gelu_pytorch_tanh":
                x = F.gelu(x, approximate="tanh")
            elif self.act == "relu":
                x = F.relu(x)
            else:  # silu, swish
                x = F.silu(x)
            return self.dropout(self.c_proj(x))

    class Block(nn.Module):
        def __init__(self, cfg, layer_idx):
            super().__init__()
            C, eps = cfg["n_embd"], cfg["layer_norm_epsilon"]
            self.ln_1 = nn.LayerNorm(C, eps=eps)
            self.attn = Attention(cfg, layer_idx)
            self.ln_2 = nn.LayerNorm(C, eps=eps)
            self.mlp = MLP(cfg)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT2(nn.Module):
        """GPT2Model's parameters under its names (no prefix), and the LM head:
        wte.weight itself (tied) or lm_head.weight."""

        def __init__(self, cfg):
            super().__init__()
            V, P, C = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"]
            self.cfg = cfg
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(P, C)
            self.drop = nn.Dropout(cfg["embd_pdrop"])
            self.h = nn.ModuleList([Block(cfg, i) for i in range(cfg["n_layer"])])
            self.ln_f = nn.LayerNorm(C, eps=cfg["layer_norm_epsilon"])
            if not cfg["tie_word_embeddings"]:
                self.lm_head = nn.Linear(C, V, bias=False)

        def head_weight(self):
            return self.wte.weight if self.cfg["tie_word_embeddings"] else self.lm_head.weight

        def forward(self, ids):
            T = ids.size(1)
            if T > self.cfg["n_positions"]:
                raise ToolError(f"sequences of {T} tokens, n_positions is {self.cfg['n_positions']}")
            pos = torch.arange(T, dtype=torch.long, device=ids.device).unsqueeze(0)
            x = self.drop(self.wte(ids) + self.wpe(pos))
            for block in self.h:
                x = block(x)
            x = self.ln_f(x)
            logits = F.linear(x, self.head_weight())
            return logits if self.cfg["tie_word_embeddings"] else with_lora(self.lm_head, x, logits)


def init_weights(model, cfg):
    """Hugging Face's GPT-2 initialisation, in parameter order from torch's
    global generator: normal(0, initializer_range) for weights and
    embeddings (lm_head.weight, when untied, drawn last), zeros for biases,
    ones for LayerNorm weights, normal(0, initializer_range/sqrt(2*n_layer))
    for attn.c_proj.weight and mlp.c_proj.weight."""
    std = cfg["initializer_range"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(^|\.)ln_(1|2|f)\.weight$", name):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith("c_proj.weight"):
                p.normal_(0.0, std / math.sqrt(2 * cfg["n_layer"]))
            else:
                p.normal_(0.0, std)


BUFFER_RE = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def load_model(directory, dtype):
    """The GPT2 of DIR/config.json and DIR/model.safetensors, in dtype."""
    need_torch()
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            cfg = read_config(path, f.read())
    except OSError as e:
        raise ToolError(f"{path}: {e.strerror}")
    model = GPT2(cfg).to(dtype)  # before the copy: F64 weights then stay exact
    path = os.path.join(directory, "model.safetensors")
    tensors = load_safetensors(path)
    prefixes = [n[:-len("wte.weight")] for n in tensors
                if n.endswith("wte.weight") and (n == "wte.weight" or n.endswith(".wte.weight"))]
    if len(prefixes) != 1:
        raise ToolError(f"{path}: {'no' if not prefixes else 'more than one'} wte.weight")
    prefix = prefixes[0]
    found = {}
    for name, a in tensors.items():
        if name.startswith(prefix):
            short = name[len(prefix):]
        elif name == "lm_head.weight":
            short = name
        else:
            raise ToolError(f"{path}: {name}: not under the prefix {prefix!r}")
        if BUFFER_RE.match(short):
            continue
        found[short] = a
    if cfg["tie_word_embeddings"] and "lm_head.weight" in found:
        head = found.pop("lm_head.weight")
        if head.shape != found["wte.weight"].shape or not np.array_equal(head, found["wte.weight"]):
            raise ToolError(f"{path}: lm_head.weight differs from wte.weight in a tied model")
    params = dict(model.named_parameters())
    unknown = sorted(set(found) - set(params))
    missing = [n for n in params if n not in found]
    if unknown or missing:
        raise ToolError(f"{path}: " + "; ".join(
            ([f"unexpected {', '.join(unknown)}"] if unknown else [])
            + ([f"missing {', '.join(missing)}"] if missing else [])))
    with torch.no_grad():
        for name, p in params.items():
            a = found[name]
            if tuple(a.shape) != tuple(p.shape):
                raise ToolError(f"{path}: {name}: shape {list(a.shape)}, expected {list(p.shape)}")
            if a.dtype.kind != "f":
                raise ToolError(f"{path}: {name}: dtype {a.dtype}, expected a float")
            p.copy_(torch.from_numpy(a.astype(np.float64)))
    return model


def weights_of(model):
    """[(name, float32 numpy array)]: the base parameters under Hugging Face's
    names (a LoRA adapter's parameters left out)."""
    return [(n, p.detach().to(torch.float32).cpu().numpy()) for n, p in model.named_parameters()
            if not is_lora_name(n)]


# ----------------------------------------------------------------- LoRA

# PEFT's LoRA for GPT-2, written here (peft is not used).  A target module (a
# Conv1D, or the untied head's nn.Linear) gets three submodules and a number:
#   lora_dropout  nn.Dropout(p), nn.Identity() when p = 0
#   lora_A        nn.Linear(in, r, bias=False), weight [r, in]
#   lora_B        nn.Linear(r, out, bias=False), weight [out, r]
#   scaling       alpha / r, or alpha / sqrt(r) with rslora
# and computes y = base(x) + lora_B(lora_A(lora_dropout(x))) * scaling, as
# peft.tuners.lora.Linear.forward does; the parameters are named
# <module>.lora_A.weight and <module>.lora_B.weight (PEFT's names inside the
# module, its adapter name "default" left out, as its saved files do).

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MODEL = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
BODY_PREFIX = "transformer."  # GPT2LMHeadModel's GPT2Model; its lm_head is not under it
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# PEFT's default target modules for model_type gpt2 (target_modules null).
PEFT_GPT2_TARGETS = ["c_attn"]


def is_lora_name(name):
    return name.endswith(LORA_SUFFIXES)


def with_lora(module, x, y):
    """y, plus module's LoRA term when it has an adapter."""
    lora_A = module._modules.get("lora_A")
    if lora_A is None:
        return y
    return y + module.lora_B(lora_A(module.lora_dropout(x))) * module.scaling


def lora_scaling(alpha, r, rslora):
    return alpha / math.sqrt(r) if rslora else alpha / r


def linear_modules(model):
    """{name: module} of the modules LoRA can target, in model order: every
    Conv1D, and lm_head (nn.Linear) when the head is untied."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (Conv1D, nn.Linear))
            and not is_lora_name(n + ".weight")}


def peft_name(name):
    """The module's name in GPT2LMHeadModel, which PEFT matches against."""
    return name if name == "lm_head" else BODY_PREFIX + name


def pattern_hits(pattern, name):
    """PEFT's list semantics (the full name or a dot-suffix of it equals the
    pattern), with the pattern a shell glob (fnmatch.fnmatchcase)."""
    parts = peft_name(name).split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def select_targets(model, patterns, option="--lora"):
    """The names (model order) of the modules that the comma-separated
    patterns name; a pattern that names none is an error, and so is one that
    names lm_head when the head is tied (wte.weight: there is no module)."""
    modules = linear_modules(model)
    chosen = set()
    for pattern in patterns.split(","):
        pattern = pattern.strip()
        if not pattern:
            raise ToolError(f"{option} {patterns}: an empty pattern")
        if model.cfg["tie_word_embeddings"] and pattern_hits(pattern, "lm_head"):
            raise ToolError(f"{option} {pattern}: names lm_head, but the head is tied "
                            f"(tie_word_embeddings): it is wte.weight, there is no lm_head "
                            f"module to adapt")
        hits = [n for n in modules if pattern_hits(pattern, n)]
        if not hits:
            kinds = dict.fromkeys(re.sub(r"^h\.\d+\.", "h.N.", n) for n in modules)
            raise ToolError(f"{option} {pattern}: matches no Conv1D or Linear module (they are "
                            f"{', '.join(kinds)})")
        chosen.update(hits)
    return [n for n in modules if n in chosen]


def attach_lora(model, targets, r, alpha, dropout, rslora, dtype):
    """Gives every target module an adapter initialised as PEFT's
    LoraLayer.update_layer does, from torch's global generator: nn.Linear(in,
    r) then nn.Linear(r, out) are constructed (drawing their default init, as
    PEFT's do), then reset_lora_parameters: lora_A kaiming_uniform_(a=sqrt(5))
    (U(-1/sqrt(in), 1/sqrt(in))), lora_B zeros.  Drawn in float32, then
    converted to dtype."""
    modules = linear_modules(model)
    for name in targets:
        m = modules[name]
        fan_in, fan_out = m.weight.shape if isinstance(m, Conv1D) else m.weight.shape[::-1]
        m.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        m.lora_A = nn.Linear(fan_in, r, bias=False, dtype=torch.float32)
        m.lora_B = nn.Linear(r, fan_out, bias=False, dtype=torch.float32)
        m.scaling = lora_scaling(alpha, r, rslora)
        nn.init.kaiming_uniform_(m.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(m.lora_B.weight)
        m.lora_A.to(dtype)
        m.lora_B.to(dtype)


def adapted(model):
    """[(name, module)] of the modules with an adapter, in model order."""
    return [(n, m) for n, m in linear_modules(model).items() if "lora_A" in m._modules]


def adapter_key(name, prefix, which):
    return PEFT_PREFIX + (name if name == "lm_head" else prefix + name) + f".lora_{which}.weight"


def format_alpha(alpha):
    return int(alpha) if float(alpha).is_integer() else float(alpha)


def adapter_config_text(spec, prefix):
    """adapter_config.json as PEFT (0.7 and later) writes it for GPT-2:
    json.dumps(indent=2, sort_keys=True), no newline at the end.  target_modules
    lists the adapted modules' full names; fan_in_fan_out is true when one of
    them is a Conv1D (PEFT sets it so for Conv1D)."""
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec["r"],
        "lora_alpha": format_alpha(spec["alpha"]), "lora_dropout": float(spec["dropout"]),
        "target_modules": [n if n == "lm_head" else prefix + n for n in spec["targets"]],
        "bias": "none", "fan_in_fan_out": any(n != "lm_head" for n in spec["targets"]),
        "use_rslora": bool(spec["rslora"]), "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": False,
        "base_model_name_or_path": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    return json.dumps(cfg, indent=2, sort_keys=True)


def write_adapter(directory, model, spec, prefix):
    """DIR/adapter_model.safetensors (F32, keys base_model.model.<prefix><module>
    .lora_A.weight and .lora_B.weight, metadata {"format": "pt"} as PEFT's) and
    DIR/adapter_config.json."""
    os.makedirs(directory, exist_ok=True)
    named = []
    for name, m in adapted(model):
        for which in "AB":
            w = getattr(m, f"lora_{which}").weight
            named.append((adapter_key(name, prefix, which),
                          w.detach().to(torch.float32).cpu().numpy()))
    save_safetensors(os.path.join(directory, ADAPTER_MODEL), named, {"format": "pt"})
    path = os.path.join(directory, ADAPTER_CONFIG)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(adapter_config_text(spec, prefix))
    os.replace(tmp, path)


def read_adapter(directory, model):
    """(spec, {module: (A, B) float64 numpy arrays}) of a PEFT adapter
    directory, checked against the model; spec = {r, alpha, dropout, rslora,
    targets (model order), prefix ("transformer." when the keys had it)}."""
    path = os.path.join(directory, ADAPTER_CONFIG)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise ToolError(f"{path}: {e.strerror}")
    except ValueError as e:
        raise ToolError(f"{path}: not JSON: {e}")
    if not isinstance(cfg, dict):
        raise ToolError(f"{path}: not a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise ToolError(f"{path}: peft_type {cfg.get('peft_type')!r}, expected \"LORA\"")
    # PEFT's LoraConfig defaults for what is missing.
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    dropout, rslora = cfg.get("lora_dropout", 0.0), cfg.get("use_rslora", False)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ToolError(f"{path}: r {r!r}: needs a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ToolError(f"{path}: lora_alpha {alpha!r}: needs a number")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ToolError(f"{path}: lora_dropout {dropout!r}: needs 0 <= p < 1")
    if not isinstance(rslora, bool):
        raise ToolError(f"{path}: use_rslora {rslora!r}: needs true or false")
    if cfg.get("bias", "none") != "none":
        raise ToolError(f"{path}: bias {cfg.get('bias')!r}: only \"none\" is supported "
                        f"(the adapter trains no biases)")
    for key, empty in (("modules_to_save", None), ("layers_to_transform", None),
                       ("rank_pattern", {}), ("alpha_pattern", {}), ("use_dora", False)):
        if cfg.get(key, empty) not in (empty, [], {}, None, False):
            raise ToolError(f"{path}: {key} {cfg[key]!r}: not supported here")
    modules = linear_modules(model)
    targets = cfg.get("target_modules")
    if targets is None:
        targets = PEFT_GPT2_TARGETS
    if isinstance(targets, str):  # PEFT: re.fullmatch against the module's full name
        wanted = {n for n in modules if re.fullmatch(targets, peft_name(n)) or re.fullmatch(targets, n)}
    elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        wanted = {n for n in modules if any(pattern_hits(t, n) for t in targets)}
    else:
        raise ToolError(f"{path}: target_modules {targets!r}: needs a list of names or a string")

    path = os.path.join(directory, ADAPTER_MODEL)
    tensors = load_safetensors(path)
    found, prefixes = {}, set()
    for key, a in tensors.items():
        which = key[-len("A.weight")] if key.endswith(LORA_SUFFIXES) else None
        if not key.startswith(PEFT_PREFIX) or which is None:
            raise ToolError(f"{path}: {key}: unknown tensor (expected {PEFT_PREFIX}[{BODY_PREFIX}]"
                            f"MODULE.lora_A.weight or .lora_B.weight)")
        name = key[len(PEFT_PREFIX):-len(".lora_A.weight")]
        if name.startswith(BODY_PREFIX):
            name = name[len(BODY_PREFIX):]
            prefixes.add(BODY_PREFIX)
            if name == "lm_head":
                name = BODY_PREFIX + name  # the head is not under the prefix
        elif name != "lm_head":
            prefixes.add("")
        if name not in modules:
            if name == "lm_head" and model.cfg["tie_word_embeddings"]:
                why = "the model's head is tied (wte.weight): there is no lm_head module"
            elif name in dict(model.named_modules()):
                why = f"{name} is not a Conv1D or Linear module"
            else:
                why = f"the model has no module {name}"
            raise ToolError(f"{path}: {key}: {why}")
        if a.dtype.kind != "f":
            raise ToolError(f"{path}: {key}: dtype {a.dtype}, expected a float")
        m = modules[name]
        fan_in, fan_out = m.weight.shape if isinstance(m, Conv1D) else m.weight.shape[::-1]
        want = [r, fan_in] if which == "A" else [fan_out, r]
        if list(a.shape) != want:
            raise ToolError(f"{path}: {key}: shape {list(a.shape)}, expected {want} "
                            f"(r {r} of {ADAPTER_CONFIG})")
        found.setdefault(name, {})[which] = a.astype(np.float64)
    prefix = BODY_PREFIX if BODY_PREFIX in prefixes or not prefixes else ""
    for name in modules:
        if name in wanted or name in found:
            if name not in wanted:
                raise ToolError(f"{path}: {adapter_key(name, prefix, 'A')}: module {name} is not "
                                f"in target_modules of {ADAPTER_CONFIG}")
            for which in "AB":
                if which not in found.get(name, {}):
                    raise ToolError(f"{path}: no {adapter_key(name, prefix, which)} "
                                    f"(target_modules of {ADAPTER_CONFIG} names {peft_name(name)})")
    if not found:
        raise ToolError(f"{path}: no adapter tensors")
    spec = {"r": r, "alpha": alpha, "dropout": float(dropout), "rslora": rslora,
            "targets": [n for n in modules if n in found], "prefix": prefix}
    return spec, {n: (found[n]["A"], found[n]["B"]) for n in spec["targets"]}


def load_adapter(model, directory, dtype):
    """Attaches the adapter of DIR to the model (its weights, not an init)."""
    spec, weights = read_adapter(directory, model)
    attach_lora(model, spec["targets"], spec["r"], spec["alpha"], spec["dropout"],
                spec["rslora"], dtype)
    modules = linear_modules(model)
    with torch.no_grad():
        for name, (A, B) in weights.items():
            modules[name].lora_A.weight.copy_(torch.from_numpy(A))
            modules[name].lora_B.weight.copy_(torch.from_numpy(B))
    return spec


def lora_options(args):
    """The --lora options given, as [option]."""
    given = [o for o, v in (("--lora", args.lora), ("--lora-rank", args.lora_rank),
                            ("--lora-alpha", args.lora_alpha),
                            ("--lora-dropout", args.lora_dropout)) if v is not None]
    return given + (["--rslora"] if args.rslora else [])


def fresh_spec(args):
    """The spec of --lora, --lora-rank, --lora-alpha, --lora-dropout, --rslora."""
    missing = [o for o, v in (("--lora", args.lora), ("--lora-rank", args.lora_rank),
                              ("--lora-alpha", args.lora_alpha)) if v is None]
    if missing:
        raise ToolError(f"{', '.join(lora_options(args))} needs {' and '.join(missing)} as well")
    if args.lora_rank < 1:
        raise ToolError(f"--lora-rank {args.lora_rank}: needs a positive integer")
    dropout = args.lora_dropout if args.lora_dropout is not None else 0.0
    if not 0 <= dropout < 1:
        raise ToolError(f"--lora-dropout {dropout}: needs 0 <= p < 1")
    return {"r": args.lora_rank, "alpha": format_alpha(args.lora_alpha), "dropout": dropout,
            "rslora": args.rslora, "prefix": BODY_PREFIX}


def setup_lora(model, args, dtype):
    """The spec of the adapter that train or grads runs with (--adapter DIR, or
    a fresh one of --lora ..., drawn after torch.manual_seed(--seed)), attached
    to the model, the base frozen but for --unfreeze; None without LoRA."""
    adapter = getattr(args, "adapter", None)
    given = lora_options(args) if hasattr(args, "lora") else []
    if adapter is not None and given:
        raise ToolError(f"--adapter {adapter}: its {ADAPTER_CONFIG} gives the adapter; "
                        f"{', '.join(given)} cannot be given with it")
    if adapter is not None:
        spec = load_adapter(model, adapter, dtype)
    elif given:
        spec = fresh_spec(args)
        spec["targets"] = select_targets(model, args.lora)
        torch.manual_seed(args.seed)
        attach_lora(model, spec["targets"], spec["r"], spec["alpha"], spec["dropout"],
                    spec["rslora"], dtype)
    else:
        for option in ("unfreeze", "save_adapter"):
            if getattr(args, option, None):
                raise ToolError(f"--{option.replace('_', '-')} needs --lora or --adapter")
        return None
    if getattr(args, "freeze", None):
        raise ToolError("--freeze: with LoRA the whole base is frozen (PEFT's way); "
                        "--unfreeze PATTERN trains base parameters as well")
    named = [(n, p) for n, p in model.named_parameters() if not is_lora_name(n)]
    unfrozen = set()
    for pattern in args.unfreeze:
        hits = [n for n, _ in named if matches(pattern, n)]
        if not hits:
            raise ToolError(f"--unfreeze {pattern}: matches no base parameter "
                            f"(names look like {named[2][0]})")
        unfrozen.update(hits)
    for n, p in named:
        p.requires_grad_(n in unfrozen)
    return spec


# ----------------------------------------------------------------- data

def load_rows(directory, batch_size, name="train_x.npy"):
    if batch_size < 1:
        raise ToolError(f"--batch-size {batch_size}: needs at least 1")
    path = os.path.join(directory, name)
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise ToolError(f"{path}: {e}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2 or x.dtype.kind not in "iu":
        raise ToolError(f"{path}: {x.dtype} {list(x.shape)}: needs integer tokens (N, T+1), T >= 1")
    return path, x


def batch_rows(x, k, b):
    """Batch k: rows (k*b + j) mod N for j in 0..b-1 (wrapping to the start)."""
    return x[(k * b + np.arange(b)) % x.shape[0]]


def lm_loss(model, rows, source):
    V = model.cfg["vocab_size"]
    rows = torch.from_numpy(rows.astype(np.int64))
    inputs, targets = rows[:, :-1], rows[:, 1:]
    if inputs.min() < 0 or inputs.max() >= V:
        raise ToolError(f"{source}: input tokens in [{int(inputs.min())}, {int(inputs.max())}], "
                        f"vocab_size is {V}")
    bad = ((targets < 0) | (targets >= V)) & (targets != -100)
    if bad.any():
        raise ToolError(f"{source}: target token {int(targets[bad][0])} outside [0, {V}) and not -100")
    logits = model(inputs)
    return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=-100)


def torch_dtype(name):
    need_torch()
    return {"float32": torch.float32, "float64": torch.float64}[name]


def matches(pattern, name):
    """--freeze's rule, as frost's: a shell glob over the names, or a bare
    prefix (h.0 means every name beginning h.0.)."""
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def bits(t):
    return t.detach().view(torch.int64 if t.dtype == torch.float64 else torch.int32).clone()


# ------------------------------------------------------------- commands

def cmd_make_model(args):
    try:
        given = json.loads(args.config_json)
    except ValueError as e:
        raise ToolError(f"--config-json: not JSON: {e}")
    if not isinstance(given, dict):
        raise ToolError("--config-json: not a JSON object")
    unknown = sorted(set(given) - MAKE_MODEL_KEYS)
    if unknown:
        raise ToolError(f"--config-json: unknown field(s) {', '.join(unknown)}")
    given = dict(given)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        given.setdefault(key, 0.0)
    cfg = read_config("--config-json", json.dumps(given))
    if "bos_token_id" not in given:
        cfg["bos_token_id"] = cfg["eos_token_id"] = cfg["vocab_size"] - 1
    cfg["n_ctx"] = cfg["n_positions"]
    cfg["model_type"] = "gpt2"
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg["torch_dtype"] = "float32"
    need_torch().manual_seed(args.seed)
    model = GPT2(cfg)
    init_weights(model, cfg)
    os.makedirs(args.out, exist_ok=True)
    P = cfg["n_positions"]
    named = []
    for name, a in weights_of(model):
        if name == "lm_head.weight":
            named.append((name, a))  # GPT2LMHeadModel's head is not under "transformer."
            continue
        m = re.match(r"^(h\.\d+\.)attn\.c_attn\.weight$", name)
        if m and args.mask_buffers:  # where GPT2Attention registered them
            named.append((args.prefix + m.group(1) + "attn.bias",
                          np.tril(np.ones((P, P), np.float32)).reshape(1, 1, P, P)))
            named.append((args.prefix + m.group(1) + "attn.masked_bias",
                          np.array(-1e4, dtype=np.float32)))
        named.append((args.prefix + name, a))
    save_safetensors(os.path.join(args.out, "model.safetensors"), named, {"format": "pt"})
    ordered = {k: cfg[k] for k in ["architectures", "model_type"] + sorted(
        k for k in cfg if k not in ("architectures", "model_type"))}
    tmp = os.path.join(args.out, f"config.json.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(ordered, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out, "config.json"))


def cmd_logits(args):
    dtype = torch_dtype(args.dtype)
    model = load_model(args.model, dtype)
    if args.adapter is not None:
        load_adapter(model, args.adapter, dtype)
    try:
        x = np.load(args.tokens)
    except (OSError, ValueError) as e:
        raise ToolError(f"{args.tokens}: {e}")
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise ToolError(f"{args.tokens}: {x.dtype} {list(x.shape)}: needs integer tokens (N, T)")
    V = model.cfg["vocab_size"]
    if x.size and (x.min() < 0 or x.max() >= V):
        raise ToolError(f"{args.tokens}: tokens outside [0, {V})")
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.int64)))
    np.save(args.out, logits.numpy().astype(np.float64 if args.dtype == "float64" else np.float32))


def cmd_train(args):
    dtype = torch_dtype(args.dtype)
    model = load_model(args.model, dtype)
    source, x = load_rows(args.data, args.batch_size)
    if x.shape[1] - 1 > model.cfg["n_positions"]:
        raise ToolError(f"{source}: {x.shape[1] - 1} input tokens per row, "
                        f"n_positions is {model.cfg['n_positions']}")
    if args.steps < 0:
        raise ToolError(f"--steps {args.steps}: needs 0 or more")
    spec = setup_lora(model, args, dtype)
    named = list(model.named_parameters())
    for pattern in args.freeze:
        hits = [p for n, p in named if matches(pattern, n)]
        if not hits:
            raise ToolError(f"--freeze {pattern}: matches no parameter "
                            f"(names look like {named[2][0]})")
        for p in hits:
            p.requires_grad_(False)
    frozen = {n: bits(p) for n, p in named if not p.requires_grad}
    trainable = [p for _, p in named if p.requires_grad]
    if not trainable:
        raise ToolError("--freeze: every parameter is frozen")
    try:
        betas = tuple(float(v) for v in args.betas.split(","))
        assert len(betas) == 2
    except (ValueError, AssertionError):
        raise ToolError(f"--betas {args.betas}: needs B1,B2")
    if any(model.cfg[k] for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")):
        print("torch_gpt2: warning: dropout is on (a pdrop is not 0): the losses depend "
              "on torch's random numbers", file=sys.stderr)
    if spec and spec["dropout"]:
        print("torch_gpt2: warning: LoRA dropout is on (lora_dropout is not 0): the losses "
              "depend on torch's random numbers", file=sys.stderr)
    torch.manual_seed(args.seed)  # dropout's random numbers
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=betas, eps=args.eps,
                            weight_decay=args.weight_decay)
    model.train()
    with open(args.losses, "w") as out:
        for step in range(1, args.steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = lm_loss(model, batch_rows(x, step - 1, args.batch_size), source)
            loss.backward()
            opt.step()
            out.write(f"{step} {loss.item()!r}\n")
            out.flush()
    changed = [n for n, p in named if n in frozen and not torch.equal(bits(p), frozen[n])]
    if changed:
        raise ToolError(f"frozen parameters changed: {', '.join(changed)}")
    if args.save:
        save_safetensors(args.save, weights_of(model), {"format": "pt"})
    if args.save_adapter:
        write_adapter(args.save_adapter, model, spec, spec["prefix"])


def cmd_grads(args):
    dtype = torch_dtype(args.dtype)
    model = load_model(args.model, dtype)
    source, x = load_rows(args.data, args.batch_size)
    spec = setup_lora(model, args, dtype)
    model.eval()  # no dropout: the gradient of the loaded weights alone
    loss = lm_loss(model, batch_rows(x, 0, args.batch_size), source)
    loss.backward()
    save_safetensors(args.out, [
        (n, (p.grad if p.grad is not None else torch.zeros_like(p)).to(torch.float32).numpy())
        for n, p in model.named_parameters() if spec is None or p.requires_grad],
        {"format": "pt"})
    print(f"loss {loss.item()!r}")


def cmd_make_adapter(args):
    model = load_model(args.model, torch_dtype("float32"))
    spec = fresh_spec(args)
    spec["targets"] = select_targets(model, args.lora)
    if args.b_std < 0:
        raise ToolError(f"--b-std {args.b_std}: needs 0 or more")
    torch.manual_seed(args.seed)
    attach_lora(model, spec["targets"], spec["r"], spec["alpha"], spec["dropout"],
                spec["rslora"], torch.float32)
    if args.b_std:
        with torch.no_grad():
            for _, m in adapted(model):
                m.lora_B.weight.normal_(0.0, args.b_std)
    write_adapter(args.out, model, spec, args.prefix)


def cmd_merge(args):
    model = load_model(args.model, torch_dtype("float64"))
    spec, weights = read_adapter(args.adapter, model)
    scaling = lora_scaling(spec["alpha"], spec["r"], spec["rslora"])
    modules = linear_modules(model)
    delta = {}
    for name, (A, B) in weights.items():
        d = scaling * (B @ A)  # [out, in], PEFT's get_delta_weight before its transpose
        delta[name + ".weight"] = d.T if isinstance(modules[name], Conv1D) else d
    out = np.float64 if args.dtype == "float64" else np.float32
    save_safetensors(args.out, [
        (n, (p.detach().numpy() + delta[n] if n in delta else p.detach().numpy()).astype(out))
        for n, p in model.named_parameters()], {"format": "pt"})


def cmd_make_data(args):
    kinds = {"int32": np.int32, "int64": np.int64, "uint16": np.uint16}
    if args.vocab < 1 or args.seq < 1 or args.rows < 1 or args.test_rows < 0:
        raise ToolError("--vocab, --seq and --rows need positive numbers")
    if args.dtype == "uint16" and args.vocab > 65536:
        raise ToolError(f"--vocab {args.vocab} does not fit uint16")
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "train_x.npy"),
            rng.integers(0, args.vocab, size=(args.rows, args.seq + 1)).astype(kinds[args.dtype]))
    if args.test_rows:
        np.save(os.path.join(args.out, "test_x.npy"),
                rng.integers(0, args.vocab, size=(args.test_rows, args.seq + 1))
                .astype(kinds[args.dtype]))


def cmd_inspect(args):
    tensors, dtypes = load_safetensors(args.file, with_dtypes=True)
    for name, a in tensors.items():
        print(f"{name} {dtypes[name]} [{','.join(str(d) for d in a.shape)}]")


def cmd_compare(args):
    a, b = load_safetensors(args.a), load_safetensors(args.ref)
    if list(a) != list(b) and sorted(a) != sorted(b):
        raise ToolError(f"names differ: only in {args.a}: {sorted(set(a) - set(b))}; "
                        f"only in {args.ref}: {sorted(set(b) - set(a))}")
    largest = max((float(np.abs(v.astype(np.float64)).max()) for v in b.values() if v.size),
                  default=0.0)
    worst, worst_name = 0.0, None
    for name in b:
        if a[name].shape != b[name].shape:
            raise ToolError(f"{name}: shape {list(a[name].shape)} against {list(b[name].shape)}")
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        if not y.size:
            continue
        scale = max(float(np.abs(y).max()), args.floor * largest, 1e-300)
        rel = float(np.abs(x - y).max()) / scale
        if rel != rel:  # a NaN on either side
            rel = math.inf
        if worst_name is None or rel > worst:
            worst, worst_name = rel, name
    print(f"max relative difference {worst:.3g} ({worst_name})")
    return 0 if worst <= args.tol else 1


def cmd_grads_vs(args):
    """Each gradient of FROST no further from the float64 reference REF64 than
    twice REF32's distance to it (distances relative to each tensor's largest
    reference value, or a 1e-3 share of the largest of all, for gradients that
    are mathematically zero); --strip P takes P off FROST's names first."""
    frost = {k[len(args.strip):] if k.startswith(args.strip) else k: v
             for k, v in load_safetensors(args.frost).items()}
    t32, t64 = load_safetensors(args.ref32), load_safetensors(args.ref64)
    scale = max(float(np.abs(r).max()) for r in t64.values())
    worst, bad = 0.0, []
    for name, ref in t64.items():
        if name not in frost:
            continue
        ref = ref.astype(np.float64)
        denom = max(float(np.abs(ref).max()), 1e-3 * scale)
        df = float(np.abs(frost[name] - ref).max()) / denom
        dt = float(np.abs(t32[name] - ref).max()) / denom
        worst = max(worst, df / max(dt, 1e-7))
        if df > 2 * dt + 1e-7:
            bad.append("%s frost %.2e torch %.2e" % (name, df, dt))
    missing = sorted(set(frost) ^ set(t64))
    print("%d %s, frost's distance at most %.2fx torch float32's%s%s" %
          (len(t64), args.what, worst, "; over 2x: " + ", ".join(bad) if bad else "",
           "; names differ: " + ", ".join(missing) if missing else ""))
    return 1 if bad or missing else 0


def cmd_batch(args):
    failures = 0
    with open(args.jobs) as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    for line in lines:
        argv = shlex.split(line)
        try:
            status = run(argv)
        except SystemExit as e:  # argparse's usage errors
            status = e.code
        except (ToolError, OSError, ValueError, RuntimeError) as e:
            print(f"torch_gpt2: {shlex.join(argv)}: {e}", file=sys.stderr)
            status = 1
        failures += status != 0
    return 1 if failures else 0


# --------------------------------------------------------------- parser

def add_lora_options(p, fresh_only=False):
    """--lora, --lora-rank, --lora-alpha, --lora-dropout, --rslora (a fresh
    adapter's), and unless fresh_only --unfreeze."""
    p.add_argument("--lora", metavar="PATTERNS",
                   help="comma-separated target modules: a Conv1D (or the untied head, "
                        "lm_head) is a target when a pattern, a shell glob, matches its full "
                        "name in GPT2LMHeadModel (transformer.h.0.attn.c_attn, lm_head) or a "
                        "dot-suffix of it: 'c_attn', 'attn.c_proj', 'h.*.mlp.c_fc'; a pattern "
                        "that matches none is an error, and so is lm_head with a tied head")
    p.add_argument("--lora-rank", type=int, metavar="R", help="r, the adapters' rank")
    p.add_argument("--lora-alpha", type=float, metavar="A",
                   help="lora_alpha: the scaling is A/R (A/sqrt(R) with --rslora)")
    p.add_argument("--lora-dropout", type=float, metavar="P",
                   help="nn.Dropout(P) on the adapters' input (default 0: none)")
    p.add_argument("--rslora", action="store_true",
                   help="rank-stabilised scaling A/sqrt(R) (PEFT's use_rslora)")
    if not fresh_only:
        p.add_argument("--unfreeze", action="append", default=[], metavar="PATTERN",
                       help="with LoRA every base parameter is frozen (PEFT's way) but those "
                            "whose name matches PATTERN (a glob or a bare prefix, as --freeze "
                            "takes); repeatable; a pattern that matches no base parameter is an "
                            "error")


def build_parser():
    R = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="torch_gpt2.py", formatter_class=R,
        description=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-model", formatter_class=R, help="a seeded, freshly initialised model",
                       description="""\
Writes DIR/config.json, a complete Hugging Face GPT-2 config ("architectures":
["GPT2LMHeadModel"], "model_type": "gpt2" and every GPT2Config field: the
given ones, Hugging Face's defaults for the rest, except that the dropout
probabilities default to 0 and bos/eos_token_id to vocab_size-1; n_ctx =
n_positions as old configs have it), and DIR/model.safetensors (F32, metadata
{"format": "pt"}) holding Hugging Face's initialisation after
torch.manual_seed(SEED): normal(0, initializer_range) for weights and
embeddings, zeros for biases, ones for LayerNorm weights, and
normal(0, initializer_range/sqrt(2*n_layer)) for attn.c_proj.weight and
mlp.c_proj.weight, drawn in parameter order (lm_head.weight, when
tie_word_embeddings is false, last: the other parameters are then the
tied model's).""")
    p.add_argument("--config-json", required=True, metavar="JSON",
                   help='GPT2Config fields, e.g. \'{"n_layer": 2, "n_embd": 64, "n_head": 4, '
                        '"n_positions": 32, "vocab_size": 256}\'')
    p.add_argument("--out", required=True, metavar="DIR", help="created if missing")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    p.add_argument("--prefix", default="", metavar="P",
                   help='put P in front of every GPT2Model name, e.g. "transformer." as '
                        "GPT2LMHeadModel saves them (lm_head.weight, when untied, keeps its name)")
    p.add_argument("--mask-buffers", action="store_true",
                   help="also write old checkpoints' buffers: h.i.attn.bias, the causal mask "
                        "as F32 [1,1,P,P] of 0/1, and h.i.attn.masked_bias, F32 scalar -1e4, "
                        "before each block's attn.c_attn.weight (a reader must skip them)")
    p.set_defaults(handler=cmd_make_model)

    p = sub.add_parser("logits", formatter_class=R, help="the logits of token sequences",
                       description="""\
Reads X.npy, integer tokens (N, T) with T <= n_positions, and writes the
logits (N, T, V) with numpy.save: float32, or float64 with --dtype float64
(the whole computation then in double).  No dropout (eval mode).  With
--adapter ADIR, the LoRA adapter directory's modules add their terms (see
make-adapter).""")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--tokens", required=True, metavar="X.npy")
    p.add_argument("--out", required=True, metavar="L.npy")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--adapter", metavar="ADIR", help="a PEFT LoRA adapter directory to apply")
    p.set_defaults(handler=cmd_logits)

    p = sub.add_parser("train", formatter_class=R, help="language-model training with AdamW",
                       description="""\
Trains as frost trains a language model: DATADIR/train_x.npy holds N rows of
T+1 integer tokens (int32, int64 or uint16); batches are taken in dataset
order, never shuffled: batch k (k = 0, 1, ...; step k+1) is the rows
(k*B + j) mod N for j = 0..B-1, so the data wrap around to row 0 when they
run out, in the middle of a batch if N is not a multiple of B, and every
batch has B rows.  Inputs are a batch's columns [0, T), targets its columns
[1, T+1); the loss is
  torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
(the mean over the positions whose target is not -100).  Each step:
zero_grad, loss.backward(), then torch.optim.AdamW(every trainable parameter,
lr, betas, eps, weight_decay; one param group, amsgrad off) steps.  A tied
head is wte.weight itself, so its gradient is the sum of the embedding's and
the head's.  Dropout, when a pdrop of the config is not 0, is applied as
Hugging Face does in training mode (a warning says so: frost's random numbers
are not torch's).

Writes "STEP LOSS" per step to OUT.txt (steps from 1, the loss as Python's
repr of the float).  Frozen parameters (--freeze) get requires_grad=False,
are left out of the optimizer, and must have their bits unchanged at the end
(exit status 1 and a message otherwise).  --save writes the final weights as
F32 safetensors under Hugging Face's names, no prefix, no mask buffers.

LoRA (PEFT's, see make-adapter): --adapter ADIR starts from an adapter
directory (its adapter_config.json gives the rank, alpha, dropout, rslora and
targets: --lora and its options are not given then); --lora PATTERNS
--lora-rank R --lora-alpha A starts from a fresh adapter, drawn as PEFT
initialises one (lora_B zeros) after torch.manual_seed(SEED), the same numbers
as `make-adapter --seed SEED`.  Every base parameter is then frozen (and
checked bitwise at the end) but those --unfreeze names; --freeze is an error.
AdamW gets the adapters' parameters and the unfrozen ones (in model order,
one param group, weight decay on all of them).  --save still writes the base
weights only; --save-adapter DIR writes the trained adapter as make-adapter
does (keys with the prefix that --adapter's file had, "transformer." for a
fresh one).""")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="DATADIR")
    p.add_argument("--steps", type=int, required=True, metavar="K")
    p.add_argument("--batch-size", type=int, required=True, metavar="B")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--weight-decay", type=float, default=0.01, metavar="WD",
                   help="AdamW's decoupled weight decay (default 0.01, torch's)")
    p.add_argument("--betas", default="0.9,0.999", metavar="B1,B2", help="default 0.9,0.999")
    p.add_argument("--eps", type=float, default=1e-8, help="default 1e-8")
    p.add_argument("--freeze", action="append", default=[], metavar="PATTERN",
                   help="freeze the parameters whose name matches PATTERN, a shell glob "
                        "(fnmatch.fnmatchcase: '*.bias', 'h.[01].attn.*') or a bare prefix "
                        "('h.0' = every name that begins 'h.0.'); repeatable; a pattern that "
                        "matches nothing is an error")
    p.add_argument("--losses", required=True, metavar="OUT.txt")
    p.add_argument("--save", metavar="W.safetensors")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float64 runs everything (weights, activations, AdamW's state) in double")
    p.add_argument("--seed", type=int, default=0,
                   help="torch.manual_seed before training (only dropout uses it), and "
                        "before a fresh adapter's init")
    p.add_argument("--adapter", metavar="ADIR", help="start from this LoRA adapter directory")
    add_lora_options(p)
    p.add_argument("--save-adapter", metavar="ADIR", help="write the trained adapter there")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("grads", formatter_class=R, help="the gradient of the first batch's loss",
                       description="""\
The gradient of the first batch's loss (rows [0, B) of DATADIR/train_x.npy,
mod N; the loss as in `train`, without dropout) with respect to every
parameter at the loaded weights, written as F32 safetensors under the
parameters' names (a tied head's gradient in wte.weight; cast from float64
with --dtype float64).  Prints "loss LOSS".  With --adapter ADIR, the gradient
of the adapter's parameters only, under PEFT's names inside the model
(h.0.attn.c_attn.lora_A.weight: no base_model.model. or transformer.), and of
the base parameters that --unfreeze names, in model order.""")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="DATADIR")
    p.add_argument("--batch-size", type=int, required=True, metavar="B")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", required=True, metavar="G.safetensors")
    p.add_argument("--adapter", metavar="ADIR", help="a PEFT LoRA adapter directory to apply")
    p.add_argument("--unfreeze", action="append", default=[], metavar="PATTERN",
                   help="with --adapter, also the gradient of the base parameters whose name "
                        "matches PATTERN (as train's --unfreeze)")
    p.set_defaults(handler=cmd_grads)

    p = sub.add_parser("make-adapter", formatter_class=R, help="a PEFT LoRA adapter directory",
                       description="""\
Writes a PEFT LoRA adapter directory for the model of DIR: ADIR/adapter_model.
safetensors, F32, metadata {"format": "pt"}, for each target module in model
order base_model.model.<PREFIX><module>.lora_A.weight [r, in] and .lora_B
.weight [out, r] (lm_head never prefixed); and ADIR/adapter_config.json as PEFT
0.7+ writes it (indent 2, sorted keys, no newline at the end): peft_type
"LORA", task_type "CAUSAL_LM", r, lora_alpha (an integer when whole),
lora_dropout, target_modules (the full names of the modules matched, with the
prefix), bias "none", fan_in_fan_out (true when a target is a Conv1D),
use_rslora, modules_to_save null, init_lora_weights true, inference_mode
false, base_model_name_or_path, layers_to_transform, layers_pattern and
revision null, rank_pattern and alpha_pattern {}.  The numbers: after
torch.manual_seed(SEED), per target in model order, nn.Linear(in, r) and
nn.Linear(r, out) are built (their default init drawn, as PEFT's are), then
lora_A gets kaiming_uniform_(a=sqrt(5)), U(-1/sqrt(in), 1/sqrt(in)), and
lora_B zeros: PEFT's init.  With --b-std X > 0 every lora_B is then drawn
normal(0, X), in model order, so that the adapter changes the output.

A target module computes base(x) + lora_B(lora_A(dropout(x))) * scaling,
scaling = alpha/r (alpha/sqrt(r) with rslora).  Reading an adapter directory
(logits, train, grads, merge --adapter): keys base_model.model.[transformer.]
MODULE.lora_A.weight / .lora_B.weight; peft_type must be "LORA" and bias
"none"; every key's module must exist and be a Conv1D or the untied lm_head,
its shapes [r, in] and [out, r] with the config's r, and the modules those of
target_modules (a list of names or globs matched as --lora's patterns, a
string as PEFT's re.fullmatch, null as PEFT's default for GPT-2, c_attn);
any other key is an error, and so are modules_to_save, layers_to_transform,
rank_pattern or alpha_pattern.""")
    p.add_argument("--model", required=True, metavar="DIR")
    add_lora_options(p, fresh_only=True)
    p.add_argument("--prefix", default=BODY_PREFIX, metavar="P",
                   help='in front of the GPT2Model modules\' names (default "transformer.", '
                        'as GPT2LMHeadModel has them; "" for none)')
    p.add_argument("--out", required=True, metavar="ADIR", help="created if missing")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    p.add_argument("--b-std", type=float, default=0.0, metavar="X",
                   help="draw lora_B normal(0, X) (default 0: zeros, PEFT's init)")
    p.set_defaults(handler=cmd_make_adapter)

    p = sub.add_parser("merge", formatter_class=R, help="base weights with an adapter merged in",
                       description="""\
Writes the model's weights with the adapter merged in, as PEFT's merge does:
W += scaling * (B @ A)^T for a Conv1D (stored [in, out]: W += scaling *
A^T @ B^T), W += scaling * B @ A for lm_head, computed in float64 and stored
F32 (F64 with --dtype float64) under the base names, no prefix, metadata
{"format": "pt"}; the other parameters as they are.""")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--adapter", required=True, metavar="ADIR")
    p.add_argument("--out", required=True, metavar="W.safetensors")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the stored dtype (the sum is float64 either way)")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("make-data", formatter_class=R, help="random token data",
                       description="""\
Writes DIR/train_x.npy, N rows of T+1 tokens drawn uniformly from [0, V)
(numpy.random.default_rng(SEED).integers), and with --test-rows M also
DIR/test_x.npy, M more rows from the same generator.""")
    p.add_argument("--out", required=True, metavar="DIR", help="created if missing")
    p.add_argument("--vocab", type=int, required=True, metavar="V")
    p.add_argument("--seq", type=int, required=True, metavar="T")
    p.add_argument("--rows", type=int, required=True, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["int32", "int64", "uint16"], default="int32")
    p.add_argument("--test-rows", type=int, default=0, metavar="M")
    p.set_defaults(handler=cmd_make_data)

    p = sub.add_parser("inspect", formatter_class=R, help="a safetensors file's tensors",
                       description="""\
Prints "NAME DTYPE [D0,D1,...]" for every tensor of FILE, in header order,
after checking the header and every tensor's extent.""")
    p.add_argument("file", metavar="FILE.safetensors")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("compare", formatter_class=R, help="compare two weight or gradient files",
                       description="""\
Compares A against the reference REF (same names and shapes): for each
tensor, max|a - r| / max(max|r| of that tensor, FLOOR * max|r| over all
tensors); prints "max relative difference D (NAME)" for the worst tensor
and exits 1 when D > TOL.  FLOOR keeps a tensor that is mathematically zero
(the gradient of the key bias of c_attn, say) from dividing rounding noise
by rounding noise.""")
    p.add_argument("--tol", type=float, default=1e-3, help="default 1e-3")
    p.add_argument("--floor", type=float, default=1e-3, help="default 1e-3")
    p.add_argument("a", metavar="A.safetensors")
    p.add_argument("ref", metavar="REF.safetensors")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("grads-vs", formatter_class=R,
                       help="frost's gradients against float32 and float64 references",
                       description="""\
Exits 1 unless every gradient in FROST is no further from REF64's (a
float64 run of `grads`) than twice REF32's (a float32 run) is, each distance
max|g - r64| over max|r64| of the tensor (at least 1e-3 of the largest over
all), and FROST and REF64 name the same tensors (after --strip).""")
    p.add_argument("--strip", default="", help="a prefix taken off FROST's names")
    p.add_argument("--what", default="gradients", help="what the report calls them")
    p.add_argument("frost", metavar="FROST.safetensors")
    p.add_argument("ref32", metavar="REF32.safetensors")
    p.add_argument("ref64", metavar="REF64.safetensors")
    p.set_defaults(handler=cmd_grads_vs)

    p = sub.add_parser("batch", formatter_class=R, help="run many commands in one process",
                       description="""\
Runs every line of JOBS (a command line of this script, shell-quoted; blank
lines and lines starting # skipped) in this one process, so that torch is
imported once; the exit status is 1 if any failed (each failure reported on
stderr, the others still run).""")
    p.add_argument("jobs", metavar="JOBS")
    p.set_defaults(handler=cmd_batch)
    return parser


def run(argv):
    args = build_parser().parse_args(argv)
    return args.handler(args) or 0


def main():
    try:
        status = run(sys.argv[1:])
    except (ToolError, OSError) as e:
        print(f"torch_gpt2: {e}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
