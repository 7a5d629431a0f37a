"""Byte-level BPE pre-tokenizers: how llama.cpp cuts text into words before merging.

`tokenizer.ggml.pre` names a pre-tokenizer; llama.cpp (llama-vocab.cpp, `llama_vocab::impl::load`
and `llm_tokenizer_bpe`) maps the name to a list of regexes plus a few flags. The regexes are
applied one after another: each splits every piece that the previous ones left, and the text
between two matches stays a piece of its own (unicode.cpp, `unicode_regex_split`). The patterns
below are llama.cpp's, run with the `regex` package, which knows \\p{L}, \\p{N} and friends.

llama.cpp runs most of them with std::regex on a "collapsed" text (every non-ASCII code point
replaced by one byte standing for its category) and the gpt2 and llama3 ones with hand-written
splitters; all of these are meant to equal the regex, and they do on assigned code points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import regex

# The contractions, case-insensitive the way llama.cpp spells it (std::regex has no (?i:...)).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Llama 3: letters take one leading non-letter ("_foo", " foo"), digits go in groups of 1-3.
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: as Llama 3, but every digit is a word of its own.
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
         r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
# llama.cpp's rewrite of the cased-word patterns of Tekken and GPT-4o: [^a-z] / [^A-Z] restricted to
# letters stand for "upper" / "lower" (on non-ASCII letters both hold, as in llama.cpp).
TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
         r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK3 = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
             r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
EXAONE_MOE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
MINICPM5 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class BpePreTokenizer:
    """One `tokenizer.ggml.pre` as llama.cpp reads it: regexes and the vocab flags it sets."""

    patterns: tuple[str, ...]
    clean_spaces: bool = True  # detokenizer drops " " before ?!., and some contractions
    ignore_merges: bool = False  # a word that is itself a token is taken whole, unmerged
    add_bos: bool = False  # default for add_bos_token when the file does not say
    no_bos: bool = False  # llama.cpp clears the default BOS id (chatglm)

    def compiled(self) -> list[regex.Pattern]:
        import regex  # here, not at the top: a SentencePiece vocabulary never needs it (1.5 MiB)

        return [regex.compile(p) for p in self.patterns]


def _pre(*patterns: str, **flags) -> BpePreTokenizer:
    return BpePreTokenizer(tuple(patterns), **flags)


_LLAMA3 = _pre(LLAMA3, ignore_merges=True, add_bos=True)
_GPT2 = _pre(GPT2)
_STARCODER = _pre(r"\p{N}", GPT2)
_QWEN2 = _pre(QWEN2, clean_spaces=False)
_BLOOM = _pre(BLOOM)
_GPT4O = _pre(GPT4O, clean_spaces=False)
_DEFAULT = _pre(r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")

# Name in the GGUF -> pre-tokenizer, as in llama_vocab::impl::load (names it does not list here
# are ones that need llama.cpp's custom splitters or a non-byte-level vocab; we refuse those).
BPE_PRE_TOKENIZERS: dict[str, BpePreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"], _LLAMA3),
    "dbrx": _pre(LLAMA3),
    "smaug-bpe": _pre(LLAMA3),
    **dict.fromkeys(["glm4", "chatglm-bpe"], _pre(LLAMA3, no_bos=True)),
    "jais-2": _pre(JAIS2),
    "deepseek-coder": _pre(r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}",
                           clean_spaces=False),
    "deepseek-v3": _pre(r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3, clean_spaces=False),
    "falcon": _pre(r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                     "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "jina-v1-en",
                     "jina-v2-code", "roberta-bpe", "exaone4", "mpt", "olmo", "jais"], _GPT2),
    **dict.fromkeys(["trillion", "granite-docling"], _pre(GPT2, clean_spaces=False)),
    **dict.fromkeys(["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"],
                    _STARCODER),
    **dict.fromkeys(["command-r", "smollm"], _pre(r"\p{N}", GPT2, clean_spaces=False)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open",
                     "grok-2"], _QWEN2),
    **dict.fromkeys(["stablelm2", "megrez"], _pre(QWEN2)),
    "qwen35": _pre(QWEN35, clean_spaces=False),
    "poro-chat": _pre(BLOOM, clean_spaces=False),
    **dict.fromkeys(["bloom", "gpt3-finnish"], _BLOOM),
    "viking": _pre(BLOOM, r"\p{N}", clean_spaces=False),
    "tekken": _pre(TEKKEN, clean_spaces=False, ignore_merges=True, add_bos=True),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O),
    **dict.fromkeys(["bailingmoe", "bailingmoe2", "llada-moe"],
                    _pre(BAILINGMOE, clean_spaces=False)),
    "seed-coder": _pre(SEED_CODER, clean_spaces=False),
    "exaone-moe": _pre(EXAONE_MOE),
    "minicpm5": _pre(r"\p{N}{1,3}", MINICPM5, ignore_merges=True),
    "ufakzeka": _pre(UFAKZEKA, clean_spaces=False),
    "laguna": _pre(r"[^\n]+|[\n]+", QWEN2, clean_spaces=False),
}


def split_words(text: str, patterns: list[regex.Pattern]) -> list[str]:
    """Cut `text` into words: each pattern splits every piece; unmatched gaps stay pieces."""
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in pattern.finditer(piece):
                start, end = m.span()
                if start > pos:
                    out.append(piece[pos:start])
                if end > start:
                    out.append(piece[start:end])
                pos = end
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces
