"""String arrays in GGUF metadata (a vocabulary: 100k+ strings) read in one pass in numba, and
string by string where that pass gives up (a NUL inside a string, a length past the end)."""

import gguf
import pytest

from edgellm.gguf_file import GGUFError, GGUFFile


def _file_with_strings(path, values, patches=()):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("test.strings", values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    for old, new in patches:  # same-length byte patches: strings GGUFWriter cannot write
        assert data.count(old) == 1 and len(old) == len(new)
        data = data.replace(old, new)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("values", [
    ["", "héllo", "東京", "🦙", " ", "<0x0A>", ""],
    ["nul\x00inside", "after", ""],  # the string-by-string path
    ["only"],
])
def test_string_arrays_read_back_as_written(tmp_path, values):
    got = GGUFFile(_file_with_strings(tmp_path / "s.gguf", values)).metadata["test.strings"]
    assert got == values


def test_invalid_utf8_reads_as_it_would_string_by_string(tmp_path):
    """Each string decodes on its own (surrogateescape), even split bytes of one character."""
    path = _file_with_strings(tmp_path / "s.gguf", ["ZZ@", "YY", "ok"],
                              patches=[(b"ZZ@", b"\xe3\x81a"), (b"YY", b"\x81\xff")])
    want = [raw.decode("utf-8", "surrogateescape") for raw in (b"\xe3\x81a", b"\x81\xff", b"ok")]
    assert GGUFFile(path).metadata["test.strings"] == want


def test_a_string_past_the_end_is_named(tmp_path):
    data = _file_with_strings(tmp_path / "s.gguf", ["a", "bb", "tail"]).read_bytes()
    cut = data.index(b"tail") + 2
    (tmp_path / "cut.gguf").write_bytes(data[:cut])
    with pytest.raises(GGUFError, match="truncated or corrupt: a string in test.strings"):
        GGUFFile(tmp_path / "cut.gguf")


def test_a_string_array_too_large_for_int32_offsets_is_refused(tmp_path, monkeypatch):
    """The joined bytes are indexed by int32: an array of 2 GiB or more is refused, not wrapped
    (shown with the limit lowered to 10 bytes, in the kernel's Python form and in from_strings)."""
    from edgellm import gguf_file

    path = _file_with_strings(tmp_path / "s.gguf", ["12345", "67890"])
    assert GGUFFile(path).metadata["test.strings"] == ["12345", "67890"]
    monkeypatch.setattr(gguf_file, "_MAX_BLOB", 10)
    monkeypatch.setattr(gguf_file, "_join_strings", gguf_file._join_strings.py_func)
    with pytest.raises(GGUFError, match="string array test.strings holds more than 9 bytes"):
        GGUFFile(path)
    with pytest.raises(GGUFError, match="more than 9 bytes"):
        gguf_file.StringArray.from_strings(["12345", "67890"])
    assert list(gguf_file.StringArray.from_strings(["1234", "56789"])) == ["1234", "56789"]
