"""`edgellm chat`: a Textual chat on a ChatSession.

The model loads, and its kernels compile on a first run, in a worker thread while the screen
says so. Answers stream from another worker thread: it only appends to a string, and a timer on
the UI side re-renders the Markdown ten times a second, so the UI never waits on the model or the
model on the UI. Esc or Ctrl+C sets a threading.Event that the session checks before each token;
what was generated stays on screen and in the conversation.
"""

from __future__ import annotations

import os
import threading
import time

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import LoadingIndicator, Markdown, Static, TextArea

from edgellm.chat import ChatSession
from edgellm.errors import EdgeLLMError
from edgellm.gguf_file import GGUFError
from edgellm.sampling import SamplingParams
from edgellm.tui.commands import is_command, run_command, shift_notice, status_line

QUIT_WINDOW_S = 2.0  # a second Ctrl+C within this many seconds quits


def strip_quotes(text: str) -> str:
    """A \"\"\"...\"\"\" message without its quotes."""
    body = text.strip()
    if body.startswith('"""'):
        body = body[3:]
        if body.endswith('"""'):
            body = body[:-3]
    return body.strip("\n")


def multiline_open(text: str) -> bool:
    """True while a message that opened with \"\"\" has not been closed."""
    body = text.strip()
    return body.startswith('"""') and (len(body) < 6 or not body.endswith('"""'))


class PromptInput(TextArea):
    """Enter sends; Shift+Enter or Ctrl+J adds a line, and so does Enter inside \"\"\" quotes."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    async def _on_key(self, event) -> None:
        if event.key == "enter" and not multiline_open(self.text):
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self.text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


class UserMessage(Static):
    pass


class AssistantMessage(Markdown):
    pass


class Notice(Static):
    pass


class ChatApp(App):
    CSS = """
    #log { height: 1fr; padding: 0 1; }
    UserMessage { margin: 1 0 0 0; padding: 0 1; background: $boost; color: $text; }
    AssistantMessage { margin: 0; padding: 0 1; }
    Notice { margin: 1 0 0 0; padding: 0 1; color: $text-muted; }
    Notice.error { color: $error; }
    Notice.shift { color: $warning; }
    #prompt { height: auto; max-height: 10; border: tall $accent; }
    #status { height: 1; padding: 0 1; background: $panel; color: $text-muted; }
    LoadingIndicator { height: 3; }
    """
    BINDINGS = [
        Binding("escape", "stop", "Stop the answer", show=False),
        Binding("ctrl+c", "interrupt", "Stop / quit", show=False, priority=True),
        Binding("ctrl+d", "quit_if_empty", "Quit", show=False),
    ]

    class Loaded(Message):
        pass

    class Progress(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class Finished(Message):
        def __init__(self, error: str | None):
            super().__init__()
            self.error = error

    class Shifted(Message):
        def __init__(self, n_keep: int, n_discard: int):
            super().__init__()
            self.n_keep, self.n_discard = n_keep, n_discard

    def __init__(self, model: str | None = None, llm=None, system: str | None = None, ctx: int = 4096,
                 threads: int | None = None, kv_type: str = "f16", params: SamplingParams | None = None,
                 max_tokens: int | None = None, cursor_blink: bool = True):
        super().__init__()
        self.model_path, self.llm = model, llm
        self.load_args = dict(threads=threads, ctx=ctx, kv_type=kv_type)
        self.system, self.params, self.max_tokens = system, params or SamplingParams(), max_tokens
        self.cursor_blink = cursor_blink
        self.chat: ChatSession | None = None
        self.ready = False  # model loaded and warmed up
        self.generating = False
        self._stop = threading.Event()
        self._answer_text = ""  # what the worker has streamed so far
        self._answer_widget: AssistantMessage | None = None
        self._shown_text = ""
        self._last_interrupt = 0.0

    # --- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="log"):
            yield Notice("Loading the model…", id="loading-text")
            yield LoadingIndicator()
        yield PromptInput(id="prompt", show_line_numbers=False, soft_wrap=True, disabled=True,
                          compact=True, placeholder="Message (/help for commands)")
        yield Static("", id="status")

    def on_mount(self) -> None:
        self.title = "edgellm chat"
        self.query_one(PromptInput).cursor_blink = self.cursor_blink
        self.set_interval(0.1, self._refresh_answer)
        self._load()

    @property
    def model_name(self) -> str:
        return os.path.basename(self.llm.path) if self.llm is not None else "model"

    def _say(self, text: str, kind: str = "") -> Notice:
        notice = Notice(text, classes=kind, markup=False)
        self.query_one("#log").mount(notice)
        notice.scroll_visible()
        return notice

    def _update_status(self, extra: str = "") -> None:
        """The status line; extra (what is happening now: "answering…") goes first, where a
        narrow terminal does not cut it off."""
        text = status_line(self.chat, self.model_name) if self.chat is not None else "loading…"
        self.query_one("#status", Static).update((f"{extra} · " if extra else "") + text)

    # --- loading ------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def _load(self) -> None:
        try:
            if self.llm is None:
                import edgellm

                self.llm = edgellm.load(self.model_path, **self.load_args)
            self.post_message(self.Progress(
                f"Loaded {self.model_name}. Compiling the kernels (the first run only, may take a minute)…"))
            chat = ChatSession(self.llm, system=self.system, params=self.params, max_tokens=self.max_tokens)
            chat.warm_up()
            chat.on_shift = lambda n_keep, n_discard: self.post_message(self.Shifted(n_keep, n_discard))
            self.chat = chat
        except EdgeLLMError as e:
            where = f"{self.model_path}: " if self.model_path and isinstance(e, GGUFError) else ""  # as the CLI
            self.call_from_thread(self.exit, None, 2, f"edgellm: error: {where}{e}")
            return
        self.post_message(self.Loaded())

    def on_chat_app_progress(self, message: Progress) -> None:
        self.query_one("#loading-text", Notice).update(message.text)
        self.query_one("#status", Static).update(message.text)

    def on_chat_app_loaded(self, _message: Loaded) -> None:
        self.ready = True
        self.query_one(LoadingIndicator).remove()
        self.query_one("#loading-text", Notice).update(
            f"edgellm chat · {self.model_name} · Enter sends, \"\"\" or Shift+Enter for several lines, "
            f"Esc stops an answer, /help lists the commands.")
        prompt = self.query_one(PromptInput)
        prompt.disabled = False
        prompt.focus()
        self._update_status()

    # --- sending ------------------------------------------------------------------------------
    def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if not self.ready:
            return
        if self.generating:
            self.notify("Still answering: press Esc to stop it first.")
            return
        prompt = self.query_one(PromptInput)
        text = message.text.strip()
        prompt.clear()
        if is_command(text):
            self._command(text)
            return
        text = strip_quotes(text)
        if not text:
            return
        self.query_one("#log").mount(UserMessage(f"› {text}", markup=False))
        self._start(lambda stop: self.chat.send(text, stop))

    def _command(self, line: str) -> None:
        reply = run_command(self.chat, line)
        if reply.action == "exit":
            self.exit()
            return
        if reply.action == "clear":
            for widget in self.query("#log > UserMessage, #log > AssistantMessage, #log > Notice"):
                if widget.id != "loading-text":
                    widget.remove()
        if reply.action == "regen":
            answers = self.query("#log > AssistantMessage")
            if answers and self.chat.messages[-1]["role"] == "assistant":
                answers.last().remove()
            self._start(lambda stop: self.chat.regen(stop))
            return
        if reply.text:
            self._say(reply.text, "error" if reply.error else "")
        self._update_status()

    def _start(self, make_stream) -> None:
        self.generating = True
        self._stop.clear()
        self._answer_text = self._shown_text = ""
        self._answer_widget = AssistantMessage("")
        self.query_one("#log").mount(self._answer_widget)
        self._answer_widget.scroll_visible()
        self._update_status("answering… Esc stops")
        self._generate(make_stream)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, make_stream) -> None:
        error = None
        try:
            for piece in make_stream(self._stop):
                self._answer_text += piece
        except EdgeLLMError as e:
            error = str(e)
        self.post_message(self.Finished(error))

    def _refresh_answer(self) -> None:
        if self._answer_widget is not None and self._answer_text != self._shown_text:
            self._shown_text = self._answer_text
            self._answer_widget.update(self._shown_text)
            self.query_one("#log").scroll_end(animate=False)
            self._update_status(f"answering… {len(self.chat.last.tokens)} tokens, Esc stops")

    def on_chat_app_finished(self, message: Finished) -> None:
        self._refresh_answer()
        self.generating = False
        stats = self.chat.last
        if message.error:
            self._say(message.error, "error")
        elif stats.stop_reason == "stopped":
            self._say("[stopped]")
        self._answer_widget = None
        self._update_status()

    def on_chat_app_shifted(self, message: Shifted) -> None:
        text = shift_notice(message.n_keep, message.n_discard)
        # above the answer being written, so that it reads in order
        notice = Notice(text, classes="shift", markup=False)
        log = self.query_one("#log")
        if self._answer_widget is not None:
            log.mount(notice, before=self._answer_widget)
        else:
            log.mount(notice)
        self.notify(text, severity="warning")

    # --- keys ---------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generating:
            self._stop.set()

    def action_interrupt(self) -> None:
        if self.generating:
            self._stop.set()
            return
        now = time.monotonic()
        if now - self._last_interrupt < QUIT_WINDOW_S:
            self.exit()
            return
        self._last_interrupt = now
        self.notify("Press Ctrl+C again to quit.")

    async def action_quit(self) -> None:
        self._stop.set()  # a generating thread ends at its next token instead of running on
        self.exit()

    def action_quit_if_empty(self) -> None:
        if not self.generating and not self.query_one(PromptInput).text:
            self.exit()
