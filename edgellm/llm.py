"""The Python API: load a GGUF model, tokenize, score, generate.

    llm = edgellm.load()                       # the bundled Gemma-3-270M
    for piece in llm.generate("Once upon a time", max_tokens=32):
        print(piece, end="", flush=True)

One token's path: generate() -> prefill(prompt ids) -> model.forward() -> sampler -> decode_one()
-> model.forward() -> ... each forward reads and extends the KV cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from threadpoolctl import ThreadpoolController

from edgellm import compile_ahead
from edgellm.default_model import default_model_path
from edgellm.errors import EdgeLLMError
from edgellm.gguf_file import GGUFError, GGUFFile
from edgellm.kernels import set_num_threads, team
from edgellm.kernels.dispatch import load_repack_code
from edgellm.kernels.footprint import release_linking_modules
from edgellm.kv_cache import KVCache
from edgellm.models import ARCHITECTURES
from edgellm.sampling import Sampler, SamplingParams
from edgellm.system import peak_rss_mb, physical_cores, release_library_pages, trim_heap
from edgellm.tokenizer import Tokenizer


WARM_UP_TOKENS = 64  # the batch that compiles the prefill kernels on a first run
# A longer batch runs as forward passes of at most this many tokens (llama.cpp's n_ubatch): as fast
# as one pass of 512 here, the logits bit for bit the same, and a quarter of the activations.
UBATCH = 128


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    tokens: list[int] = field(default_factory=list)  # generated ids, stop token excluded
    text: str = ""
    ttft_s: float = 0.0  # prompt in -> first token sampled
    prefill_s: float = 0.0
    decode_s: float = 0.0  # after the first token
    stop_reason: str = ""  # "eos", "length" or "context"

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = len(self.tokens) - 1  # the first token comes out of prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "tokens": list(self.tokens),
            "text": self.text,
            "ttft_s": self.ttft_s,
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "stop_reason": self.stop_reason,
            "peak_rss_mb": peak_rss_mb(),
        }


class LLM:
    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = None, ctx: int = 4096,
                 kv_type: str = "f16", on_compile=None):
        """on_compile: called once at the end of loading (the file and the settings checked), if
        this run will compile the kernels (a fresh install): a front end's notice, before the
        seconds that the tokenizer's and the kernels' compile take. A front end may instead set
        self.on_compile after loading: then it is called before the first forward pass."""
        self.path = os.fspath(path) if path is not None else os.fspath(default_model_path())
        if compile_ahead.has_gguf_magic(self.path):  # a fresh install: the compile overlaps the whole load
            team.start_compiling_serve()
        self.gguf = GGUFFile(self.path)
        arch = self.gguf.architecture
        if arch not in ARCHITECTURES:
            raise GGUFError(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
        self.model = ARCHITECTURES[arch](self.gguf)
        team.compile_weight_code({layer.weight.ggml_type for layer in self.model.linear_layers()
                                  if layer.weight is not None})
        self.hparams = self.model.hp
        model_kind = self.gguf.get("tokenizer.ggml.model")
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata) if model_kind not in (None, "none") else None
        if self.tokenizer is not None and self.tokenizer.n_vocab != self.hparams.n_vocab:
            raise GGUFError(f"vocabulary has {self.tokenizer.n_vocab} tokens but the embeddings have {self.hparams.n_vocab} rows")
        self.gguf.release_header()  # the model and the tokenizer have read what they keep
        if ctx is None or ctx <= 0:  # like llama.cpp's -c 0: the training context
            ctx = self.hparams.n_ctx_train
        self.n_ctx = int(ctx)
        self.threads = threads or physical_cores()
        if self.threads < 1:
            raise EdgeLLMError(f"threads must be >= 1, got {threads}")
        set_num_threads(self.threads)
        self._blas = ThreadpoolController()
        self.kv_type = kv_type
        self.kv_cache = KVCache(self.hparams, self.n_ctx, kv_type)
        self.last_stats = GenerationStats()
        # Called once, before the first forward pass, if that pass will compile the kernels
        # (a fresh install): front ends set it to say so instead of going silent for seconds.
        self.on_compile = None
        if on_compile is not None:  # given: said now, every check of the file and settings passed
            from edgellm.kernels import needs_compiling

            if needs_compiling():
                on_compile()
                self.on_compile = lambda: None  # said: the first pass still compiles as announced
        self._kernels_ready = False  # _compile_if_needed has run
        self._chat_session = None  # created by the first chat() call

    def set_context(self, n_ctx: int, swa_margin: int = 0) -> None:
        """A new, empty KV cache of n_ctx positions (swa_margin: see KVCache)."""
        if n_ctx < 8:
            raise EdgeLLMError(f"context must be at least 8 tokens, got {n_ctx}")
        self.kv_cache = KVCache(self.hparams, n_ctx, self.kv_type, swa_margin)
        self.n_ctx = n_ctx

    def shift_context(self, n_keep: int, n_discard: int) -> None:
        """Drop cache positions [n_keep, n_keep + n_discard) and slide the later ones down
        (llama.cpp's context shift; see KVCache.shift)."""
        self.kv_cache.shift(n_keep, n_discard, [block.attn.rope_factors for block in self.model.blocks])

    # --- text <-> ids -------------------------------------------------------------------------
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise EdgeLLMError(f"{self.path} has no vocabulary (tokenizer.ggml.model is none)")
        return self.tokenizer

    def tokenize(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        return self._need_tokenizer().encode(text, bos=bos, special=special)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self._need_tokenizer().decode(ids, special=special)

    # --- forward passes -----------------------------------------------------------------------
    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.hparams.n_vocab):
            raise EdgeLLMError(f"token id out of range [0, {self.hparams.n_vocab})")
        return ids

    def _eval(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run ids through the model at the next positions of the cache; return their logits."""
        start = self.kv_cache.n_past
        if start + len(ids) > self.kv_cache.n_ctx:
            raise EdgeLLMError(f"{start + len(ids)} tokens do not fit the context of {self.kv_cache.n_ctx} (use -c)")
        positions = np.arange(start, start + len(ids), dtype=np.int64)
        self._compile_if_needed(int(ids[0]))
        # BLAS runs single-threaded: the kernels spread a long batch's products over their own
        # pool of threads (kernels/dispatch.py), and BLAS's threads would only spin between
        # calls, stealing the cores the Numba kernels run on (2.5x slower decode).
        with self._blas.limit(limits=1, user_api="blas"):
            several = all_logits and len(ids) > UBATCH
            logits = np.empty((len(ids), self.hparams.n_vocab), np.float32) if several else None
            for s in range(0, len(ids), UBATCH):
                which = "all" if all_logits else "last" if s + UBATCH >= len(ids) else "none"
                part = self.model.forward(ids[s : s + UBATCH], positions[s : s + UBATCH], self.kv_cache, which)
                if several:  # each part's into one array (not parts, then a copy: twice the logits)
                    logits[s : s + UBATCH] = part
        self.kv_cache.n_past += len(ids)
        return logits if several else part

    def prepare(self) -> None:
        """What the first forward pass does first (_compile_if_needed), now: for a caller that
        watches the passes (calibration) and must not count the warm-up's."""
        self._compile_if_needed(0)

    def _compile_if_needed(self, token: int) -> None:
        """Before the first pass: every kernel the passes run made ready, then what start-up
        leaves resident and a run does not use given back: the shared libraries' pages (LLVM's
        code, ~68 MiB, serves nothing once the kernels are loaded; the importers'; those a run
        uses fault back), the kernels' LLVM linking modules and the heap's free pages. On a
        fresh install (on_compile set, the kernels not in numba's cache) on_compile is called
        and the kernels compile on warm-up passes, as llama.cpp warms up, so that the pass a
        caller times does not include it; otherwise a dry run loads them from the cache (~70
        ms), before any weight is read, so that the compiler's pages and the model's are never
        resident together."""
        if self._kernels_ready:
            return
        notice, self.on_compile = self.on_compile, None
        from edgellm.kernels import needs_compiling

        compiling = notice is not None and needs_compiling()
        if compiling:
            notice()
        if self.kv_cache.n_past:  # the warm-up passes need the empty cache
            return
        self._kernels_ready = True
        self._warm_up(token, dry=not compiling)
        team.load_team_code()
        load_repack_code()
        release_linking_modules()
        release_library_pages()
        trim_heap()
        self.model.repack_weights()  # after the compiler's pages have gone: never resident together
        if team.in_disk_cache(team.serve):  # a later run may start its compile early (compile_ahead)
            compile_ahead.mark_compiled()

    def _warm_up(self, token: int, dry: bool) -> None:
        """A batch long enough for the prefill paths (the parallel element-wise loops start at
        64k values) and one decode step, through the empty cache, emptied again afterwards.
        dry: every team job skipped (no weight read), for loading the kernels only. On a fresh
        install the passes are dry too while the team's code compiles in a second process
        (kernels/team.py), and real ones follow only if that process did not leave it in the
        disk cache (then it compiles here, on them)."""
        n = min(WARM_UP_TOKENS, self.kv_cache.n_ctx - 1)
        if n < 1:
            return
        with self._blas.limit(limits=1, user_api="blas"):
            if dry or team.start_compiling_serve():  # serve under way in a second process: compile the rest here
                # the jobs' outputs are garbage: a throwaway cache takes them, so that the real
                # one holds only what real passes wrote (and its pages stay untouched)
                with team.dry_run(), np.errstate(all="ignore"):
                    self._warm_up_passes(token, n, KVCache(self.hparams, n + 1, self.kv_type))
                if dry:
                    return
                team.wait_for_serve()
                if team.in_disk_cache(team.serve):  # compiled there: loaded with the rest, as on a warm start
                    return
            self._warm_up_passes(token, n, self.kv_cache)

    def _warm_up_passes(self, token: int, n: int, cache: KVCache) -> None:
        self.model.forward(np.full(n, token, np.int64), np.arange(n, dtype=np.int64), cache, "last")
        self.model.forward(np.array([token], np.int64), np.array([n], np.int64), cache, "last")
        cache.truncate(0)

    def logits(self, ids: Sequence[int], start: int = 0) -> np.ndarray:
        """float32 [len(ids) - start, n_vocab]: the next-token logits of positions start.. of ids,
        evaluated in a fresh context (the positions before start only fill the cache)."""
        ids = self._check_ids(ids)
        if not 0 <= start <= ids.size:
            raise EdgeLLMError(f"start {start} is outside the {ids.size} ids")
        self.kv_cache.clear()
        if start:
            self._eval(ids[:start], all_logits=False)
        if start == ids.size:
            return np.zeros((0, self.hparams.n_vocab), np.float32)
        return self._eval(ids[start:], all_logits=True)

    # --- generation ---------------------------------------------------------------------------
    def generate(
        self, prompt: str | Sequence[int], max_tokens: int = 64, temperature: float = 0.0,
        top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
        seed: int | None = 0, stop_at_eos: bool = True,
    ) -> Iterator[str]:
        """Stream the continuation of prompt (text is tokenized with BOS and control tokens parsed,
        as llama.cpp does) as text pieces; statistics land in `last_stats`."""
        tok = self._need_tokenizer()
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed))
        ids = tok.encode(prompt, bos=True, special=True) if isinstance(prompt, str) else list(prompt)
        ids_arr = self._check_ids(ids)
        if ids_arr.size == 0:
            raise EdgeLLMError("empty prompt")
        if ids_arr.size >= self.n_ctx:
            raise EdgeLLMError(f"prompt of {ids_arr.size} tokens does not fit the context of {self.n_ctx} (use -c)")
        stats = self.last_stats = GenerationStats(prompt_tokens=int(ids_arr.size))
        history = list(ids)
        decoder = tok.stream()
        pieces: list[str] = []

        self.kv_cache.clear()
        self._compile_if_needed(int(ids_arr[0]))
        t0 = time.perf_counter()
        logits = self._eval(ids_arr, all_logits=False)[-1]
        stats.prefill_s = time.perf_counter() - t0
        stats.stop_reason = "length"
        t_first = None
        for _ in range(max_tokens):
            token = sampler(logits, history)
            if t_first is None:
                t_first = time.perf_counter()
                stats.ttft_s = t_first - t0
            if stop_at_eos and token in tok.eog_ids:
                stats.stop_reason = "eos"
                break
            stats.tokens.append(token)
            history.append(token)
            piece = decoder.feed(token)
            if piece:
                pieces.append(piece)
                yield piece
            if len(stats.tokens) == max_tokens:
                break
            if self.kv_cache.n_past >= self.n_ctx:
                stats.stop_reason = "context"
                break
            logits = self._eval(np.array([token], np.int64), all_logits=False)[-1]
        rest = decoder.flush()
        if rest:
            pieces.append(rest)
            yield rest
        if t_first is not None:
            stats.decode_s = time.perf_counter() - t_first
        stats.text = "".join(pieces)

    def chat(self, messages: Sequence[dict], max_tokens: int | None = None, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
             seed: int | None = None, stop=None) -> Iterator[str]:
        """Stream the assistant's reply to messages ([{"role", "content"}], ending with a user
        turn), rendered with the model's chat template. Successive calls share the KV cache: only
        what is new since the longest common prefix with the last call is evaluated, and a
        conversation longer than the context shifts it (edgellm.chat). stop: a threading.Event
        that ends the reply early. Statistics land in `last_stats` and `last_turn`."""
        from edgellm.chat import ChatSession

        if self._chat_session is None:
            self._chat_session = ChatSession(self)
        session = self._chat_session
        session.params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        session.max_tokens = max_tokens
        return session.reply(messages, stop=stop)

    @property
    def last_turn(self):
        """The last chat() turn's TurnStats (reused/prefilled tokens, context shifts)."""
        return self._chat_session.last if self._chat_session is not None else None


def load(path: str | os.PathLike | None = None, threads: int | None = None, ctx: int = 4096,
         kv_type: str = "f16", on_compile=None) -> LLM:
    """Open a GGUF model (None: the bundled default model). kv_type: f16 (default), f32 or q8_0.
    on_compile: see LLM."""
    return LLM(path, threads=threads, ctx=ctx, kv_type=kv_type, on_compile=on_compile)
