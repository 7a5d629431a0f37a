"""llama.cpp loads and runs what `edgellm convert` writes: the reference the converter's names,
layouts and metadata are meant for. Needs llama-cpp-python (the optional `bench` extra, compiled
from source, ~20 min on 2 cores), so it is a check run by hand, not part of the test suite:

    pip install -e '.[test,bench]' && python -m pytest benchmarks/llama_cpp_converted.py -q -s
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import pytest
from test_convert_checkpoints import (  # noqa: F401 (checkpoints is a fixture)
    ARCHS, checkpoints, ggml_quantize, llama_cpp_model, make_checkpoint, spm, torch, transformers,
)

from edgellm.converters import convert

import llama_cpp  # noqa: E402,F401  (fails loudly when the bench extra is missing)

TEXT = "Hello world! The converter writes 3 files, 12.5% smaller; naïve café, 東京, emoji 🦙 and tabs\tend."


def llama_cpp_logits(path, ids) -> np.ndarray:
    llm = llama_cpp_model(path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                          type_k=0, type_v=0)  # an F32 KV cache, not F16
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("type", ["f32", "q8_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_logits_match_transformers(checkpoints, tmp_path, arch, type):
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[arch], dtype=torch.float32)
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, 40)
    with torch.no_grad():
        want = model(torch.tensor(ids)[None]).logits[0].numpy()
    got = llama_cpp_logits(convert(checkpoints[arch], tmp_path / "m.gguf", type=type, progress=False), ids)
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    error = np.abs(got - want).max() / np.abs(want).max()
    print(f"{arch} {type}: top-1 {top1:.3f}, max error {error:.1e} of the largest logit")
    if type == "f32":  # not exact: ggml's GELU reads an f16 table, its RoPE differs in rounding
        assert top1 >= 0.98 and error < 1e-2
    else:  # llama.cpp also quantizes activations to 8 bits; the flat random logits allow flips
        assert error < 0.1


def test_llama_cpp_tokenizes_a_sentencepiece_conversion_like_sentencepiece(checkpoints, tmp_path):
    out = convert(checkpoints["llama"], tmp_path / "spm.gguf", type="q8_0", progress=False)
    llm = llama_cpp_model(out, vocab_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(checkpoints["llama"] / "tokenizer.model"))
    text = "the quick brown fox writes one file that a runtime can map"
    assert llm.tokenize(text.encode(), add_bos=False) == sp.encode(text)
    assert llm.tokenize(text.encode(), add_bos=True)[0] == sp.bos_id()


def test_llama_cpp_tokenizes_a_bpe_conversion_like_tokenizers(tmp_path):
    from tokenizers import Tokenizer

    folder = make_checkpoint(tmp_path / "hf", "llama", tokenizer="llama3")
    out = convert(folder, tmp_path / "bpe.gguf", type="q8_0", progress=False)
    llm = llama_cpp_model(out, vocab_only=True)
    want = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT).ids  # with BOS
    assert llm.tokenize(TEXT.encode(), add_bos=True) == want



@pytest.mark.parametrize("type", ["q8_0", "q4_0"])
def test_llama_cpp_runs_the_2_4_dense_layout_like_edgellm_runs_the_compact_one(checkpoints, tmp_path, type):
    """--sparse-layout dense is standard Q4_0/Q8_0 with the pruned zeros in place: llama.cpp loads
    it and predicts what edgellm predicts from the compact file of the same pruned weights."""
    import edgellm

    folder = checkpoints["llama"]
    kw = dict(type=type, sparsity="2:4", method="magnitude", progress=False)
    dense = convert(folder, tmp_path / "dense.gguf", sparse_layout="dense", **kw)
    compact = convert(folder, tmp_path / "compact.gguf", sparse_layout="compact", **kw)
    ids = np.random.default_rng(3).integers(0, 200, 40)
    got = llama_cpp_logits(dense, ids)
    want = edgellm.load(compact, threads=2, ctx=64).logits(list(map(int, ids)))
    error = np.abs(got - want).max() / np.abs(want).max()
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"2:4 {type}: llama.cpp on the dense layout vs edgellm on the compact one: top-1 {top1:.3f}, "
          f"max error {error:.1e} of the largest logit")
    assert error < 0.1  # llama.cpp quantizes activations to 8 bits; flat random logits allow flips


@pytest.mark.parametrize("type", ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0"])
def test_converted_blocks_equal_ggml_reference_quantizers(checkpoints, tmp_path, type):
    from gguf import GGMLQuantizationType as Q
    from test_convert_checkpoints import expected_hf_values, hf_tensors, read_config

    from edgellm.gguf_file import GGUFFile

    folder = checkpoints["gemma3"]
    out = GGUFFile(convert(folder, tmp_path / "g.gguf", type=type, progress=False))
    hf, cfg = hf_tensors(folder), read_config(folder)
    for name, t in out.tensors.items():
        if t.ggml_type != Q.F32:
            assert t.data.tobytes() == ggml_quantize(expected_hf_values("gemma3", name, hf, cfg), t.ggml_type), name


# The real Gemma-3-270M round trip (fixtures shared with tests/test_convert_roundtrip.py).
from conftest import model_path, reference, reference_dir  # noqa: E402,F401
from test_convert_roundtrip import converted, hf_checkpoint, original  # noqa: E402,F401


def test_llama_cpp_tokenizes_the_converted_file_like_the_original(converted, reference):
    llm = llama_cpp_model(converted["q8_0"], vocab_only=True)
    for case in reference["tokenize"]:
        assert llm.tokenize(case["text"].encode(), add_bos=True, special=False) == case["ids"], case["text"]
    for case in reference["tokenize_special"]:
        assert llm.tokenize(case["text"].encode(), add_bos=True, special=True) == case["ids"], case["text"]


def test_llama_cpp_predicts_with_the_converted_file_like_with_the_original(converted, reference):
    teacher = reference["teacher"][0]
    ids = teacher["ids"][:128]
    llm = llama_cpp_model(converted["f16"], n_ctx=128, n_batch=128, logits_all=True, n_threads=2)
    llm.eval(ids)
    agree = (np.array(llm.scores[: len(ids)]).argmax(-1) == np.array(teacher["argmax"][: len(ids)])).mean()
    print(f"llama.cpp, f16 conversion vs the original Q4_K_M: top-1 agreement {agree:.3f}")
    assert agree >= 0.9
