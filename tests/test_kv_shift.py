"""Context shift, rollback and 8/16-bit storage of the KV cache.

A context shift keeps positions [0, n_keep), drops the next n_discard and slides the rest down,
re-rotating the cached keys. In a one-layer model a token's K/V depend only on the token and its
position, so after the shift the cache must equal a fresh evaluation of the kept tokens at their
new positions, and so must the next token's logits. In deeper models the kept tokens' K/V still
carry what they saw of the dropped ones (as in llama.cpp); there the first layer is checked.
"""

import numpy as np
import pytest

import edgellm
from edgellm.kv_cache import KVCache
from tests.tiny_gguf import write_tiny_model

N_KEEP, N_DISCARD = 4, 18


def _shifted_and_fresh(llm, ids, next_token):
    """Logits for next_token after [ids] shifted by (N_KEEP, N_DISCARD), and after a fresh pass."""
    llm.logits(ids)
    llm.shift_context(N_KEEP, N_DISCARD)
    assert llm.kv_cache.n_past == len(ids) - N_DISCARD
    shifted = llm._eval(np.array([next_token]), all_logits=False)[-1]
    kept = np.concatenate([ids[:N_KEEP], ids[N_KEEP + N_DISCARD :], [next_token]])
    return shifted, llm.logits(kept)[-1]


# llama rotates adjacent pairs, qwen2 and gemma3 rotate halves; gemma3's only layer slides (window 8)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_shift_equals_fresh_evaluation_at_new_positions(tmp_path, arch):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, n_layer=1, window=8 if arch == "gemma3" else 0,
                            swa_pattern=2)
    llm = edgellm.load(path, threads=1, ctx=48, kv_type="f32")
    ids = np.random.default_rng(0).integers(0, 64, 40)
    shifted, fresh = _shifted_and_fresh(llm, ids, next_token=7)
    # float32 arithmetic; rotating by p then by -18 is one rotation by p - 18 up to rounding
    np.testing.assert_allclose(shifted, fresh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_type, tol", [("f16", 2e-3), ("q8_0", 3e-2)])
def test_shift_with_quantized_storage(tmp_path, kv_type, tol):
    # the shifted keys are dequantized, rotated and quantized again: within the storage's rounding
    path = write_tiny_model(tmp_path / "q.gguf", "qwen2", n_layer=1, head_dim=32, n_embd=64)
    llm = edgellm.load(path, threads=1, ctx=48, kv_type=kv_type)
    shifted, fresh = _shifted_and_fresh(llm, np.random.default_rng(1).integers(0, 64, 40), next_token=5)
    np.testing.assert_allclose(shifted, fresh, atol=tol * np.abs(fresh).max())


def test_shift_moves_first_layer_keys_of_the_real_model(model_path, reference):
    llm = edgellm.load(model_path, threads=None, ctx=64, kv_type="f32")
    ids = np.asarray(reference["teacher"][0]["ids"][:60])
    llm.logits(ids)
    llm.shift_context(N_KEEP, N_DISCARD)
    kept = np.concatenate([ids[:N_KEEP], ids[N_KEEP + N_DISCARD :]])
    layer = llm.kv_cache.layers[0]  # a sliding-window layer (RoPE base 10k), window > context here
    shifted = {int(p): layer.k.read()[:, s].copy() for s, p in enumerate(layer.pos) if p >= 0}
    llm.logits(kept)
    fresh = {int(p): layer.k.read()[:, s] for s, p in enumerate(layer.pos) if p >= 0}
    assert sorted(shifted) == sorted(fresh) == list(range(len(kept)))
    for p in fresh:
        np.testing.assert_allclose(shifted[p], fresh[p], rtol=1e-4, atol=1e-4 * np.abs(fresh[p]).max())


def test_shift_keeps_window_layers_in_their_ring(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=2, window=6, swa_pattern=2), ctx=32)
    llm.logits(np.arange(30) % 64)
    llm.shift_context(4, 13)
    window, full = llm.kv_cache.layers
    assert sorted(window.pos[window.pos >= 0].tolist()) == list(range(11, 17))  # old 24..29
    assert full.pos[:17].tolist() == list(range(17)) and (full.pos[17:] == -1).all()
    for layer in (window, full):
        assert all(layer.pos[s] % layer.capacity == s for s in np.flatnonzero(layer.pos >= 0))


@pytest.mark.parametrize("window, n_common", [(0, 20), (16, 22)])  # a full ring rolls back 1 token
def test_rollback_then_continue_equals_one_pass(tmp_path, window, n_common):
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=2, window=window, swa_pattern=2)
    llm = edgellm.load(path, ctx=64)
    ids = np.random.default_rng(2).integers(0, 64, 30)
    expected = llm.logits(ids)[-1]
    llm.logits(np.concatenate([ids[:n_common], [1, 2, 3][: 23 - n_common]]))  # a different ending
    assert llm.kv_cache.truncate(n_common)
    np.testing.assert_allclose(llm._eval(ids[n_common:], all_logits=False)[-1], expected, rtol=1e-5, atol=1e-5)


def test_rollback_past_an_overwritten_window_entry_is_refused(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=2, window=8, swa_pattern=2), ctx=64)
    llm.logits(np.arange(30) % 64)
    assert llm.kv_cache.truncate(29)  # the window still holds positions 22..28
    assert not llm.kv_cache.truncate(25)  # position 18..21 were overwritten by 26..29
    assert llm.kv_cache.n_past == 0 and all((layer.pos == -1).all() for layer in llm.kv_cache.layers)


def test_a_window_margin_only_lets_the_cache_roll_back_further(tmp_path):
    llm = edgellm.load(write_tiny_model(tmp_path / "g.gguf", "gemma3", n_layer=2, window=6, swa_pattern=2), ctx=64)
    ids = np.random.default_rng(3).integers(0, 64, 30)
    plain = llm.logits(ids)
    assert not llm.kv_cache.truncate(22)
    llm.set_context(64, swa_margin=10)
    assert [layer.capacity for layer in llm.kv_cache.layers] == [16, 64]
    np.testing.assert_allclose(llm.logits(ids), plain, rtol=1e-5, atol=1e-5)  # attention still sees 6
    assert llm.kv_cache.truncate(22)  # 8 back: positions 17..21 are still in the ring
    np.testing.assert_allclose(llm._eval(ids[22:], all_logits=True), plain[22:], rtol=1e-5, atol=1e-5)


def test_kv_type_memory(llm):
    sizes = {t: KVCache(llm.hparams, 1024, t).nbytes for t in ("f32", "f16", "q8_0")}
    assert sizes["f16"] * 2 == sizes["f32"]
    assert sizes["q8_0"] * 32 == sizes["f16"] * 17  # 34 bytes per 32 values against 64


@pytest.mark.slow
@pytest.mark.parametrize("kv_type, floor", [("f16", 0.95), ("q8_0", 0.93)])
def test_teacher_forced_top1_with_small_kv(model_path, reference, kv_type, floor):
    """Against llama.cpp's argmax over 512 positions (f32 KV: see test_reference.py)."""
    teacher = reference["teacher"][0]
    llm = edgellm.load(model_path, ctx=len(teacher["ids"]), kv_type=kv_type)
    agreement = np.mean(llm.logits(teacher["ids"]).argmax(-1) == np.asarray(teacher["argmax"]))
    print(f"{kv_type} KV: teacher-forced top-1 agreement {agreement:.4f}")
    assert agreement >= floor


def test_unknown_kv_type_is_an_error(tmp_path):
    with pytest.raises(edgellm.errors.EdgeLLMError, match="q8_0"):
        edgellm.load(write_tiny_model(tmp_path / "l.gguf"), kv_type="q4")
