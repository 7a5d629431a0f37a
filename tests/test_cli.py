"""The command line on the real bundled model: what a user types and sees."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgellm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_run_streams_text_and_reports_speed(reference):
    case = reference["greedy"][2]  # a prompt whose greedy continuation has no near-ties
    result = _cli("run", "-p", case["prompt"], "-n", "8", "--temp", "0")
    assert result.returncode == 0, result.stderr
    streamed = result.stdout[:-1]  # the run ends its output with a newline
    assert streamed and case["text"].startswith(streamed)
    assert "[ prompt:" in result.stderr and "tok/s | generation:" in result.stderr


def test_run_json(reference):
    case = reference["greedy"][2]
    result = _cli("run", "-p", case["prompt"], "-n", "8", "--temp", "0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["prompt_tokens"] == len(case["prompt_ids"])
    assert out["tokens"] == case["ids"][:8]
    assert out["text"] == case["text"][: len(out["text"])] and out["text"]
    for key in ("ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"):
        assert out[key] > 0, key


def test_same_seed_same_text():
    runs = [json.loads(_cli("run", "-p", "Write a poem", "-n", "12", "--seed", "42", "--json").stdout)["tokens"]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_tokenize(model_path, reference):
    case = reference["tokenize_special"][0]
    result = _cli("tokenize", model_path, case["text"], "--special")
    assert json.loads(result.stdout) == case["ids"]
    result = _cli("tokenize", model_path, "Hello world", "--no-bos")
    assert json.loads(result.stdout) == [9259, 1902]


def test_info_names_the_model():
    result = _cli("info")
    assert result.returncode == 0, result.stderr
    assert "gemma3" in result.stdout and "Q4_K" in result.stdout and "32768" in result.stdout


def test_perplexity_needs_enough_text(model_path, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    result = _cli("perplexity", model_path, "-f", short)
    assert result.returncode == 2 and "needs at least 1024" in result.stderr


_PARSE_THEN_REPORT = """
import json, sys
from edgellm.cli import build_parser
build_parser().parse_args(["run", "-p", "Hi"])
light = {"edgellm.converters.cli", "edgellm.converters.errors", "edgellm.converters.options"}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("gguf", "numba", "tqdm")
                        or (m.startswith("edgellm.converters.") and m not in light))))
"""


def test_the_command_line_is_parsed_without_loading_the_converter():
    """Every command's flags are known before the command runs, convert's too: they come from
    converters/options.py, so that a run does not hold the converter and the gguf package it
    never uses (3 MiB of its memory)."""
    out = subprocess.run([sys.executable, "-c", _PARSE_THEN_REPORT], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout) == []


def test_the_converters_flags_name_what_the_converter_and_the_runtime_take():
    """options.py's names, checked against the modules that act on them."""
    from edgellm import sparse
    from edgellm.converters import options, quantize, sparsity

    assert options.SPARSE_LAYOUTS == sparse.LAYOUTS == sparsity.LAYOUTS
    assert tuple(quantize.OUTPUT_TYPES) == options.OUTPUT_TYPES
    assert quantize.OUTPUT_TYPES["q4_0"][1].name == "MOSTLY_Q4_0"
    assert set(quantize.EMBEDDING_TYPES) <= set(options.OUTPUT_TYPES)
