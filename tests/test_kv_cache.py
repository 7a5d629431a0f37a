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


def test_a_long_batch_runs_as_passes_of_at_most_ubatch_tokens(tmp_path, monkeypatch):
    """llama.cpp's n_ubatch: the activations of one pass stay those of UBATCH tokens, whatever
    the batch; the logits are what one pass gives, and only the last part's are computed when
    only the last token's are asked for."""
    from edgellm import llm as llm_module

    # f32 cache: a last part of <= FEW_QUERIES tokens attends through the decode kernel
    llm = edgellm.load(write_tiny_model(tmp_path / "u.gguf", "llama", n_layer=2), threads=1, ctx=64, kv_type="f32")
    ids = np.random.default_rng(2).integers(0, 64, 23)
    one_pass = llm.logits(ids)  # one pass: 23 tokens < UBATCH
    monkeypatch.setattr(llm_module, "UBATCH", 5)
    passes = []
    forward = llm.model.forward
    monkeypatch.setattr(llm.model, "forward", lambda t, p, c, which: passes.append((len(t), which)) or forward(t, p, c, which))
    np.testing.assert_allclose(llm.logits(ids), one_pass, rtol=2e-4, atol=2e-4)
    assert passes == [(5, "all")] * 4 + [(3, "all")]
    passes.clear()
    llm.kv_cache.clear()
    last = llm._eval(ids, all_logits=False)
    assert passes == [(5, "none")] * 4 + [(3, "last")] and llm.kv_cache.n_past == 23
    np.testing.assert_allclose(last, one_pass[-1:], rtol=2e-4, atol=2e-4)


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


def test_a_window_layer_attends_to_its_own_slots_until_the_ring_wraps():
    """Before its first wrap a window layer holds position p in slot p, like a full layer: a
    batch attends to the cache's used prefix itself (no copy of the old entries plus the batch),
    the same keys in the same order; the batch that wraps the ring still gets old + batch."""
    from edgellm.kv_cache import LayerKVCache

    rng = np.random.default_rng(4)
    layer = LayerKVCache(1, 8, 8, capacity=10, window=6, kv_type="f16")
    batches = [np.arange(0, 4), np.arange(4, 10), np.arange(10, 13)]
    k_all = rng.standard_normal((13, 1, 8)).astype(np.float32)
    v_all = rng.standard_normal((13, 1, 8)).astype(np.float32)
    for positions in batches:
        old = np.flatnonzero(layer.pos >= 0)
        k, v = k_all[positions], v_all[positions]
        want_k = np.concatenate([layer.k.view(old), layer.k.as_stored(k.transpose(1, 0, 2))], axis=1)
        want_pos = np.concatenate([layer.pos[old], positions])
        keys, values, key_pos = layer.update(k, v, positions)
        np.testing.assert_array_equal(keys, want_k)
        np.testing.assert_array_equal(key_pos, want_pos)
        np.testing.assert_array_equal(values[:, -len(positions):], layer.v.as_stored(v.transpose(1, 0, 2)))
        assert np.shares_memory(keys, layer.k.data) == (positions[-1] < layer.capacity)


def test_context_overflow_is_an_error(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "l.gguf"), ctx=8)
    with pytest.raises(edgellm.errors.EdgeLLMError, match="context"):
        llm.logits(np.zeros(9, np.int64))
