"""The KV cache: incremental evaluation (any chunking, one token at a time) gives the same logits
as one pass over the whole sequence, including past the sliding window, and window layers keep
only their window."""

import numpy as np
import pytest

import edgellm
from tests.tiny_gguf import write_tiny_model


def _incremental_logits(llm, ids, chunks):
    llm.kv_cache.clear()
    out, start = [], 0
    for size in chunks:
        out.append(llm._eval(np.asarray(ids[start : start + size]), all_logits=True))
        start += size
    assert start == len(ids)
    return np.concatenate(out)


# f32: the same arithmetic in any chunking, up to float32 rounding. f16 (the default): prefill
# (NumPy) and decode (the team's kernel) both round the query and the probabilities to f16 as
# llama.cpp does, and a float32 difference can move a value to the neighbouring f16.
@pytest.mark.parametrize("kv_type, tol", [("f32", 2e-4), ("f16", 3e-3)])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_chunked_and_incremental_eval_match_one_pass(tmp_path, arch, kv_type, tol):
    # gemma3 with window 6, pattern 2: layers 0, 2 slide, 1, 3 see everything
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, n_layer=4, window=6 if arch == "gemma3" else 0,
                            swa_pattern=2)
    llm = edgellm.load(path, threads=1, ctx=64, kv_type=kv_type)
    ids = np.random.default_rng(1).integers(0, 64, 23)
    one_pass = llm.logits(ids)
    assert one_pass.shape == (23, 64) and one_pass.dtype == np.float32
    for chunks in ([23], [7, 1, 1, 5, 9], [1] * 23, [10, 13]):
        np.testing.assert_allclose(_incremental_logits(llm, ids, chunks), one_pass, rtol=tol, atol=tol)


def test_sliding_window_changes_what_attention_sees(tmp_path):
    windowed = edgellm.load(write_tiny_model(tmp_path / "w.gguf", "gemma3", window=4, swa_pattern=2), ctx=64)
    full = edgellm.load(write_tiny_model(tmp_path / "f.gguf", "gemma3", window=0), ctx=64)
    ids = np.arange(12) % 64
    a, b = windowed.logits(ids), full.logits(ids)
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-5, atol=1e-5)  # inside the window: identical
    assert not np.allclose(a[4:], b[4:], atol=1e-3)  # past it: different


def test_window_layers_keep_only_their_window(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=4, window=6, swa_pattern=2), ctx=64)
    capacities = [layer.capacity for layer in llm.kv_cache.layers]
    assert capacities == [6, 64, 6, 64]
    llm.logits(np.arange(30) % 64)
    held = sorted(llm.kv_cache.layers[0].pos.tolist())
    assert held == list(range(24, 30))  # the last 6 positions


def test_context_overflow_is_an_error(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "l.gguf"), ctx=8)
    with pytest.raises(edgellm.errors.EdgeLLMError, match="context"):
        llm.logits(np.zeros(9, np.int64))
