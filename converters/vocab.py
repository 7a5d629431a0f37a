"""Tokenizer files -> the GGUF tokenizer metadata llama.cpp's converter writes.

Two kinds of tokenizer:
- a SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma): tokenizer.ggml.model = "llama",
  each piece with its score and type (normal, unknown, control, user-defined, unused, byte);
- a byte-level BPE `tokenizer.json` (Llama 3, Qwen): "gpt2", with the merges and
  tokenizer.ggml.pre naming the pre-tokenizer (the regex that splits text before BPE). GGUF has
  no field for the regex, so llama.cpp recognises the tokenizer by the ids it gives for a fixed
  test string (CHECK_TEXT) and maps their hash to a name. We do the same, and refuse an unknown
  hash: llama.cpp would otherwise fall back to a default split and tokenize differently, silently.

A tokenizer.model is used when it is a SentencePiece model (Llama 3 repos sometimes ship a
tiktoken file under that name; then tokenizer.json is used). Vocabularies shorter than the
embedding matrix are padded with unused "[PAD{i}]" tokens, as llama.cpp does.

Special token ids, add_bos/add_eos, merges and the chat template come from tokenizer.json,
tokenizer_config.json and config.json through gguf-py's SpecialVocab, the code llama.cpp's
converter uses for them.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path

import gguf
from gguf import GGUFWriter, TokenType

from edgellm.converters.errors import ConvertError

# llama.cpp's convert_hf_to_gguf.py get_vocab_base_pre(): its test string, and the hashes of the
# ids it encodes to, for the tokenizer families of the architectures we convert.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 "
    "\U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Llama 3 tunes
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen 1.5-3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
}


def add_vocab(writer: GGUFWriter, folder: Path, n_vocab: int, arch: str) -> str:
    """Write the tokenizer of the checkpoint in `folder`; return "llama" or "gpt2"."""
    sp = _sentencepiece(folder / "tokenizer.model")
    if sp is not None:
        _add_sentencepiece(writer, folder, sp, n_vocab)
        if arch == "gemma3":  # Gemma's tokenizer does not prepend a space (llama.cpp: same)
            writer.add_add_space_prefix(False)
        kind = "llama"
    elif (folder / "tokenizer.json").is_file():
        _add_bpe(writer, folder, n_vocab)
        kind = "gpt2"
    else:
        raise ConvertError(f"{folder} has no tokenizer: need tokenizer.model (SentencePiece) or "
                           "tokenizer.json")
    # SpecialVocab logs guesses about unusual post-processor templates (Llama 3's pair template
    # trips one); they change nothing we write, so keep them off the user's terminal.
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    finally:
        log.setLevel(level)
    return kind


def _sentencepiece(path: Path):
    """A loaded SentencePieceProcessor, or None when there is no SentencePiece model at `path`."""
    if not path.is_file():
        return None
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ConvertError("reading tokenizer.model needs sentencepiece: pip install sentencepiece") from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (RuntimeError, OSError):
        if not (path.parent / "tokenizer.json").is_file():
            raise ConvertError(f"{path} is not a SentencePiece model and there is no tokenizer.json") from None
        return None  # e.g. Llama 3's tiktoken file: tokenizer.json describes the same vocabulary
    return sp


def _add_sentencepiece(writer: GGUFWriter, folder: Path, sp, n_vocab: int) -> None:
    if sp.vocab_size() > n_vocab:
        raise ConvertError(f"tokenizer.model has {sp.vocab_size()} pieces but the model's vocab_size "
                           f"is {n_vocab}")
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [TokenType.UNUSED] * n_vocab
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = (TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                    else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                    else TokenType.NORMAL)
    # Tokens added on top of the SentencePiece model, and the types tokenizer_config.json gives
    # (llama.cpp: _create_vocab_sentencepiece). SentencePiece's own user-defined pieces stay
    # NORMAL unless listed there, as in llama.cpp: its Python API cannot tell them apart.
    added = _read_json(folder / "added_tokens.json") or {}
    for content, i in added.items():
        if isinstance(i, int) and 0 <= i < n_vocab:
            tokens[i], scores[i], types[i] = content.encode("utf-8"), -1000.0, TokenType.USER_DEFINED
    config = _read_json(folder / "tokenizer_config.json") or {}
    for key, entry in config.get("added_tokens_decoder", {}).items():
        try:
            i, content = int(key), str(entry["content"])
        except (ValueError, KeyError, TypeError):
            raise ConvertError(f"tokenizer_config.json: bad added_tokens_decoder entry {key!r}") from None
        if not 0 <= i < n_vocab:
            continue
        if entry.get("special") or looks_special(content):
            types[i] = TokenType.CONTROL
        else:
            content, types[i] = content.replace("\u2581", " "), TokenType.USER_DEFINED
        tokens[i], scores[i] = content.encode("utf-8"), -1000.0
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    prefix = config.get("add_prefix_space")
    if isinstance(prefix, bool):
        writer.add_add_space_prefix(prefix)


def _add_bpe(writer: GGUFWriter, folder: Path, n_vocab: int) -> None:
    tokenizer = _read_json(folder / "tokenizer.json")
    model = (tokenizer or {}).get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json holds a {model.get('type')} model; only BPE is supported "
                           "(or a SentencePiece tokenizer.model)")
    added = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    by_id = {i: token for token, i in model["vocab"].items()}
    largest = max([*by_id, *added], default=-1)
    if largest >= n_vocab:
        raise ConvertError(f"tokenizer.json has token id {largest} but the model's vocab_size is {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            content = added[i]["content"]
            if added[i].get("special") or looks_special(content):
                types.append(TokenType.CONTROL)
            else:  # llama.cpp expects user-defined tokens pre-normalized
                content = content.replace("\u2581", " ")
                types.append(TokenType.USER_DEFINED)
            tokens.append(content)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(folder / "tokenizer.json"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def pre_tokenizer(path: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of tokenizer.json at `path` (see the module doc)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConvertError("reading tokenizer.json needs tokenizers: pip install tokenizers") from None
    ids = Tokenizer.from_file(str(path)).encode(CHECK_TEXT).ids  # with BOS, like AutoTokenizer
    digest = sha256(str(ids).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise ConvertError(f"unknown BPE pre-tokenizer (llama.cpp hash {digest}); add it to "
                           "PRE_TOKENIZERS in converters/vocab.py from llama.cpp's convert_hf_to_gguf.py")
    return PRE_TOKENIZERS[digest]


def looks_special(token: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens that act as control tokens even when
    the checkpoint does not mark them special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read {path}: {e}") from None
