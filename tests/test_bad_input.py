"""Bad model files and arguments: one line naming the problem, exit status 2, no traceback.

Each corruption is made from a valid tiny GGUF by overwriting one field, so the test knows
exactly which check must catch it.
"""

import os
import struct
import subprocess
import sys

import gguf
import pytest

from edgellm.gguf_file import GGUFError, GGUFFile
from tests.tiny_gguf import write_tiny_model


@pytest.fixture
def good(tmp_path):
    return write_tiny_model(tmp_path / "good.gguf", vocab=True, n_vocab=300).read_bytes()


def _write(tmp_path, data: bytes, name="bad.gguf"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _tensor_info_offset(data: bytes, name: str) -> int:
    """Offset just after a tensor's name in the tensor-info table (n_dims follows)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.rfind(key)
    assert at > 0
    return at + len(key)


def _run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgellm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def _assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


CORRUPTIONS = {
    # name: (how to corrupt the good bytes, words the message must contain)
    "empty": (lambda d: b"", "bytes"),
    "bad magic": (lambda d: b"GGML" + d[4:], "magic"),
    "version 1": (lambda d: _patch(d, 4, "<I", 1), "version 1"),
    "version 99": (lambda d: _patch(d, 4, "<I", 99), "version 99"),
    "big endian": (lambda d: _patch(d, 4, ">I", 3), "big-endian"),
    "absurd tensor count": (lambda d: _patch(d, 8, "<Q", 1 << 60), "corrupt"),
    "absurd kv count": (lambda d: _patch(d, 16, "<Q", 1 << 50), "corrupt"),
    "absurd key length": (lambda d: _patch(d, 24, "<Q", 1 << 62), "truncated or corrupt"),
    "truncated header": (lambda d: d[:200], "truncated or corrupt"),
    "truncated data": (lambda d: d[: len(d) - 100], "past the end"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_file_is_a_clear_error(tmp_path, good, case):
    corrupt, word = CORRUPTIONS[case]
    path = _write(tmp_path, corrupt(good))
    with pytest.raises(GGUFError, match=word):
        GGUFFile(path)
    _assert_one_line_error(_run_cli("info", path), word)


def test_absurd_array_count(tmp_path, good):
    key = b"tokenizer.ggml.tokens"
    at = good.find(key) + len(key) + 4 + 4  # past the value type and the element type
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        GGUFFile(_write(tmp_path, _patch(good, at, "<Q", 1 << 40)))


def test_tensor_offset_past_end(tmp_path, good):
    at = _tensor_info_offset(good, "token_embd.weight") + 4 + 2 * 8 + 4
    with pytest.raises(GGUFError, match="past the end"):
        GGUFFile(_write(tmp_path, _patch(good, at, "<Q", 1 << 40)))


def test_unknown_tensor_type(tmp_path, good):
    at = _tensor_info_offset(good, "token_embd.weight") + 4 + 2 * 8
    with pytest.raises(GGUFError, match="unknown ggml type 99"):
        GGUFFile(_write(tmp_path, _patch(good, at, "<I", 99)))


def test_too_many_dimensions(tmp_path, good):
    at = _tensor_info_offset(good, "token_embd.weight")
    with pytest.raises(GGUFError, match="dimensions"):
        GGUFFile(_write(tmp_path, _patch(good, at, "<I", 7)))


def test_absurd_dimension(tmp_path, good):
    at = _tensor_info_offset(good, "token_embd.weight") + 4 + 8
    with pytest.raises(GGUFError, match="shape|past the end"):
        GGUFFile(_write(tmp_path, _patch(good, at, "<Q", 1 << 62)))


def test_unknown_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    _assert_one_line_error(_run_cli("run", tmp_path / "mamba.gguf", "-p", "hi"), "unsupported architecture 'mamba'")


def test_missing_tensor(tmp_path):
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "partial.gguf"), "llama")
    for key, value in (("context_length", 64), ("embedding_length", 8), ("block_count", 1),
                       ("feed_forward_length", 8), ("attention.head_count", 2)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    _assert_one_line_error(_run_cli("run", tmp_path / "partial.gguf", "-p", "hi"), "missing tensor output_norm.weight")


def test_missing_file():
    _assert_one_line_error(_run_cli("info", "/nonexistent/model.gguf"), "no such file")


def test_directory_instead_of_file(tmp_path):
    _assert_one_line_error(_run_cli("info", tmp_path), "directory")


def test_bad_flag_values(tmp_path, good):
    path = _write(tmp_path, good, "ok.gguf")
    _assert_one_line_error(_run_cli("run", path, "-p", "hi", "--top-p", "0"), "top-p")
    _assert_one_line_error(_run_cli("run", path, "-p", "hi", "-t", "0"), "threads")
    _assert_one_line_error(_run_cli("run", path, "-p", "hi", "-n", "x"), "invalid int")


def test_a_bad_flag_on_a_fresh_install_is_one_line_too(tmp_path, good):
    """A fresh install says "compiling kernels" once the model has loaded: the flags are checked
    before, so that the error is still the only line (and nothing compiles)."""
    path = _write(tmp_path, good, "ok.gguf")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    for flag, value, word in (("--top-p", "0", "top-p"), ("--temp", "-1", "temperature"),
                              ("--min-p", "2", "min-p"), ("--repeat-penalty", "0", "repeat penalty")):
        _assert_one_line_error(_run_cli("run", path, "-p", "hi", flag, value, env=env), word)
