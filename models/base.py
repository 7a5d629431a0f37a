"""What every architecture shares: hyper-parameters from GGUF metadata, linear layers over
quantized tensors, grouped-query self-attention and the embedding -> blocks -> logits loop.

An architecture file (llama.py, gemma3.py, ...) says which tensors exist, which defaults apply and
how one block is wired; it knows nothing of the CLI or of sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgellm.gguf_file import GGUFError, GGUFFile, Tensor
from edgellm.kernels import Weight, WeightGroup, get_rows
from edgellm.kernels.nn import ROPE_NORM, attention, norm_rope, rms_norm, rope_inv_freq, rope_tables_for
from edgellm.sparse import SparseGroup, SparseWeight, sparse_weights


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int  # context length the model was trained with
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int  # per-head width of Q and K (key_length)
    head_dim_v: int  # per-head width of V (value_length)
    n_rot: int  # leading dims of each head that RoPE rotates
    norm_eps: float
    rope_type: int  # ROPE_NORM or ROPE_NEOX
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    attn_scale: float  # multiplies Q·K; 1/sqrt(head_dim) unless the arch says otherwise
    sliding_window: int = 0  # 0: every layer sees the whole context
    swa_layers: tuple[bool, ...] = ()  # which layers use the sliding window
    rope_base_swa: float = 0.0  # sliding-window layers may rotate with their own base
    rope_freq_scale_swa: float = 1.0
    tied_output: bool = False  # output projection shares token_embd

    def window(self, il: int) -> int:
        return self.sliding_window if self.swa_layers and self.swa_layers[il] else 0

    def rope(self, il: int) -> tuple[float, float]:
        """(freq_base, freq_scale) for layer il."""
        if self.window(il):
            return self.rope_base_swa, self.rope_freq_scale_swa
        return self.rope_base, self.rope_freq_scale


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value < 1 << 31:
        raise GGUFError(f"metadata {key} must be a positive integer, got {value!r}")
    return int(value)


class MetadataView:
    """`{arch}.`-prefixed metadata lookups with the checks llama.cpp's loader makes."""

    def __init__(self, gguf: GGUFFile, arch: str):
        self.gguf, self.arch = gguf, arch

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def has(self, name: str) -> bool:
        return self.key(name) in self.gguf.metadata

    def int(self, name: str, default: int | None = None) -> int:
        value = self.gguf.metadata.get(self.key(name), default)
        if value is None:
            raise GGUFError(f"missing metadata {self.key(name)}")
        if isinstance(value, np.ndarray):  # per-layer arrays: use the first layer's value
            if value.size == 0:
                raise GGUFError(f"metadata {self.key(name)} is an empty array")
            value = value.flat[0]
        return _positive_int(value, self.key(name))

    def float(self, name: str, default: float | None = None) -> float:
        value = self.gguf.metadata.get(self.key(name), default)
        if value is None:
            raise GGUFError(f"missing metadata {self.key(name)}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise GGUFError(f"metadata {self.key(name)} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise GGUFError(f"metadata {self.key(name)} is not finite")
        return value


def read_hparams(gguf: GGUFFile, rope_type: int) -> HParams:
    """Hyper-parameters with the defaults llama.cpp applies when a key is absent."""
    arch = gguf.architecture
    md = MetadataView(gguf, arch)
    n_embd = md.int("embedding_length")
    n_head = md.int("attention.head_count")
    n_head_kv = md.int("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise GGUFError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = md.int("attention.key_length", n_embd // n_head)
    head_dim_v = md.int("attention.value_length", n_embd // n_head)
    n_rot = md.int("rope.dimension_count", head_dim)
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"rope.dimension_count {n_rot} does not fit head dim {head_dim}")
    freq_scale = 1.0
    scaling = gguf.get(md.key("rope.scaling.type"), "none")
    if scaling == "linear" or md.has("rope.scale_linear"):
        factor = md.float("rope.scaling.factor", md.float("rope.scale_linear", 1.0))
        freq_scale = 1.0 / factor if factor > 0 else 1.0
    elif scaling not in ("none", "", None):
        raise GGUFError(f"rope scaling type {scaling!r} is not supported")
    # Vocabulary size: the vocab's, else {arch}.vocab_size, else the embedding's rows.
    tokens = gguf.get("tokenizer.ggml.tokens")
    embd = gguf.tensors.get("token_embd.weight")
    if tokens is not None:
        n_vocab = len(tokens)
    else:
        n_vocab = md.int("vocab_size", embd.shape[0] if embd is not None and len(embd.shape) == 2 else None)
    return HParams(
        arch=arch,
        n_vocab=n_vocab,
        n_ctx_train=md.int("context_length"),
        n_embd=n_embd,
        n_layer=md.int("block_count"),
        n_ff=md.int("feed_forward_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_rot=n_rot,
        norm_eps=md.float("attention.layer_norm_rms_epsilon"),
        rope_type=rope_type,
        rope_base=md.float("rope.freq_base", 10000.0),
        rope_freq_scale=freq_scale,
        attn_scale=1.0 / math.sqrt(head_dim),
    )


class Weights:
    """Looks tensors up by GGUF name and checks their shapes as they are taken."""

    def __init__(self, gguf: GGUFFile):
        self.tensors = gguf.tensors
        self.sparse = sparse_weights(gguf)  # 2:4 pruned weights (edgellm/sparse.py), usually none

    def get(self, name: str, shape: tuple[int, ...], required: bool = True) -> Tensor | None:
        t = self.sparse.get(name) or self.tensors.get(name)
        if t is None:
            if required:
                raise GGUFError(f"missing tensor {name}")
            return None
        if t.shape != shape:
            raise GGUFError(f"tensor {name} has shape {t.shape}, expected {shape}")
        return t

    def vector(self, name: str, size: int, required: bool = True) -> np.ndarray | None:
        """A 1-D F32/F16 tensor (norm weight, bias) as float32, read-only (as the kernels take
        what they only read: one compiled form), copied out of the file: a read of the file maps
        the 2 MiB page around it, the matrices' bytes that neighbour it included."""
        t = self.get(name, (size,), required)
        if t is None:
            return None
        v = np.array(t.array(), dtype=np.float32)
        v.flags.writeable = False
        return v


class Linear:
    """y = x @ W.T (+ b) with W kept in its quantized form. W [n_out, n_in]."""

    def __init__(self, weight: Tensor, bias: np.ndarray | None = None):
        self.bias = bias
        # A SparseWeight (edgellm/sparse.py) multiplies by itself; a GGUF tensor is checked once
        # here and handed to the kernels, a legacy type to be repacked (Transformer.repack_weights,
        # or its first multiply), the file's pages it is read from then dropped.
        self.sparse = weight if hasattr(weight, "matmul") else None
        self.weight = None if self.sparse is not None else Weight(weight.data, weight.ggml_type, weight.n_cols,
                                                                    release=weight.release_pages, defer=True)
        self.alone = LinearGroup((self,))

    def __call__(self, x: np.ndarray, norm=None) -> np.ndarray:
        return self.alone(x, norm)[0]


class LinearGroup:
    """Linears reading the same x (Q, K, V; gate, up): [layer(x) for layer in linears], dense
    weights multiplied together (kernels.WeightGroup: one parallel job for all their rows)."""

    def __init__(self, linears):
        self.linears = tuple(linears)
        dense = all(layer.sparse is None for layer in self.linears)
        self.weights = WeightGroup([layer.weight for layer in self.linears]) if dense else None
        sparse = [layer.sparse for layer in self.linears]  # calibration's wrappers are not SparseWeights
        self.sparse = SparseGroup(sparse) if all(isinstance(w, SparseWeight) for w in sparse) and len(
            {(w.value_type, w.n_cols) for w in sparse}) == 1 else None

    def __call__(self, x: np.ndarray, norm=None) -> list[np.ndarray]:
        """norm: (weight, eps) of an RMS norm x takes first; for dense weights it is made where
        the kernels quantize x (one call fewer, the same bits)."""
        if self.weights is not None:
            ys = self.weights.matmul(x, norm=norm)
        else:
            if norm is not None:
                x = rms_norm(x, *norm)
            if self.sparse is not None:  # 2:4 weights: one job too (edgellm/sparse.py)
                ys = self.sparse.matmul(x)
            else:
                ys = [layer.sparse.matmul(x) if layer.sparse is not None else layer.alone(x)[0]
                      for layer in self.linears]
        for y, layer in zip(ys, self.linears):
            if layer.bias is not None:
                y += layer.bias
        return ys


class RopeMemo:
    """RoPE's cos/sin tables for the positions of one forward pass, computed once per distinct
    (base, scale, factors) rather than once per layer; the angles per position once for good."""

    def __init__(self):
        self.positions, self.memo, self.inv_freq = None, {}, {}

    def tables(self, positions, n_rot, base, scale, factors):
        if positions is not self.positions:
            self.positions, self.memo = positions, {}
        key = (n_rot, base, scale, id(factors))
        if key not in self.memo:
            if key not in self.inv_freq:
                self.inv_freq[key] = rope_inv_freq(n_rot, base, factors)
            self.memo[key] = rope_tables_for(positions, self.inv_freq[key], scale)
        return self.memo[key]


class Attention:
    """Grouped-query self-attention with optional Q/K biases (qwen2) and Q/K RMS norms
    (qwen3, gemma3), RoPE, and a KV cache that may be a sliding window."""

    def __init__(self, hp: HParams, w: Weights, il: int):
        p = f"blk.{il}."
        d, hd, hdv = hp.n_embd, hp.head_dim, hp.head_dim_v
        self.hp, self.il = hp, il
        self.wq = Linear(w.get(p + "attn_q.weight", (hp.n_head * hd, d)),
                         w.vector(p + "attn_q.bias", hp.n_head * hd, required=False))
        self.wk = Linear(w.get(p + "attn_k.weight", (hp.n_head_kv * hd, d)),
                         w.vector(p + "attn_k.bias", hp.n_head_kv * hd, required=False))
        self.wv = Linear(w.get(p + "attn_v.weight", (hp.n_head_kv * hdv, d)),
                         w.vector(p + "attn_v.bias", hp.n_head_kv * hdv, required=False))
        self.wo = Linear(w.get(p + "attn_output.weight", (d, hp.n_head * hdv)),
                         w.vector(p + "attn_output.bias", d, required=False))
        self.qkv = LinearGroup((self.wq, self.wk, self.wv))
        self.q_norm = w.vector(p + "attn_q_norm.weight", hd, required=False)
        self.k_norm = w.vector(p + "attn_k_norm.weight", hd, required=False)
        self.rope_base, self.rope_scale = hp.rope(il)
        self.window = hp.window(il)
        self.rope_factors = None  # llama 3.1+ long-context factors, set by the arch
        self.rope_memo = RopeMemo()  # the Transformer shares one between its layers

    def __call__(self, x: np.ndarray, positions: np.ndarray, cache, norm=None) -> np.ndarray:
        """norm: (weight, eps) of the RMS norm x takes before Q, K and V (made in their matmul)."""
        hp = self.hp
        n = x.shape[0]
        q, k, v = self.qkv(x, norm)
        q = q.reshape(n, hp.n_head, hp.head_dim)  # [n, n_head, hd]
        k = k.reshape(n, hp.n_head_kv, hp.head_dim)  # [n, n_kv, hd]
        v = v.reshape(n, hp.n_head_kv, hp.head_dim_v)
        cos, sin = self.rope_memo.tables(positions, hp.n_rot, self.rope_base, self.rope_scale, self.rope_factors)
        norm_rope(q, k, self.q_norm, self.k_norm, hp.norm_eps, cos, sin, hp.rope_type)  # Q/K norms, RoPE
        keys, values, key_pos = cache.update(k, v, positions)  # [n_kv, m, hd], [m]
        out = attention(q, keys, values, positions, key_pos, hp.attn_scale, self.window, overwrite_q=True)
        return self.wo(out)


class FeedForward:
    """Gated FFN: down(act(gate(x)) * up(x)); act_mul(gate, up, out) computes act(gate) * up
    into out (gate's own buffer here: one [n, n_ff] array fewer alive at once)."""

    def __init__(self, hp: HParams, w: Weights, il: int, act_mul):
        p = f"blk.{il}."
        self.gate = Linear(w.get(p + "ffn_gate.weight", (hp.n_ff, hp.n_embd)))
        self.up = Linear(w.get(p + "ffn_up.weight", (hp.n_ff, hp.n_embd)))
        self.down = Linear(w.get(p + "ffn_down.weight", (hp.n_embd, hp.n_ff)))
        self.gate_up = LinearGroup((self.gate, self.up))
        self.act_mul = act_mul

    def __call__(self, x: np.ndarray, norm=None) -> np.ndarray:
        """norm: (weight, eps) of the RMS norm x takes before gate and up (made in their matmul)."""
        gate, up = self.gate_up(x, norm)
        hidden = self.act_mul(gate, up, out=gate)
        del gate, up  # up's [n, n_ff] goes before down quantizes hidden: the prefill's peak
        return self.down(hidden)


class Transformer:
    """Token ids -> logits: embedding, the arch's blocks, final norm, output projection."""

    rope_type = ROPE_NORM
    embed_scale = 1.0

    def __init__(self, gguf: GGUFFile):
        self.hp = self.read_hparams(gguf)
        w = Weights(gguf)
        hp = self.hp
        self.token_embd = w.get("token_embd.weight", (hp.n_vocab, hp.n_embd))
        output = w.get("output.weight", (hp.n_vocab, hp.n_embd), required=False)
        hp.tied_output = output is None
        self.output = Linear(output if output is not None else self.token_embd)
        self.output_norm = w.vector("output_norm.weight", hp.n_embd)
        self.blocks = [self.make_block(w, il) for il in range(hp.n_layer)]
        memo = RopeMemo()
        for block in self.blocks:
            block.attn.rope_memo = memo

    def read_hparams(self, gguf: GGUFFile) -> HParams:
        return read_hparams(gguf, self.rope_type)

    def linear_layers(self) -> list[Linear]:
        """Every matrix a decode step multiplies by (blocks' .attn and .ffn, then the output)."""
        layers = []
        for block in self.blocks:
            for part in (block.attn, block.ffn):
                layers += [v for v in vars(part).values() if isinstance(v, Linear)]
        return layers + [self.output]

    def make_block(self, w: Weights, il: int):
        raise NotImplementedError

    def repack_weights(self) -> None:
        """Every matrix in the layout the kernels multiply by (kernels.Weight: the legacy types
        repacked into memory of their own, the file's pages dropped); otherwise each is on its
        first multiply."""
        for layer in self.linear_layers():
            if layer.weight is not None:
                layer.weight.repack()

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        t = self.token_embd
        if self.hp.tied_output and self.output.weight is not None:  # the rows the output matrix holds
            x = self.output.weight.get_rows(tokens)  # [n, d]
        else:
            x = get_rows(t.data, t.ggml_type, t.n_cols, tokens)
        if self.embed_scale != 1.0:
            x *= np.float32(self.embed_scale)
        return x

    def forward(self, tokens: np.ndarray, positions: np.ndarray, kv_cache, logits: str) -> np.ndarray | None:
        """Logits [n, n_vocab] for every token (logits "all"), [1, n_vocab] for the last one
        ("last"), or none (a part of a longer batch: only the cache is wanted)."""
        x = self.embed(tokens)
        for block, cache in zip(self.blocks, kv_cache.layers):
            x = block(x, positions, cache)
        if logits == "none":
            return None
        if logits == "last":
            x = x[-1:]
        return self.output(x, norm=(self.output_norm, self.hp.norm_eps))

