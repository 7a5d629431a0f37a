"""Write tiny random-weight GGUF models of each architecture, for fast tests of the runtime.

The weights are random (speed and plumbing tests); correctness against a reference
implementation lives in the transformers comparison tests.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

ARCH_EXTRAS = {
    "llama": dict(),
    "qwen2": dict(bias=True),
    "qwen3": dict(qk_norm=True),
    "gemma3": dict(qk_norm=True, post_norms=True),
}


def write_tiny_model(
    path: Path, arch: str = "llama", n_vocab: int = 64, n_embd: int = 32, n_layer: int = 2,
    n_head: int = 4, n_head_kv: int = 2, head_dim: int = 8, n_ff: int = 48, window: int = 0,
    swa_pattern: int = 0, seed: int = 0, vocab: bool = False, tied: bool = True,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
) -> Path:
    """A GGUF file of random weights; `vocab` adds a byte-level SentencePiece-style vocabulary."""
    rng = np.random.default_rng(seed)
    extras = ARCH_EXTRAS[arch]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if window:
        w.add_sliding_window(window)
        if swa_pattern:
            w.add_uint32(f"{arch}.attention.sliding_window_pattern", swa_pattern)
    if vocab:
        _add_byte_vocab(w, n_vocab)

    def mat(name, rows, cols, scale=0.3):
        data = (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)
        if qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(data, qtype)
        w.add_tensor(name, data, raw_dtype=qtype)

    def vec(name, size, base=1.0, scale=0.1):
        w.add_tensor(name, (base + scale * rng.standard_normal(size)).astype(np.float32))

    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float32))
    if not tied:
        mat("output.weight", n_vocab, n_embd, scale=3.0)
    vec("output_norm.weight", n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * head_dim, n_embd, 1.0)
        mat(p + "attn_k.weight", n_head_kv * head_dim, n_embd, 1.0)
        mat(p + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(p + "attn_output.weight", n_embd, n_head * head_dim)
        if extras.get("bias"):
            for part, size in (("q", n_head * head_dim), ("k", n_head_kv * head_dim), ("v", n_head_kv * head_dim)):
                vec(p + f"attn_{part}.bias", size, base=0.0)
        if extras.get("qk_norm"):
            vec(p + "attn_q_norm.weight", head_dim)
            vec(p + "attn_k_norm.weight", head_dim)
        if extras.get("post_norms"):
            vec(p + "post_attention_norm.weight", n_embd)
            vec(p + "post_ffw_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_byte_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    """<unk>, <s>, </s>, then byte tokens <0x00>.. and filler words up to n_vocab."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    for b in range(min(256, n_vocab - 3)):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)
    while len(tokens) < n_vocab:
        tokens.append("▁w" + str(len(tokens)))
        types.append(1)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(n_vocab)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
