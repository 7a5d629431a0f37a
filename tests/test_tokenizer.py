"""The SentencePiece-style tokenizer on the real gemma3 vocabulary, against llama.cpp's own ids.

Every expectation comes from the reference llama.cpp produced on the bundled model
(shared/reference, see its README), or is a llama.cpp rule checked on a case that exercises it.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgellm.gguf_file import GGUFError, GGUFFile
from edgellm.tokenizer import Tokenizer

BOS, EOS, END_OF_TURN, START_OF_TURN = 2, 1, 106, 105


@pytest.fixture(scope="module")
def metadata(model_path):
    return GGUFFile(model_path).metadata


@pytest.fixture(scope="module")
def tok(metadata) -> Tokenizer:
    return Tokenizer.from_metadata(metadata)


def _mismatches(cases, encode):
    return [(c["text"], encode(c["text"]), c["ids"]) for c in cases if encode(c["text"]) != c["ids"]]


def test_encode_matches_llama_cpp(tok, reference):
    assert len(reference["tokenize"]) == 12
    assert _mismatches(reference["tokenize"], tok.encode) == []


def test_encode_with_special_parses_control_tokens_like_llama_cpp(tok, reference):
    cases = reference["tokenize_special"]
    assert _mismatches(cases, lambda text: tok.encode(text, special=True)) == []
    assert cases[0]["ids"][:2] == [BOS, START_OF_TURN]


def test_control_tokens_are_plain_text_without_special(tok):
    assert tok.encode("<start_of_turn>", special=True) == [BOS, START_OF_TURN]
    assert tok.encode("<start_of_turn>") == [BOS, 236820, 3041, 236779, 1340, 236779, 887, 236813]


def test_user_defined_tokens_are_always_whole(tok):
    # "\n\n" (108) and four spaces (140) are user-defined in gemma3: matched even with special=False.
    assert tok.encode("a\n\nb", bos=False) == [236746, 108, 236763]
    assert tok.encode("    return", bos=False) == [140, 2060]


def test_greedy_prompts_encode_and_continuations_decode(tok, reference):
    for case in reference["greedy"]:
        assert tok.encode(case["prompt"]) == case["prompt_ids"]
        assert tok.decode(case["ids"]) == case["text"]


def test_long_text_starts_with_llama_cpp_ids(tok, reference, reference_dir):
    teacher = reference["teacher"][0]
    text = (reference_dir / teacher["text_file"]).read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert len(teacher["ids"]) == 512
    assert ids[:512] == teacher["ids"]
    assert tok.decode(ids) == text


def test_characters_outside_the_vocab_fall_back_to_byte_tokens(tok):
    ids = tok.encode("\U0010FFFD", bos=False)  # a private-use character gemma3 has no token for
    assert ids == [482, 381, 429, 427]  # <0xF4> <0x8F> <0xBF> <0xBD>
    assert b"".join(tok.token_bytes(i) for i in ids) == "\U0010FFFD".encode()
    assert tok.decode(ids) == "\U0010FFFD"


def test_control_tokens_render_only_with_special(tok):
    ids = [BOS, START_OF_TURN, 9259, END_OF_TURN]
    assert tok.decode(ids) == "Hello"
    assert tok.decode(ids, special=True) == "<bos><start_of_turn>Hello<end_of_turn>"
    assert tok.token_bytes(BOS) == b""
    assert tok.token_bytes(BOS, special=True) == b"<bos>"
    assert tok.token_bytes(1902) == b" world"  # "▁world"


def test_special_ids_and_end_of_generation(tok):
    assert (tok.n_vocab, tok.bos_id, tok.eos_id) == (262144, BOS, EOS)
    assert (tok.add_bos, tok.add_eos) == (True, False)
    # <eos>, <end_of_turn>, and </s>: llama.cpp's EOG list matches "</s>" by its text (and makes it a
    # control token, so plain text "</s>" no longer becomes token 212).
    assert tok.eog_ids == frozenset({EOS, END_OF_TURN, 212})
    assert 212 not in tok.encode("</s>")
    assert tok.encode("</s>", bos=False, special=True) == [212]


def test_bos_false_adds_nothing(tok):
    assert tok.encode("Hello world", bos=False) == [9259, 1902]
    assert tok.encode("", bos=False) == []


def test_stream_never_splits_a_character(tok):
    text = "emoji 😀🚀 and 日本語のテキスト, rare \U0010FFFD and 鿿 done."
    ids = tok.encode(text, bos=False)
    assert len(ids) > len(tok.encode("emoji 😀🚀 and 日本語のテキスト, rare", bos=False))
    stream = tok.stream()
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.flush())
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces  # the byte tokens of one character come out together, at the last one
    assert "".join(pieces) == tok.decode(ids) == text


def test_stream_flushes_an_unfinished_character_as_replacement(tok):
    stream = tok.stream()
    assert stream.feed(482) == ""  # <0xF4>: the first of four bytes
    assert stream.flush() == "\ufffd"


def test_the_vocabulary_is_held_in_bytes_not_python_objects(model_path):
    """262k tokens as a str each plus a dict to find them took ~40 MB; as one buffer of bytes, a
    hash table and numpy arrays they take under 40 bytes a token, parsing included."""
    Tokenizer.from_metadata(GGUFFile(model_path).metadata)  # numba's kernels load (or compile) outside it
    tracemalloc.start()
    try:
        metadata = GGUFFile(model_path).metadata
        tok = Tokenizer.from_metadata(metadata)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tok.n_vocab == 262_144
    assert held < 40 * tok.n_vocab, f"{held / 2**20:.1f} MiB"


# -- metadata that must be refused (a tiny vocabulary keeps these fast) -----------------------

def _tiny_spm() -> dict:
    tokens = ["<unk>", "<s>", "</s>", "▁a", "a", "▁"] + [f"<0x{b:02X}>" for b in range(256)]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.zeros(len(tokens), np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1] + [6] * 256, np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def test_tiny_vocab_loads_with_llama_cpp_defaults():
    tok = Tokenizer.from_metadata(_tiny_spm())
    # SPM defaults: add BOS, prefix a space; "a" -> "▁a".
    assert tok.encode("a") == [1, 3]
    assert tok.encode("a", bos=False) == [3]
    # The prefixed space comes off the first token only: after a BOS it stays (llama_detokenize
    # with remove_special=False strips at most one space, from whatever token comes first).
    assert tok.decode([3]) == "a"
    assert tok.decode([1, 3]) == " a"


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.scores", np.zeros(5, np.float32), "tokenizer.ggml.scores has 5 entries"),
    ("tokenizer.ggml.token_type", np.ones(300, np.int32), "token_type has 300 entries"),
    ("tokenizer.ggml.bos_token_id", 262, "bos_token_id = 262 is outside the vocabulary"),
    ("tokenizer.ggml.eos_token_id", -1, "eos_token_id = -1 is outside the vocabulary"),
    ("tokenizer.ggml.model", "sentencepiece", "unknown tokenizer model 'sentencepiece'"),
    ("tokenizer.ggml.model", "bert", "unsupported tokenizer model 'bert'"),
    ("tokenizer.ggml.tokens", ["a", "b", "a"], "duplicate token in vocabulary: 'a'"),
    ("tokenizer.ggml.tokens", "abc", "tokenizer.ggml.tokens is missing or not a list"),
    ("tokenizer.ggml.add_bos_token", "yes", "add_bos_token is str, not a boolean"),
])
def test_bad_vocab_metadata_raises_gguf_error(key, value, message):
    md = _tiny_spm()
    md[key] = value
    if key == "tokenizer.ggml.tokens":
        md.pop("tokenizer.ggml.scores"), md.pop("tokenizer.ggml.token_type")
    with pytest.raises(GGUFError, match=message.replace("(", r"\(")) as err:
        Tokenizer.from_metadata(md)
    assert "\n" not in str(err.value)


def test_missing_model_key_raises_gguf_error():
    md = _tiny_spm()
    del md["tokenizer.ggml.model"]
    with pytest.raises(GGUFError, match="missing tokenizer.ggml.model"):
        Tokenizer.from_metadata(md)


def test_add_bos_without_a_bos_token_raises_gguf_error():
    # BPE's default BOS id is 11; in a two-token vocabulary that is out of range, so there is none.
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
          "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.add_bos_token": True}
    with pytest.raises(GGUFError, match="add_bos_token is true, but there is no BOS token"):
        Tokenizer.from_metadata(md)
