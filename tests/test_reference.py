"""The real bundled model (Gemma-3-270M Q4_K_M) against llama.cpp's own outputs on it
(../shared/reference, made with llama-cpp-python 0.3.36; its README says how)."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from edgellm.perplexity import log_softmax

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(reference):
    return reference["teacher"][0]


@pytest.fixture(scope="module")
def teacher_logits(llm, teacher):
    return llm.logits(teacher["ids"])


def test_teacher_forced_top1_agrees_with_llama_cpp(teacher, teacher_logits):
    agreement = np.mean(teacher_logits.argmax(-1) == np.asarray(teacher["argmax"]))
    assert agreement >= 0.95, f"top-1 agreement {agreement:.3f}"


def test_teacher_forced_perplexity_within_1_percent(teacher, teacher_logits):
    ids = np.asarray(teacher["ids"])
    logp = log_softmax(teacher_logits[:-1].astype(np.float64))
    next_logp = logp[np.arange(len(ids) - 1), ids[1:]]
    ppl = math.exp(-next_logp.mean())
    assert abs(ppl / teacher["ppl_all"] - 1) < 0.01, f"ppl {ppl:.4f} vs llama.cpp {teacher['ppl_all']:.4f}"
    # and position by position the log-probs stay close to llama.cpp's
    assert np.median(np.abs(next_logp - np.asarray(teacher["next_logp"]))) < 0.05


def _greedy_16(llm, case):
    assert llm.tokenize(case["prompt"], bos=True, special=True) == case["prompt_ids"]
    list(llm.generate(case["prompt"], max_tokens=16, temperature=0.0, stop_at_eos=False))
    return llm.last_stats.tokens


def test_greedy_continuations_differ_only_at_near_ties(llm, reference):
    """Where our greedy path leaves llama.cpp's, llama.cpp's token was within 0.1 logit of ours:
    a quantization-noise tie, not a modelling error."""
    for case in reference["greedy"]:
        ours, theirs = _greedy_16(llm, case), case["ids"][:16]
        if ours == theirs:
            continue
        split = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        logits = llm.logits(case["prompt_ids"] + theirs[:split])[-1]
        assert logits[ours[split]] - logits[theirs[split]] < 0.1, (case["prompt"], split)


def test_greedy_continuations_match_llama_cpp(llm, reference):
    """The core issue's check. It holds because the decode mat-vecs quantize x as llama.cpp
    does (Q8_0 blocks with an f16 scale for legacy weights, Q8_K blocks for K-quants): with a
    float32 scale per 32 values for every type, 1 of the 4 continuations matched, the others
    leaving at near-ties (benchmarks/llama_cpp_numerics.py measures which roundings matter).
    Near-ties decide it either way: llama.cpp itself, with plain instead of repacked weight
    buffers, matches 3 of its own 4; Q8_0 rows rounded as llama.cpp's integer dot does give 2/4
    (benchmarks/README.md, "Correction (2026-12-03)"). Every x86 path computes the same bits
    (test_kernels.py::test_every_kernel_path_computes_the_same_bits), so the count is the same on
    any x86 CPU."""
    matches = [_greedy_16(llm, case) == case["ids"][:16] for case in reference["greedy"]]
    assert sum(matches) >= 3, f"first 16 greedy tokens identical for {matches}"


def test_perplexity_cli_matches_llama_perplexity(model_path, reference_dir):
    result = subprocess.run(
        [sys.executable, "-m", "edgellm.cli", "perplexity", str(model_path), "-f",
         str(reference_dir / "texts" / "GPL-3.txt"), "-c", "512"],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    ppl, err = map(float, re.search(r"PPL = ([\d.]+) ± ([\d.]+)", result.stdout).groups())
    assert abs(ppl / 13.9062 - 1) < 0.01, result.stdout
    assert abs(err / 0.648 - 1) < 0.1, result.stdout
