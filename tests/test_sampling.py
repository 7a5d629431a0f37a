"""Sampling: each filter keeps exactly what llama.cpp's would, and a seed fixes the draw."""

import numpy as np
import pytest

from edgellm.errors import EdgeLLMError
from edgellm.sampling import Sampler, SamplingParams

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))  # probabilities at temp 1


def _support(**kw):
    """The set of tokens a sampler ever draws from LOGITS."""
    params = SamplingParams(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw})
    sampler = Sampler(params)
    return {sampler(LOGITS, []) for _ in range(2000)}


def test_greedy_is_argmax():
    assert Sampler(SamplingParams(temperature=0.0))(LOGITS[::-1], []) == 4


def test_no_filters_draw_everything():
    assert _support() == {0, 1, 2, 3, 4}


def test_top_k():
    assert _support(top_k=2) == {0, 1}


def test_top_p_keeps_smallest_set_reaching_p():
    assert _support(top_p=0.7) == {0, 1}  # 0.5 + 0.2 reaches 0.7
    assert _support(top_p=0.71) == {0, 1, 2}


def test_min_p_relative_to_best():
    assert _support(min_p=0.29) == {0, 1, 2}  # 0.15 >= 0.29 * 0.5, 0.1 is not


def test_repeat_penalty_divides_positive_logits():
    logits = np.array([2.0, 1.9, -1.0], np.float32)
    greedy = Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.2))
    assert greedy(logits, []) == 0
    assert greedy(logits, [0]) == 1  # 2.0 / 1.2 < 1.9
    assert greedy(logits, [0, 1]) == 0  # both penalized: 1.667 > 1.583


def test_same_seed_same_draws():
    params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = Sampler(SamplingParams(**params, seed=7))
    b = Sampler(SamplingParams(**params, seed=7))
    c = Sampler(SamplingParams(**params, seed=8))
    draws = lambda s: [s(LOGITS, []) for _ in range(50)]
    first = draws(a)
    assert first == draws(b)
    assert first != draws(c)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2),
                                 dict(repeat_penalty=0)])
def test_bad_parameters(bad):
    with pytest.raises(EdgeLLMError):
        Sampler(SamplingParams(**bad))
