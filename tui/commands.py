"""The chat's /commands and status figures, shared by the Textual app and the plain REPL.

run_command(chat, line) does what a command line asks and returns what to show; bad input (an
unknown command, a bad value, an unwritable file) comes back as an error Reply, never raised.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from edgellm.chat import ChatSession, TurnStats
from edgellm.errors import EdgeLLMError
from edgellm.system import peak_rss_mb

HELP = """\
/clear              forget the conversation (the system prompt stays)
/regen              answer the last message again
/system TEXT        set the system prompt (/system alone shows it)
/set NAME VALUE     temp, top_k, top_p, min_p, max_tokens (-1: no limit) or ctx; /set shows them
/stats              figures of the last answer
/save FILE          the conversation as Markdown, or JSON for FILE.json
/help               this list
/exit               quit (also Ctrl+D, or Ctrl+C twice)
Esc or Ctrl+C stops an answer and keeps what it wrote. A message that starts with \"\"\" goes on
over several lines until a line ends with \"\"\"."""

# /set NAME -> (SamplingParams field, parse)
SAMPLING = {"temp": ("temperature", float), "top_k": ("top_k", int), "top_p": ("top_p", float),
            "min_p": ("min_p", float)}


@dataclass
class Reply:
    text: str = ""
    error: bool = False
    action: str | None = None  # "regen", "clear" or "exit": the front end does the rest


def current_rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def status_line(chat: ChatSession, model: str) -> str:
    """model · context used/total · TTFT · prefill and generation tok/s · memory."""
    s = chat.last
    parts = [model, f"ctx {chat.n_past}/{chat.n_ctx}"]
    if s.prompt_tokens:
        parts += [f"TTFT {s.ttft_s:.2f}s", f"prefill {s.prefill_tok_s:.0f} tok/s",
                  f"gen {s.decode_tok_s:.1f} tok/s", f"reused {s.reused}"]
    parts.append(f"mem {current_rss_mb():.0f} MB")
    return " · ".join(parts)


def stats_text(s: TurnStats) -> str:
    if not s.prompt_tokens:
        return "No answer yet."
    return (f"prompt {s.prompt_tokens} tokens: {s.reused} reused from the cache, {s.prefilled} prefilled "
            f"in {s.prefill_s:.2f}s ({s.prefill_tok_s:.1f} tok/s)\n"
            f"answer {len(s.tokens)} tokens in {s.decode_s:.2f}s ({s.decode_tok_s:.1f} tok/s), "
            f"first after {s.ttft_s:.2f}s, stopped by {s.stop_reason}\n"
            f"context {s.n_past}/{s.n_ctx}; {s.shifts} context shifts dropped {s.dropped} tokens\n"
            f"memory {current_rss_mb():.0f} MB now, {peak_rss_mb():.0f} MB peak")


def shift_notice(n_keep: int, n_discard: int) -> str:
    return (f"Context full: dropped {n_discard} older tokens (kept the first {n_keep}: "
            f"system prompt and start). Earlier turns are no longer seen.")


def settings_text(chat: ChatSession) -> str:
    p = chat.params
    n = "no limit" if chat.max_tokens is None else chat.max_tokens
    return (f"temp {p.temperature} · top_k {p.top_k} · top_p {p.top_p} · min_p {p.min_p} · "
            f"max_tokens {n} · ctx {chat.n_ctx} · kv {chat.llm.kv_type}")


def _set(chat: ChatSession, args: str) -> Reply:
    name, _, value = args.partition(" ")
    name, value = name.strip().lower(), value.strip()
    if not name:
        return Reply(settings_text(chat))
    if name not in (*SAMPLING, "max_tokens", "ctx"):
        return Reply(f"/set: unknown setting {name!r} (temp, top_k, top_p, min_p, max_tokens, ctx)", error=True)
    if not value:
        return Reply(f"/set {name}: give a value", error=True)
    try:
        if name in SAMPLING:
            field, parse = SAMPLING[name]
            params = dataclasses.replace(chat.params, **{field: parse(value)})
            params.validate()
            chat.params = params
        elif name == "max_tokens":
            n = int(value)
            if n < -1 or n == 0:
                raise EdgeLLMError(f"max_tokens must be positive or -1, got {n}")
            chat.max_tokens = None if n == -1 else n
        else:
            n = int(value)
            train = chat.llm.hparams.n_ctx_train
            if not 8 <= n <= train:
                raise EdgeLLMError(f"ctx must be in [8, {train}], got {n}")
            chat.set_context(n)
    except ValueError:
        return Reply(f"/set {name}: {value!r} is not a number", error=True)
    except EdgeLLMError as e:
        return Reply(f"/set {name}: {e}", error=True)
    return Reply(settings_text(chat))


def run_command(chat: ChatSession, line: str) -> Reply:
    """Do what a /command line asks."""
    name, _, args = line.strip().partition(" ")
    name, args = name.lower(), args.strip()
    if name in ("/exit", "/quit", "/bye"):
        return Reply(action="exit")
    if name == "/help":
        return Reply(HELP)
    if name == "/clear":
        chat.clear()
        return Reply("Conversation cleared.", action="clear")
    if name == "/regen":
        if not any(m["role"] == "user" for m in chat.messages):
            return Reply("/regen: nothing to regenerate yet", error=True)
        return Reply(action="regen")
    if name == "/system":
        if not args:
            return Reply(f"System prompt: {chat.system}" if chat.system else "No system prompt.")
        chat.set_system(args)
        return Reply("System prompt set.")
    if name == "/set":
        return _set(chat, args)
    if name == "/stats":
        return Reply(stats_text(chat.last))
    if name == "/save":
        if not args:
            return Reply("/save: give a file name (FILE.md or FILE.json)", error=True)
        try:
            return Reply(f"Saved {len(chat.messages)} messages to {chat.save(args)}.")
        except EdgeLLMError as e:
            return Reply(f"/save: {e}", error=True)
    return Reply(f"Unknown command {name} (see /help)", error=True)


def is_command(text: str) -> bool:
    return text.startswith("/") and not text.startswith("//")
