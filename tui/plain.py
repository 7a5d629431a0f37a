"""`edgellm chat --plain`: a line REPL with the same commands, for SSH sessions, small boards and
pipes (it is what `edgellm chat` runs when stdout is not a terminal).

Answers go to stdout; prompts, notices and figures go to stderr, so `edgellm chat < questions.txt
> answers.txt` keeps only the answers. Ctrl+C stops an answer and keeps it; at the prompt a
second Ctrl+C (or Ctrl+D, or /exit) quits.
"""

from __future__ import annotations

import sys
import time

from edgellm.chat import ChatSession
from edgellm.errors import EdgeLLMError
from edgellm.tui.app import QUIT_WINDOW_S, multiline_open, strip_quotes
from edgellm.tui.commands import is_command, run_command, shift_notice


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def read_message(interactive: bool) -> str | None:
    """One message: a line, or the lines of a \"\"\"...\"\"\" block. None at end of input."""
    text = input(">>> " if interactive else "")
    while multiline_open(text):
        text += "\n" + input("... " if interactive else "")
    return text


def stream_answer(stream, out=sys.stdout) -> None:
    """Print an answer as it streams; Ctrl+C stops it (the session keeps what was printed)."""
    try:
        for piece in stream:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        stream.close()  # the session stores the partial answer as it closes
        out.write("\n[stopped]")
    out.write("\n")
    out.flush()


def run_plain(chat: ChatSession, model_name: str, interactive: bool | None = None) -> int:
    if interactive is None:
        interactive = sys.stdin.isatty()
    chat.on_shift = lambda n_keep, n_discard: _note("\n" + shift_notice(n_keep, n_discard))
    if interactive:
        _note(f"edgellm chat · {model_name} · /help for commands, Ctrl+C stops an answer, Ctrl+D quits")
    last_interrupt = 0.0
    while True:
        try:
            line = read_message(interactive)
        except EOFError:
            return 0
        except KeyboardInterrupt:
            now = time.monotonic()
            if now - last_interrupt < QUIT_WINDOW_S:
                _note("")
                return 0
            last_interrupt = now
            _note("\n(Ctrl+C again to quit)")
            continue
        text = line.strip()
        if not text:
            continue
        if is_command(text):
            reply = run_command(chat, text)
            if reply.action == "exit":
                return 0
            if reply.action == "regen":
                stream_answer(chat.regen())
                _stats(chat, interactive)
            elif reply.text:
                _note(("error: " if reply.error else "") + reply.text)
            continue
        try:
            stream_answer(chat.send(strip_quotes(text)))
        except EdgeLLMError as e:
            _note(f"error: {e}")
            continue
        _stats(chat, interactive)


def _stats(chat: ChatSession, interactive: bool) -> None:
    s = chat.last
    if interactive:
        _note(f"[ ctx {chat.n_past}/{chat.n_ctx} · reused {s.reused} · prefill {s.prefilled} tok "
              f"{s.prefill_tok_s:.0f} tok/s · gen {len(s.tokens)} tok {s.decode_tok_s:.1f} tok/s ]")
