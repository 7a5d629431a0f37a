"""Hugging Face checkpoints: config.json in GGUF's terms, the safetensors shards, and for each
architecture which HF tensor becomes which GGUF tensor, with which transform.

The names, layouts and metadata keys are the ones llama.cpp's convert_hf_to_gguf.py writes, so
that llama.cpp (and edgellm) load the result. Two transforms change values:
- llama/mistral: HF orders each head's Q and K rows for "rotate half" RoPE (first halves, then
  second halves); llama.cpp rotates adjacent pairs, so the rows of every head are interleaved
  back (`rope_row_order`). qwen2, qwen3 and gemma3 run NEOX-style RoPE in llama.cpp: no change.
- gemma3: Gemma3RMSNorm multiplies by (1 + w); llama.cpp multiplies by w, so every norm weight
  gets +1 (in float32, and norms are stored F32).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, RopeScalingType

from edgellm.converters.errors import ConvertError
from edgellm.converters.safetensors_file import SafetensorsFile, StoredTensor
from edgellm.converters.writer import TensorPlan

# HF "architectures" entry -> GGUF architecture
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the text model; the vision tower is skipped
}

# What the HF config classes (and llama.cpp, for gemma3) assume when config.json leaves a key out.
DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
    "qwen3": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
    "gemma3": {"max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
               "rope_local_base_freq": 10000.0, "num_attention_heads": 8, "num_key_value_heads": 4,
               "head_dim": 256, "sliding_window": 4096, "vocab_size": 262208,
               "tie_word_embeddings": True},
}
GEMMA3_SWA_PERIOD = 6  # llama.cpp assumes five sliding layers, then a global one, for gemma3

# Tensors that are not weights of the text model: rotary caches of old checkpoints, vision towers.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
SKIPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.", "vision_model.")


@dataclass
class ModelConfig:
    """config.json, reduced to what the GGUF file records."""

    hf_arch: str  # e.g. "LlamaForCausalLM"
    arch: str  # GGUF architecture: llama, qwen2, qwen3, gemma3
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int  # max_position_embeddings
    norm_eps: float
    rope_theta: float
    rope_theta_swa: float | None  # gemma3: RoPE base of the sliding-window layers
    rope_scaling: dict  # the full-attention rope parameters when they scale ("rope_type" set)
    sliding_window: int | None
    swa_layers: list[bool] | None  # per layer: does it use the sliding window (gemma3)
    tie_embeddings: bool
    attention_bias: bool  # llama with q/k/v/o biases
    final_logit_softcapping: float | None  # gemma3 checkpoints may cap the logits (none do yet)


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path} is not a JSON object")
    names = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
    hf_arch = next((n for n in names if n in ARCHITECTURES), None)
    if hf_arch is None:
        raise ConvertError(f"unsupported architecture {names[0]!r} (supported: {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[hf_arch]
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM's keys here
        cfg = {**cfg, **cfg["text_config"]}
    cfg = {**DEFAULTS[arch], **{k: v for k, v in cfg.items() if v is not None}}

    def need(key: str) -> int:
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConvertError(f"{path}: {key} must be a positive integer, got {value!r}")
        return value

    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    n_layer = need("num_hidden_layers")
    head_dim = cfg.get("head_dim") or n_embd // n_head
    theta, theta_swa, scaling = _rope(cfg, path)
    model = ModelConfig(
        hf_arch=hf_arch, arch=arch, n_vocab=need("vocab_size"), n_embd=n_embd,
        n_ff=need("intermediate_size"), n_layer=n_layer, n_head=n_head,
        n_head_kv=cfg.get("num_key_value_heads") or n_head, head_dim=head_dim,
        n_ctx=need("max_position_embeddings"), norm_eps=float(cfg["rms_norm_eps"]),
        rope_theta=theta, rope_theta_swa=theta_swa, rope_scaling=scaling,
        sliding_window=None, swa_layers=None, tie_embeddings=bool(cfg["tie_word_embeddings"]),
        attention_bias=bool(cfg.get("attention_bias", False)),
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
    )
    if n_head % model.n_head_kv:
        raise ConvertError(f"{path}: num_attention_heads {n_head} is not a multiple of "
                           f"num_key_value_heads {model.n_head_kv}")
    if arch == "llama" and head_dim % 2:
        raise ConvertError(f"{path}: head_dim {head_dim} is odd; RoPE needs pairs")
    if arch == "gemma3":
        model.sliding_window = need("sliding_window")
        model.swa_layers = _gemma3_layer_types(cfg, n_layer, path)
        if cfg.get("attn_logit_softcapping"):  # Gemma 2 had it; llama.cpp's gemma3 has no such key
            raise ConvertError(f"{path}: attn_logit_softcapping is not supported for gemma3")
    if scaling.get("rope_type") == "llama3" and arch != "llama":
        raise ConvertError(f"{path}: llama3 RoPE scaling on {arch} is not supported")
    return model


def _rope(cfg: dict, path: Path) -> tuple[float, float | None, dict]:
    """(rope_theta, sliding-window rope_theta, scaling parameters) from either config format:
    transformers 5 `rope_parameters` (per attention type for gemma3) or 4.x `rope_theta` +
    `rope_scaling` (+ gemma3's `rope_local_base_freq`)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    full = params.get("full_attention", params)
    sliding = params.get("sliding_attention", {})
    theta = float(full.get("rope_theta", cfg["rope_theta"]))
    theta_swa = sliding.get("rope_theta", cfg.get("rope_local_base_freq"))
    kind = full.get("rope_type", full.get("type")) or "default"
    if kind == "default":
        return theta, theta_swa, {}
    if kind not in ("linear", "yarn", "llama3"):
        raise ConvertError(f"{path}: RoPE scaling {kind!r} is not supported (linear, yarn, llama3 are)")
    needed = {"linear": ["factor"], "yarn": ["factor", "original_max_position_embeddings"], "llama3": []}
    for key in needed[kind]:
        if not isinstance(full.get(key), (int, float)):
            raise ConvertError(f"{path}: {kind} RoPE scaling needs a number for {key}")
    return theta, theta_swa, {**full, "rope_type": kind}


def _gemma3_layer_types(cfg: dict, n_layer: int, path: Path) -> list[bool]:
    types = cfg.get("layer_types")
    if types is None:
        period = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or GEMMA3_SWA_PERIOD
        return [il % period < period - 1 for il in range(n_layer)]
    if len(types) != n_layer or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ConvertError(f"{path}: layer_types must list sliding_attention/full_attention per layer")
    return [t == "sliding_attention" for t in types]


def add_hparams(writer: GGUFWriter, m: ModelConfig) -> None:
    """The `{arch}.*` keys llama.cpp reads for this architecture."""
    writer.add_context_length(m.n_ctx)
    writer.add_embedding_length(m.n_embd)
    writer.add_block_count(m.n_layer)
    writer.add_feed_forward_length(m.n_ff)
    writer.add_head_count(m.n_head)
    writer.add_head_count_kv(m.n_head_kv)
    writer.add_key_length(m.head_dim)
    writer.add_value_length(m.head_dim)
    writer.add_layer_norm_rms_eps(m.norm_eps)
    writer.add_rope_freq_base(m.rope_theta)
    if m.arch == "llama":
        writer.add_vocab_size(m.n_vocab)
        writer.add_rope_dimension_count(m.head_dim)
    if m.arch == "gemma3":
        writer.add_sliding_window(m.sliding_window)
        if m.rope_theta_swa is not None:
            writer.add_rope_freq_base_swa(float(m.rope_theta_swa))
        period = _swa_period(m.swa_layers)
        if period is None:  # not a "k sliding, 1 global" cycle: spell it out per layer
            writer.add_sliding_window_pattern(m.swa_layers)
        elif period != GEMMA3_SWA_PERIOD:
            writer.add_sliding_window_pattern(period)
        if m.final_logit_softcapping:
            writer.add_final_logit_softcapping(float(m.final_logit_softcapping))
    scaling = m.rope_scaling
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling.get("rope_type") == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if scaling.get(key) is not None:
                add(float(scaling[key]))


def _swa_period(swa_layers: list[bool]) -> int | None:
    """p when layer il slides exactly when il % p < p - 1 (llama.cpp's pattern), else None."""
    for period in range(1, len(swa_layers) + 2):
        if all(s == (il % period < period - 1) for il, s in enumerate(swa_layers)):
            return period
    return None


# --- weights -------------------------------------------------------------------------------------

def open_weights(folder: Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint, by HF name, across all shards; checks the shard index."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConvertError(f"cannot read {index_path}: {e}") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConvertError(f"{folder}: shard {missing[0]} listed in {index_path.name} is missing")
    else:
        weight_map = None
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        hint = f" (found {other[0]}: only safetensors weights are supported)" if other else ""
        raise ConvertError(f"{folder} has no *.safetensors weights{hint}")
    tensors: dict[str, StoredTensor] = {}
    for shard in shards:
        for name, t in SafetensorsFile(folder / shard).tensors.items():
            if name in tensors:
                raise ConvertError(f"tensor {name} appears in two shards")
            tensors[name] = t
    if weight_map is not None and set(weight_map) != set(tensors):
        diff = sorted(set(weight_map) ^ set(tensors))
        raise ConvertError(f"{index_path.name} and the shards disagree about tensor {diff[0]}")
    return tensors


def _block_tensors(m: ModelConfig) -> list[tuple[str, str, tuple[int, ...], bool]]:
    """(HF suffix, GGUF suffix, expected HF shape, required) for each tensor of one block."""
    d, ff, hd = m.n_embd, m.n_ff, m.head_dim
    q, kv = m.n_head * hd, m.n_head_kv * hd
    spec = [
        ("input_layernorm.weight", "attn_norm.weight", (d,), True),
        ("self_attn.q_proj.weight", "attn_q.weight", (q, d), True),
        ("self_attn.k_proj.weight", "attn_k.weight", (kv, d), True),
        ("self_attn.v_proj.weight", "attn_v.weight", (kv, d), True),
        ("self_attn.o_proj.weight", "attn_output.weight", (d, q), True),
        ("mlp.gate_proj.weight", "ffn_gate.weight", (ff, d), True),
        ("mlp.up_proj.weight", "ffn_up.weight", (ff, d), True),
        ("mlp.down_proj.weight", "ffn_down.weight", (d, ff), True),
    ]
    if m.arch in ("llama", "qwen2"):  # qwen2 always has q/k/v biases; llama when attention_bias
        required = m.arch == "qwen2"
        spec += [("self_attn.q_proj.bias", "attn_q.bias", (q,), required),
                 ("self_attn.k_proj.bias", "attn_k.bias", (kv,), required),
                 ("self_attn.v_proj.bias", "attn_v.bias", (kv,), required)]
        if m.arch == "llama":
            spec.append(("self_attn.o_proj.bias", "attn_output.bias", (d,), False))
    if m.arch in ("qwen3", "gemma3"):
        spec += [("self_attn.q_norm.weight", "attn_q_norm.weight", (hd,), True),
                 ("self_attn.k_norm.weight", "attn_k_norm.weight", (hd,), True)]
    if m.arch == "gemma3":  # norms before and after both attention and FFN
        spec += [("post_attention_layernorm.weight", "post_attention_norm.weight", (d,), True),
                 ("pre_feedforward_layernorm.weight", "ffn_norm.weight", (d,), True),
                 ("post_feedforward_layernorm.weight", "post_ffw_norm.weight", (d,), True)]
    else:
        spec.append(("post_attention_layernorm.weight", "ffn_norm.weight", (d,), True))
    return spec


def _text_model_name(name: str) -> str | None:
    """The name a tensor has in a plain *ForCausalLM checkpoint, or None to skip it."""
    if name.startswith(SKIPPED_PREFIXES) or name.endswith(SKIPPED_SUFFIXES):
        return None
    # Gemma3ForConditionalGeneration: "language_model.model.X" (transformers 4) or
    # "model.language_model.X" (transformers 5) -> "model.X"
    return name.replace("language_model.", "")


def tensor_plans(m: ModelConfig, stored: dict[str, StoredTensor]) -> list[TensorPlan]:
    """The GGUF tensors of the checkpoint, in llama.cpp's order, each checked against config.json."""
    weights: dict[str, StoredTensor] = {}
    for name, t in stored.items():
        if (text_name := _text_model_name(name)) is not None:
            weights[text_name] = t
    if m.tie_embeddings:
        weights.pop("lm_head.weight", None)  # tied: the same matrix as embed_tokens

    wanted = [("model.embed_tokens.weight", "token_embd.weight", (m.n_vocab, m.n_embd), True)]
    for il in range(m.n_layer):
        wanted += [(f"model.layers.{il}.{hf}", f"blk.{il}.{gg}", shape, req)
                   for hf, gg, shape, req in _block_tensors(m)]
    wanted += [("model.norm.weight", "output_norm.weight", (m.n_embd,), True),
               ("lm_head.weight", "output.weight", (m.n_vocab, m.n_embd), not m.tie_embeddings)]

    plans = []
    for hf_name, gguf_name, shape, required in wanted:
        t = weights.pop(hf_name, None)
        if t is None:
            if required:
                raise ConvertError(f"checkpoint lacks tensor {hf_name} ({m.hf_arch} needs it)")
            continue
        if t.shape != shape:
            raise ConvertError(f"mismatched shape: {hf_name} is {list(t.shape)} but config.json "
                               f"implies {list(shape)}")
        plans.append(_plan(m, gguf_name, t))
    if weights:
        extra = sorted(weights)
        raise ConvertError(f"unexpected tensor {extra[0]} for {m.hf_arch}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    if m.rope_scaling.get("rope_type") == "llama3":
        plans.insert(1, _llama3_rope_factors(m))
    return plans


def _plan(m: ModelConfig, gguf_name: str, t: StoredTensor) -> TensorPlan:
    order = None
    if m.arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
        order = rope_row_order(t.shape[0], m.n_head)
    elif m.arch == "llama" and gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
        order = rope_row_order(t.shape[0], m.n_head_kv)
    shift = np.float32(1.0) if m.arch == "gemma3" and gguf_name.endswith("norm.weight") else None

    if len(t.shape) == 1:  # stored as one row; a bias permutes its values, not rows
        def read(a: int, b: int) -> np.ndarray:
            row = t.rows(slice(0, 1))
            return _shifted(row if order is None else row[:, order], shift)
    else:
        def read(a: int, b: int) -> np.ndarray:
            return _shifted(t.rows(slice(a, b) if order is None else order[a:b]), shift)
    return TensorPlan(gguf_name, t.shape, t.dtype, read, release=t.release)


def _shifted(rows: np.ndarray, shift: np.float32 | None) -> np.ndarray:
    return rows if shift is None else rows + shift


def rope_row_order(n_rows: int, n_heads: int) -> np.ndarray:
    """Row j of the GGUF tensor is row order[j] of the HF one (llama.cpp's `permute`).

    Within a head, HF keeps RoPE pair i as rows (i, i + head_dim/2); llama.cpp wants them
    adjacent, (2i, 2i + 1)."""
    rows = np.arange(n_rows)
    return rows.reshape(n_heads, 2, n_rows // n_heads // 2).swapaxes(1, 2).reshape(-1)


def _llama3_rope_factors(m: ModelConfig) -> TensorPlan:
    """Llama 3.1+ "llama3" RoPE scaling as llama.cpp stores it: a per-frequency divisor tensor."""
    s = m.rope_scaling
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (m.rope_theta ** (np.arange(0, m.head_dim, 2, dtype=np.float32) / m.head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    values = np.array(factors, np.float32)[None, :]
    return TensorPlan("rope_freqs.weight", (values.shape[1],), "generated", lambda a, b: values)
