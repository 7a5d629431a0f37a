"""Perplexity's pieces: logits from a start position (the scored half only) and the per-token
NLL taken a few rows at a time give what the whole arrays give."""

import numpy as np
import pytest

import edgellm
from edgellm.errors import EdgeLLMError
from edgellm.perplexity import log_softmax, token_nll
from tests.tiny_gguf import write_tiny_model


def test_logits_from_a_start_position_are_the_tail_of_all_logits(tmp_path):
    # f32 cache: the passes differ in length, and the prefill attention's BLAS products may round
    # differently for other shapes
    llm = edgellm.load(write_tiny_model(tmp_path / "p.gguf", "gemma3", n_layer=2), threads=1, ctx=64, kv_type="f32")
    ids = np.random.default_rng(4).integers(0, 64, 30)
    every = llm.logits(ids)
    np.testing.assert_allclose(llm.logits(ids, start=12), every[12:], rtol=2e-4, atol=2e-4)
    assert llm.logits(ids, start=30).shape == (0, 64)
    with pytest.raises(EdgeLLMError, match="start"):
        llm.logits(ids, start=31)


def test_token_nll_in_blocks_is_the_whole_array_computation():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((70, 1000)).astype(np.float32) * 4
    targets = rng.integers(0, 1000, 70)
    whole = -log_softmax(logits.astype(np.float64))[np.arange(70), targets]
    np.testing.assert_array_equal(token_nll(logits, targets, rows=32), whole)
