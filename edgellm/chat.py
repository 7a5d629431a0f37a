"""Conversations on one KV cache: prefix reuse and context shift.

A turn renders the whole conversation with the chat template and tokenizes it; the cache already
holds the previous turns (prompt and answer), so only the tokens after the longest common prefix
are evaluated. /regen and an edited last message take the same path: the common prefix stops
where the conversation changed.

When the conversation no longer fits, the cache keeps the first n_keep tokens (BOS, the template's
opening and the system prompt) and drops the oldest half of the rest (llama.cpp's context shift,
see KVCache.shift). Dropped tokens stay dropped for later turns: the session remembers how many
tokens after n_keep the cache skips, so the next turn still reuses everything after them.

    session = ChatSession(llm, system="Answer briefly.")
    for piece in session.send("Why is the sky blue?"):
        print(piece, end="", flush=True)
    print(session.last.reused, session.last.prefilled)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from edgellm.chat_template import ChatTemplate, template_for
from edgellm.errors import EdgeLLMError
from edgellm.llm import GenerationStats
from edgellm.sampling import Sampler, SamplingParams

PREFILL_CHUNK = 256  # tokens per forward pass while prefilling: a stop request waits at most one
# Sliding-window layers keep this many extra positions, so that /regen or an edit can roll the
# cache back this far without evaluating the whole conversation again (llama.cpp: n_ubatch).
ROLLBACK_TOKENS = 512


@dataclass
class TurnStats(GenerationStats):
    """GenerationStats of one chat turn; prompt_tokens counts the conversation as the cache holds
    it (after context shifts), of which `reused` were already there."""

    reused: int = 0
    shifts: int = 0  # context shifts during this turn
    dropped: int = 0  # tokens they dropped
    n_past: int = 0  # context used after the turn
    n_ctx: int = 0

    @property
    def prefilled(self) -> int:
        return self.prompt_tokens - self.reused

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled / self.prefill_s if self.prefill_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {**super().as_dict(), "reused": self.reused, "prefilled": self.prefilled,
                "shifts": self.shifts, "dropped": self.dropped, "n_past": self.n_past, "n_ctx": self.n_ctx}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(diff[0]) if diff.size else n


class ChatSession:
    def __init__(self, llm, system: str | None = None, params: SamplingParams | None = None,
                 max_tokens: int | None = None, template: ChatTemplate | None = None):
        self.llm = llm
        self.tokenizer = llm._need_tokenizer()
        self.template = template or template_for(llm.gguf.metadata, llm.gguf.architecture, self.tokenizer)
        self.params = params or SamplingParams()
        self.max_tokens = max_tokens  # None: until the model ends its turn
        self.messages: list[dict] = []
        self.set_system(system)
        self.last = TurnStats()
        self.on_shift = None  # called with (n_keep, n_discard) when the context shifts
        # What the KV cache holds for this session:
        self._cache_ids: list[int] = []  # the ids at cache positions 0 .. n_past-1
        self._conv_ids: list[int] = []  # the conversation's ids they stand for, nothing dropped
        self._n_keep = 0  # the fixed prefix of _conv_ids that context shifts never drop
        self._n_dropped = 0  # _conv_ids[n_keep : n_keep + n_dropped] are not in the cache
        self._cache_epoch = None  # (cache object, its clear() count) when we last touched it
        self._keep_for: tuple | None = None  # (system text, n_keep) memo
        if llm.kv_cache.swa_margin != ROLLBACK_TOKENS and any(layer.window for layer in llm.kv_cache.layers):
            self.set_context(llm.kv_cache.n_ctx)

    # --- the conversation ---------------------------------------------------------------------
    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def set_system(self, text: str | None) -> None:
        turns = self.messages[1:] if self.system is not None else self.messages
        self.messages = ([{"role": "system", "content": text}] if text else []) + turns

    def clear(self) -> None:
        """Forget the turns, keep the system prompt (and its tokens in the cache)."""
        self.messages = self.messages[:1] if self.system is not None else []

    def send(self, text: str, stop=None) -> Iterator[str]:
        """Add a user message and stream the answer; the answer joins the conversation when it
        ends, however it ends (a stopped answer keeps what was generated)."""
        self.messages.append({"role": "user", "content": text})
        return self._answer(stop)

    def regen(self, stop=None) -> Iterator[str]:
        """Answer the last user message again (dropping the last answer)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise EdgeLLMError("nothing to regenerate: send a message first")
        return self._answer(stop)

    def _answer(self, stop) -> Iterator[str]:
        pieces: list[str] = []
        failed = False
        try:
            for piece in self.reply(self.messages, stop):
                pieces.append(piece)
                yield piece
        except EdgeLLMError:  # no turn took place; the user message stays for /regen
            failed = True
            raise
        finally:  # also when the caller stops iterating: the partial answer is kept
            if not failed:
                self.messages.append({"role": "assistant", "content": "".join(pieces)})

    # --- one turn -----------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.llm.kv_cache.n_ctx

    def set_context(self, n_ctx: int) -> None:
        """A new, empty cache of n_ctx positions; the next turn evaluates the conversation again."""
        self.llm.set_context(n_ctx, swa_margin=ROLLBACK_TOKENS)

    @property
    def n_past(self) -> int:
        return self.llm.kv_cache.n_past

    @property
    def cache_ids(self) -> list[int]:
        """The token ids the KV cache holds for this conversation, position by position."""
        return list(self._cache_ids) if self._owns_cache() else []

    def tokenize(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        text = self.template.render(messages, add_generation_prompt)
        ids = self.tokenizer.encode(text, bos=False, special=True)
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos is not None and ids[:1] != [bos]:  # a template without BOS
            ids.insert(0, bos)
        return ids

    def n_keep(self, messages: list[dict]) -> int:
        """Tokens a context shift keeps: everything before the first user message's text (BOS,
        template opening, system prompt), at most half the context."""
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        key = (system[0]["content"] if system else None, self.n_ctx)
        if self._keep_for is None or self._keep_for[0] != key:
            a = self.tokenize(system + [{"role": "user", "content": "A"}], False)
            b = self.tokenize(system + [{"role": "user", "content": "B"}], False)
            self._keep_for = (key, common_prefix(a, b))
        return min(self._keep_for[1], self.n_ctx // 2)

    def reply(self, messages: Sequence[dict], stop=None) -> Iterator[str]:
        """Stream the assistant's answer to messages (ending with a user message)."""
        messages = list(messages)
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            raise EdgeLLMError("the conversation must end with a user message")
        params = self.params
        params.validate()
        if self.max_tokens is not None and self.max_tokens < 0:
            raise EdgeLLMError(f"max tokens must be >= 0, got {self.max_tokens}")
        target = self.tokenize(messages)
        stats = self.last = self.llm.last_stats = TurnStats(n_ctx=self.n_ctx)
        if target:
            self.llm._compile_if_needed(target[0])  # a first run's compile is not prefill time
        t0 = time.perf_counter()
        logits = self._prefill(target, self.n_keep(messages), stats, stop)
        stats.prefill_s = time.perf_counter() - t0
        yield from self._generate(logits, stats, t0, stop)

    def _generate(self, logits, stats: TurnStats, t0: float, stop) -> Iterator[str]:
        tok = self.tokenizer
        sampler = Sampler(self.params)
        decoder = tok.stream()
        pieces: list[str] = []
        t_first = None
        stats.stop_reason = "stopped" if logits is None else "length"
        try:
            while logits is not None and (self.max_tokens is None or len(stats.tokens) < self.max_tokens):
                if stop is not None and stop.is_set():
                    stats.stop_reason = "stopped"
                    break
                token = sampler(logits, self._conv_ids)
                if t_first is None:
                    t_first = time.perf_counter()
                    stats.ttft_s = t_first - t0
                if token in tok.eog_ids:
                    stats.stop_reason = "eos"
                    break
                stats.tokens.append(token)
                piece = decoder.feed(token)
                if piece:
                    pieces.append(piece)
                    yield piece
                if self.max_tokens is not None and len(stats.tokens) >= self.max_tokens:
                    break
                if self.n_past >= self.n_ctx:
                    self._shift(self._n_keep, (self.n_past - self._n_keep) // 2, stats)
                logits = self._eval([token])
                self._conv_ids.append(token)
        finally:
            rest = decoder.flush()
            if rest:
                pieces.append(rest)
            if t_first is not None:
                stats.decode_s = time.perf_counter() - t_first
            stats.text = "".join(pieces)
            stats.n_past = self.n_past
        if rest:
            yield rest

    # --- the cache ----------------------------------------------------------------------------
    def _owns_cache(self) -> bool:
        cache = self.llm.kv_cache
        return (self._cache_epoch is not None and self._cache_epoch[0] is cache
                and self._cache_epoch[1] == cache.epoch and cache.n_past == len(self._cache_ids))

    def _forget(self) -> None:
        self.llm.kv_cache.clear()
        self._cache_ids, self._conv_ids, self._n_dropped = [], [], 0
        self._mark()

    def _mark(self) -> None:
        cache = self.llm.kv_cache
        self._cache_epoch = (cache, cache.epoch)

    def _eval(self, ids: list[int]) -> np.ndarray:
        """Evaluate ids at the next cache positions; the last one's logits [n_vocab]."""
        logits = self.llm._eval(np.asarray(ids, np.int64), all_logits=False)[-1]
        self._cache_ids += ids
        return logits

    def _shift(self, n_keep: int, n_discard: int, stats: TurnStats) -> None:
        """Drop n_discard tokens after n_keep from the conversation (and the cache, if it holds them)."""
        if len(self._cache_ids) >= n_keep + n_discard:
            self.llm.shift_context(n_keep, n_discard)
            del self._cache_ids[n_keep : n_keep + n_discard]
        self._n_dropped += n_discard
        stats.shifts += 1
        stats.dropped += n_discard
        if self.on_shift is not None:
            self.on_shift(n_keep, n_discard)

    def _prefill(self, target: list[int], n_keep: int, stats: TurnStats, stop) -> np.ndarray | None:
        """Bring the cache to the conversation `target`; the last position's logits (None if
        stopped first). Sets stats.prompt_tokens and stats.reused."""
        if not self._owns_cache():
            self._forget()
        dropped = self._n_dropped
        if dropped and (n_keep != self._n_keep or target[: n_keep + dropped] != self._conv_ids[: n_keep + dropped]):
            self._forget()  # the conversation changed inside what a shift dropped: start afresh
            dropped = 0
        self._n_keep = n_keep
        wanted = target[:n_keep] + target[n_keep + dropped :]  # what the cache should hold
        # Room for the prompt and at least one generated token; shift the cache along when it
        # holds what stays, else just forget what it holds past n_keep.
        while len(wanted) >= self.n_ctx:
            n_discard = max(1, (len(wanted) - n_keep) // 2)
            common = common_prefix(wanted, self._cache_ids)
            if common < n_keep + n_discard:  # the cache does not hold what stays: keep only its start
                self._truncate(min(n_keep, common))
            self._shift(n_keep, n_discard, stats)
            del wanted[n_keep : n_keep + n_discard]
        # The last prompt token is always evaluated again: its logits pick the first answer token.
        reused = self._truncate(min(common_prefix(wanted, self._cache_ids), len(wanted) - 1))
        stats.prompt_tokens, stats.reused = len(wanted), reused
        logits = None
        try:
            for start in range(reused, len(wanted), PREFILL_CHUNK):
                if stop is not None and stop.is_set():
                    return None
                logits = self._eval(wanted[start : start + PREFILL_CHUNK])
        finally:  # the conversation ids the cache stands for (dropped ones reinserted)
            n = len(self._cache_ids)
            self._conv_ids = target[: n + self._n_dropped] if n >= n_keep else target[:n]
        return logits

    def _truncate(self, n: int) -> int:
        """Keep the first n cached tokens (0 when a sliding-window layer cannot roll back)."""
        if not self.llm.kv_cache.truncate(n):
            n = 0
        del self._cache_ids[n:]
        self._mark()
        return n

    def warm_up(self) -> None:
        """Evaluate the conversation's fixed opening (and compile the kernels on a first run): the
        first message then only prefills its own tokens."""
        probe = self.messages[:1] if self.system is not None else []
        ids = self.tokenize(probe + [{"role": "user", "content": "Hello"}])
        n_keep = self.n_keep(probe + [{"role": "user", "content": "Hello"}])
        self._forget()
        self._eval(ids[:-1])  # a batch, then one token: both kinds of forward pass get compiled
        self._eval(ids[-1:])
        self._truncate(n_keep)
        self._conv_ids = self._cache_ids[:]

    # --- saving -------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        parts = [f"## {m['role'].capitalize()}\n\n{m['content'].strip()}\n" for m in self.messages]
        return "\n".join(parts)

    def to_json(self) -> str:
        model = os.path.basename(self.llm.path)
        return json.dumps({"model": model, "messages": self.messages}, ensure_ascii=False, indent=2) + "\n"

    def save(self, path: str) -> str:
        """Write the conversation to path: JSON for *.json, Markdown otherwise. Returns the path."""
        text = self.to_json() if path.lower().endswith(".json") else self.to_markdown()
        path = os.path.expanduser(path)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise EdgeLLMError(f"cannot write {path}: {e.strerror or e}") from None
        return path
