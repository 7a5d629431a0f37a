"""Text <-> token ids, the same ids llama.cpp gives (src/llama-vocab.cpp).

Two vocabulary kinds, named by `tokenizer.ggml.model`:

- "llama": SentencePiece-style (gemma3, Llama 2). Spaces become U+2581 "▁", then neighbouring
  symbols merge, highest-scoring resulting token first (llm_tokenizer_spm_session); a character
  that never became a token falls back to its UTF-8 bytes as <0xXX> tokens.
- "gpt2": byte-level BPE (Llama 3, Qwen2). A pre-tokenizer regex cuts the text into words
  (pretokenize.py), each word's UTF-8 bytes are spelled with the GPT-2 byte alphabet, then pairs
  merge in the order of `tokenizer.ggml.merges` (llm_tokenizer_bpe_session).

Before either, special tokens are cut out of the text (tokenizer_st_partition): user-defined
tokens (type 4) always, control tokens (type 3) only when `special=True`.

The vocabulary stays bytes (gguf_file.StringArray) with a hash index, and both merge loops
run in numba over them (vocab.py): ~7 MB for a 262k-token vocabulary instead of ~40 MB of
Python strings and dicts.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgellm.gguf_file import GGUFError, StringArray
from edgellm.pretokenize import BPE_PRE_TOKENIZERS, split_words
from edgellm.vocab import StringIndex, bpe_merge, spm_merge, strings_of

# tokenizer.ggml.token_type values (llama.h LLAMA_TOKEN_TYPE_*).
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's per-token attribute bits (llama.h LLAMA_TOKEN_ATTR_*).
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# token type -> attribute; anything else is "undefined" (0) and renders as nothing.
_TYPE_TO_ATTR = np.zeros(8, dtype=np.int64)
_TYPE_TO_ATTR[[TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED,
               TYPE_BYTE]] = [ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED,
                              ATTR_UNUSED, ATTR_BYTE]

SPACE_MARK = "\u2581"  # "▁", SentencePiece's visible space
_C_SPACES = " \t\n\v\f\r"  # C isspace(), used for lstrip/rstrip around special tokens

# Texts llama.cpp recognises when the file does not name the token (llama_vocab::impl::load).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
              "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
              "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")

# Special-token ids read from the file, with their keys. An id the file names must be in range.
_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id",
    "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id",
    "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id",
    "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}
_DEPRECATED_FIM_KEYS = {"fim_pre": "tokenizer.ggml.prefix_token_id",
                        "fim_suf": "tokenizer.ggml.suffix_token_id",
                        "fim_mid": "tokenizer.ggml.middle_token_id"}


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100+."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet, n = {}, 0
    for b in range(256):
        if b in printable:
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(0x100 + n)
            n += 1
    return [alphabet[b] for b in range(256)]


_BYTE_TO_CHAR = _byte_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}
# str.translate tables: latin-1 text (one char per byte) -> byte alphabet, and back.
_ENCODE_BYTES = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}
_DECODE_BYTES = {ord(c): b for c, b in _CHAR_TO_BYTE.items()}


# llama_vocab::impl::detokenize's clean_spaces passes, as byte substitutions (same results):
# " ?" " !" " ." " ," lose the space; " ' " becomes "'"; " 's" " 'm" " 're" " 've" lose the space.
_CLEAN_PASSES = (
    (re.compile(rb" (?=[?!.,])"), b""),
    (re.compile(rb" ' "), b"'"),
    (re.compile(rb" (?='(?:[sm]|[rv]e))"), b""),
)


def clean_spaces(data: bytes) -> bytes:
    for pattern, repl in _CLEAN_PASSES:
        data = pattern.sub(repl, data)
    return data




class Tokenizer:
    """A GGUF vocabulary: encode text to ids and decode ids to text exactly as llama.cpp does."""

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        return cls(md)

    def __init__(self, md: Mapping[str, Any]):
        model = md.get("tokenizer.ggml.model")
        if not isinstance(model, str):
            raise GGUFError("missing tokenizer.ggml.model")
        self.kind = {"llama": "spm", "gpt2": "bpe", "none": "none", "no_vocab": "none"}.get(model)
        if self.kind is None:
            known = ("bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace")
            what = "unsupported" if model in known else "unknown"
            raise GGUFError(f"{what} tokenizer model {model!r} (supported: llama, gpt2, none)")

        self._pieces: dict[int, bytes] = {}
        self.bos_id = self.eos_id = self.eot_id = self.eom_id = self.unk_id = None
        self.pad_id = None
        self.eog_ids: frozenset[int] = frozenset()
        self.add_bos = self.add_eos = self.add_space_prefix = self.clean_spaces = False

        if self.kind == "none":
            n_vocab = md.get(f"{md.get('general.architecture')}.vocab_size", 0)
            if not isinstance(n_vocab, (int, np.integer)) or n_vocab < 0:
                raise GGUFError(f"vocab_size is {n_vocab!r}, not a token count")
            self.n_vocab = int(n_vocab)
            self._tokens = StringArray.from_strings([])
            return

        self._load_vocab(md)
        if self.kind == "spm":
            # llama.cpp's SPM defaults: BOS 1, EOS 2, UNK 0, add BOS, a space before the text.
            defaults = {"bos": 1, "eos": 2, "unk": 0}
            self.add_bos, self.add_space_prefix = True, True
        else:
            defaults = self._load_bpe(md)
        self.add_space_prefix = _flag(md, "tokenizer.ggml.add_space_prefix", self.add_space_prefix)
        ids = self._load_special_ids(md, defaults)
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (ids["bos"], ids["eos"], ids["unk"],
                                                              ids["pad"])
        self.add_bos = _flag(md, "tokenizer.ggml.add_bos_token", self.add_bos)
        self.add_eos = _flag(md, "tokenizer.ggml.add_eos_token", self.add_eos)
        if self.add_bos and self.bos_id is None:
            raise GGUFError("tokenizer.ggml.add_bos_token is true, but there is no BOS token")
        if self.add_eos and self.eos_id is None:
            raise GGUFError("tokenizer.ggml.add_eos_token is true, but there is no EOS token")
        self._find_end_of_generation(ids)
        self._set_strip_attrs(md)

        # Special tokens to cut out of text, longest (in bytes) first.
        special = np.flatnonzero(np.asarray(self._attrs) & (ATTR_CONTROL | ATTR_USER_DEFINED |
                                                             ATTR_UNKNOWN)).tolist()
        special.sort(key=lambda i: (-len(self._tokens.raw(i)), i))
        # int32, not a list of ints: Gemma 3 has 6k+ control tokens (0.2 MiB as Python ints)
        self._special_ids = np.array(special, np.int32)
        self._byte_ids = self._byte_tokens()

    # -- loading -------------------------------------------------------------------------------

    def _load_vocab(self, md: Mapping[str, Any]) -> None:
        tokens = strings_of(md.get("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")
        n = len(tokens)
        if n == 0:
            raise GGUFError("tokenizer.ggml.tokens is empty")
        if (np.diff(tokens.offsets) == 0).any():  # llama.cpp renames empty tokens rather than refusing the file
            tokens = StringArray.from_strings([t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)])
        index = StringIndex(tokens)
        if index.duplicate is not None:
            first, dup = index.duplicate
            raise GGUFError(f"duplicate token in vocabulary: {tokens[dup]!r} has ids {first} and {dup}")
        self.n_vocab = n
        self._tokens = tokens
        self._token_to_id = index
        self._scores = _numeric_array(md, "tokenizer.ggml.scores", n, np.float32).view()  # float32 [n]
        self._scores.flags.writeable = False  # as a file's are: one signature for the merge kernel
        types = _numeric_array(md, "tokenizer.ggml.token_type", n, np.int32, default=TYPE_NORMAL)
        valid = (types >= 0) & (types < len(_TYPE_TO_ATTR))
        # int16 [n]: the ATTR_ bits fit in 9, and it is 0.5 MiB less than int32 for 262k tokens
        self._attrs = np.where(valid, _TYPE_TO_ATTR[np.where(valid, types, 0)], 0).astype(np.int16)

    def _load_bpe(self, md: Mapping[str, Any]) -> dict[str, int]:
        merges = strings_of(md.get("tokenizer.ggml.merges"), "tokenizer.ggml.merges")
        # "left right" -> rank; the first of duplicate merges wins, as with llama.cpp's emplace.
        self._merges = StringIndex(merges)
        pre_name = md.get("tokenizer.ggml.pre") or "default"
        pre = BPE_PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise GGUFError(f"unsupported BPE pre-tokenizer {pre_name!r}")
        self.pre_tokenizer = pre_name
        self._patterns = pre.compiled()
        self._ignore_merges = pre.ignore_merges
        self.clean_spaces = pre.clean_spaces
        self.add_bos = pre.add_bos
        # llama.cpp's BPE defaults: BOS and EOS 11 (GPT-2's era), no UNK.
        return {"bos": None if pre.no_bos else 11, "eos": 11}

    def _load_special_ids(self, md: Mapping[str, Any], defaults: dict[str, int]) -> dict:
        ids = {}
        for name, key in _ID_KEYS.items():
            default = defaults.get(name)
            ids[name] = default if default is not None and default < self.n_vocab else None
            keys = [key] + ([_DEPRECATED_FIM_KEYS[name]] if name in _DEPRECATED_FIM_KEYS else [])
            for k in keys:
                if k in md:
                    value = md[k]
                    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                        raise GGUFError(f"{k} is {type(value).__name__}, not an integer")
                    if not 0 <= value < self.n_vocab:
                        raise GGUFError(f"{k} = {value} is outside the vocabulary "
                                        f"(0..{self.n_vocab - 1})")
                    ids[name] = int(value)
        return ids

    def _find_end_of_generation(self, ids: dict) -> None:
        """llama.cpp's EOG set: EOS/EOT/EOM, FIM pad/repo/sep, and tokens known by their text."""
        attrs, lookup = self._attrs, self._token_to_id

        def mark_control(tid: int) -> None:  # "control-looking token ... will be overridden"
            attrs[tid] |= ATTR_CONTROL

        def detect(name: str, texts: Sequence[str]) -> None:
            if ids[name] is not None:
                return
            for text in texts:  # llama.cpp takes whichever its hash map yields first
                if text in lookup:
                    ids[name] = lookup[text]
                    mark_control(ids[name])
                    return

        detect("eot", _EOT_TEXTS)
        detect("eom", _EOM_TEXTS)
        for part, texts in _FIM_TEXTS.items():
            detect(f"fim_{part}", texts)

        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] is not None}
        for text in _EOG_TEXTS:
            if text in lookup:
                eog.add(lookup[text])
                mark_control(lookup[text])
        # gpt-oss: these render always, like user-defined tokens.
        for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            if text in lookup:
                attrs[lookup[text]] = ATTR_USER_DEFINED
        eog |= {ids[k] for k in ("eos", "eot", "eom") if ids[k] is not None}

        texts = {self._tokens[t]: t for t in eog}
        # o200k_harmony and solar-open end turns with <|end|> but do not stop generating on it.
        if "<|end|>" in texts and (({"<|return|>", "<|call|>"} <= texts.keys()) or
                                   ({"<|calls|>", "<|flush|>"} <= texts.keys())):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        # gemma4 and paddleocr: </s> is an ordinary token there.
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL

        self.eot_id, self.eom_id = ids["eot"], ids["eom"]
        self.eog_ids = frozenset(eog)

    def _set_strip_attrs(self, md: Mapping[str, Any]) -> None:
        """Per-model whitespace stripping around special tokens (end of llama_vocab::impl::load)."""
        name = str(md.get("general.name", "")).lower()
        pre = str(md.get("tokenizer.ggml.pre", ""))
        arch = str(md.get("general.architecture", ""))
        lookup, attrs = self._token_to_id, self._attrs
        if (any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
                or any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3"))):
            if "<mask>" in lookup:
                attrs[lookup["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            attrs[(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) != 0] |= ATTR_RSTRIP
            if "</s>" in lookup:
                attrs[lookup["</s>"]] |= ATTR_RSTRIP
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                if text in lookup:
                    attrs[lookup[text]] &= ~ATTR_RSTRIP
        elif "modern-bert" in name and "[MASK]" in lookup:
            attrs[lookup["[MASK]"]] |= ATTR_LSTRIP

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        """llama_tokenize(text, add_special=bos, parse_special=special).

        `bos=True` adds BOS (and EOS) only where the vocabulary asks for them (add_bos/add_eos).
        """
        if self.kind == "none":
            raise GGUFError("this model has no vocabulary (tokenizer.ggml.model = none)")
        text = _valid_text(text)
        ids: list[int] = []
        if bos and self.add_bos:
            ids.append(self.bos_id)
        prev_special = True  # SPM puts a space before text that starts the prompt or follows a token
        for fragment in self._split_special(text, special) if text else ():
            if isinstance(fragment, int):
                ids.append(fragment)
                prev_special = True
            elif self.kind == "spm":
                if self.add_space_prefix and prev_special:
                    fragment = " " + fragment
                ids += self._encode_spm(fragment)
                prev_special = False
            else:
                ids += self._encode_bpe(fragment)
        if bos and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: cut special tokens out of the text, longest first.

        Each token, in turn, splits every text fragment left at its leftmost non-overlapping
        occurrences. Control and unknown tokens take part only when `parse_special`.
        """
        fragments: list[str | int] = [text]
        for tid in map(int, self._special_ids):
            attr = self._attrs[tid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            token = self._tokens[tid]
            if token not in text:
                continue
            out: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token not in fragment:
                    out.append(fragment)
                    continue
                pos = 0
                while (match := fragment.find(token, pos)) >= 0:
                    left = fragment[pos:match]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACES)
                    if left:
                        out.append(left)
                    out.append(tid)
                    pos = match + len(token)
                    if attr & ATTR_RSTRIP:
                        while pos < len(fragment) and fragment[pos] in _C_SPACES:
                            pos += 1
                if pos < len(fragment):
                    out.append(fragment[pos:])
            fragments = out
        return fragments

    # SentencePiece (llm_tokenizer_spm_session)

    def _encode_spm(self, text: str) -> list[int]:
        ids = spm_merge(text.replace(" ", SPACE_MARK).encode("utf-8"), self._token_to_id, self._scores,
                        self._byte_ids)
        if ids.size and ids.min() < 0:
            b = -1 - int(ids.min())
            raise GGUFError(f"vocabulary has no token for byte 0x{b:02X} and no UNK token")
        return ids.tolist()

    def _byte_tokens(self) -> np.ndarray:
        """int32 [256]: each byte's token where no token covers a character. SPM
        (llama_vocab::byte_to_token): <0xXX>, else the byte itself, else UNK, else -1 - byte.
        BPE: the byte itself, else -1 (llama.cpp drops it)."""
        lookup = self._token_to_id
        out = np.empty(256, np.int32)
        for b in range(256):
            tid = lookup.get(bytes([b]))
            if self.kind == "spm":
                tid = lookup.get(f"<0x{b:02X}>", tid if tid is not None else self.unk_id)
            out[b] = tid if tid is not None else (-1 - b if self.kind == "spm" else -1)
        return out

    # byte-level BPE (llm_tokenizer_bpe_session)

    def _encode_bpe(self, text: str) -> list[int]:
        words = [word.encode("utf-8", "surrogateescape").decode("latin-1").translate(_ENCODE_BYTES).encode("utf-8")
                 for word in split_words(text, self._patterns)]
        starts = np.zeros(len(words) + 1, np.int64)
        np.cumsum([len(w) for w in words], out=starts[1:])
        return bpe_merge(b"".join(words), starts, self._token_to_id, self._merges, self._byte_ids,
                         self._ignore_merges).tolist()

    # -- decoding ------------------------------------------------------------------------------

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """llama_token_to_piece(token, lstrip=0, special): the bytes one token stands for.

        Control and unknown tokens are empty unless `special`; user-defined ones always render.
        """
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        if self.kind == "none":
            return b""
        attr = self._attrs[token_id]
        if not special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id, attr)
        return piece

    def _piece(self, token_id: int, attr: int) -> bytes:
        text = self._tokens[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            if self.kind == "spm":
                return text.replace(SPACE_MARK, " ").encode("utf-8", "surrogateescape")
            if all(c in _CHAR_TO_BYTE for c in text):
                return text.translate(_DECODE_BYTES).encode("latin-1")
            return _decode_byte_level_slowly(text)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined types render as nothing

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """llama_detokenize(ids, remove_special=False, unparse_special=special) as text."""
        data = b"".join(self._pieces_of(ids, special))
        if self.clean_spaces:
            data = clean_spaces(data)
        return data.decode("utf-8", "replace")

    def _pieces_of(self, ids: Sequence[int], special: bool):
        remove_space = self.add_space_prefix  # the space SPM put before the text comes off
        for tid in ids:
            piece = self.token_bytes(int(tid), special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            yield piece

    def stream(self, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special)


class StreamDecoder:
    """Decodes ids one at a time into text, never splitting a UTF-8 character.

    The concatenation of everything `feed` and `flush` return equals `Tokenizer.decode` of the
    same ids. Where the vocabulary cleans spaces (" ," -> ","), bytes from a space onwards are
    held back until three non-space bytes follow: no clean-up rule reaches further than that.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self._remove_space = tokenizer.add_space_prefix
        self._held = b""  # bytes not yet space-cleaned
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        piece = self._tokenizer.token_bytes(int(token_id), self._special)
        if self._remove_space and piece[:1] == b" ":
            piece = piece[1:]
        self._remove_space = False
        if not self._tokenizer.clean_spaces:
            return self._utf8.decode(piece)
        self._held += piece
        cut = len(self._held)
        while (space := self._held.rfind(b" ", max(0, cut - 3), cut)) >= 0:
            cut = space
        ready, self._held = self._held[:cut], self._held[cut:]
        return self._utf8.decode(clean_spaces(ready))

    def flush(self) -> str:
        """Whatever is left; bytes that never formed a character come out as U+FFFD."""
        rest, self._held = self._held, b""
        if self._tokenizer.clean_spaces:
            rest = clean_spaces(rest)
        return self._utf8.decode(rest, final=True)


def _decode_byte_level_slowly(text: str) -> bytes:
    """llama_decode_text for a token with characters outside the byte alphabet."""
    out = bytearray()
    raw = text.encode("utf-8", "surrogateescape")
    for c in text:
        if c in _CHAR_TO_BYTE:
            out.append(_CHAR_TO_BYTE[c])
        else:
            utf8 = c.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + raw + b"]"
    return bytes(out)


def _valid_text(text: str) -> str:
    """Text as llama.cpp sees it: UTF-8 it cannot read becomes U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates, e.g. from errors="surrogateescape"
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _flag(md: Mapping[str, Any], key: str, default: bool) -> bool:
    value = md.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise GGUFError(f"{key} is {type(value).__name__}, not a boolean")
    return bool(value)


def _numeric_array(md: Mapping[str, Any], key: str, n: int, dtype, default=0) -> np.ndarray:
    """An optional per-token array; absent means `default` for every token."""
    if key not in md:
        return np.full(n, default, dtype=dtype)
    value = md[key]
    try:
        values = np.asarray(value)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or not (np.issubdtype(values.dtype, np.number)
                                                  and not np.issubdtype(values.dtype, np.bool_)):
        raise GGUFError(f"{key} is not a numeric array")
    if len(values) != n:
        raise GGUFError(f"{key} has {len(values)} entries for {n} tokens")
    return values.astype(dtype, copy=False)
