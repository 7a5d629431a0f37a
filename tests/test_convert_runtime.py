"""Converted tiny checkpoints run in edgellm and give transformers' logits: the converter's names,
layouts and metadata mean the same to the runtime as the weights meant to transformers."""

from __future__ import annotations

import numpy as np
import pytest
from test_convert_checkpoints import ARCHS, checkpoints, torch, transformers  # noqa: F401 (fixture)

import edgellm
from edgellm.converters import convert

# (top-1 agreement at least, mean KL(transformers || edgellm) below). The random tiny models have
# nearly flat logits, so quantized files are held to KL only.
BOUNDS = {"f32": (0.98, 1e-6), "f16": (0.98, 1e-5), "q8_0": (0.0, 1e-3)}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def reference(checkpoints):
    """reference(arch) -> (ids, transformers' float32 logits [len(ids), n_vocab])."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[arch], dtype=torch.float32)
            # 48 tokens: longer than gemma3's sliding window of 4, so both attention kinds count
            ids = np.random.default_rng(1).integers(0, model.config.vocab_size, 48)
            with torch.no_grad():
                cache[arch] = ids, model(torch.tensor(ids)[None]).logits[0].numpy()
        return cache[arch]

    return get


@pytest.mark.parametrize("type", list(BOUNDS))
@pytest.mark.parametrize("arch", ARCHS)
def test_edgellm_logits_match_transformers(checkpoints, reference, tmp_path, arch, type):
    ids, want = reference(arch)
    out = convert(checkpoints[arch], tmp_path / f"{arch}-{type}.gguf", type=type, progress=False)
    got = edgellm.load(out, threads=2).logits(ids)
    assert got.shape == want.shape
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    p, q = log_softmax(want), log_softmax(got)
    kl = (np.exp(p) * (p - q)).sum(-1).mean()
    min_top1, max_kl = BOUNDS[type]
    assert top1 >= min_top1 and kl < max_kl, f"top-1 {top1:.3f}, KL {kl:.2e}"


def test_tied_embeddings_run_with_token_embd_as_the_output(tmp_path):
    from test_convert_checkpoints import make_checkpoint

    folder = make_checkpoint(tmp_path / "tied", "qwen3", tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = np.arange(1, 33)
    with torch.no_grad():
        want = model(torch.tensor(ids)[None]).logits[0].numpy()
    # f32 weights and an f32 KV cache: float32 arithmetic throughout, as transformers'
    got = edgellm.load(convert(folder, tmp_path / "tied.gguf", type="f32", progress=False), threads=2,
                       kv_type="f32").logits(ids)
    assert np.allclose(got, want, atol=1e-4)
