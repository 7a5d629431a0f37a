"""The Textual chat, driven by Pilot on the real bundled model (greedy, answers of a few tokens).

Each test runs one app in asyncio.run; `until` polls the app between Pilot pauses (its timeout is a
hang guard, not a speed requirement).
"""

import asyncio
import json
import time

import pytest

import edgellm
from edgellm.sampling import SamplingParams
from edgellm.tui.app import AssistantMessage, ChatApp, Notice, PromptInput, UserMessage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(model_path):
    return edgellm.load(model_path, ctx=256)


async def until(pilot, condition, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the app did not get there"
        await pilot.pause(0.05)


async def send(pilot, *texts):
    """Type each text into the prompt and press Enter; wait until the answer (if any) is done."""
    for text in texts:
        pilot.app.query_one(PromptInput).load_text(text)
        await pilot.press("enter")
        await pilot.pause()
        await until(pilot, lambda: not pilot.app.generating)


def run_chat(gemma, scenario, max_tokens=6, system=None):
    """Run scenario(app, pilot) in a loaded chat app; returns the app."""
    gemma.set_context(256)

    async def main():
        app = ChatApp(llm=gemma, system=system, params=SamplingParams(temperature=0.0), max_tokens=max_tokens,
                      cursor_blink=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready)
            await scenario(app, pilot)
        return app

    return asyncio.run(main())


def notices(app, kind=None):
    return [str(n.render()) for n in app.query(Notice) if kind is None or n.has_class(kind)]


def test_a_message_streams_an_answer_into_the_chat(gemma):
    async def scenario(app, pilot):
        await send(pilot, "Name a fruit.")
        [user] = app.query(UserMessage)
        [answer] = app.query(AssistantMessage)
        assert str(user.render()) == "› Name a fruit."
        assert answer.source == app.chat.messages[-1]["content"] != ""
        status = str(app.query_one("#status").render())
        assert "ctx 18/256" in status and "gen " in status and "tok/s" in status

    run_chat(gemma, scenario)


def test_escape_stops_the_answer_and_keeps_it(gemma):
    async def scenario(app, pilot):
        app.query_one(PromptInput).load_text("Tell me a long story.")
        await pilot.press("enter")
        await until(pilot, lambda: len(app._answer_text) > 0)
        await pilot.press("escape")
        await until(pilot, lambda: not app.generating)
        assert app.chat.last.stop_reason == "stopped" and len(app.chat.last.tokens) < 200
        [answer] = app.query(AssistantMessage)
        assert answer.source == app.chat.messages[-1]["content"] != ""  # on screen and in the history
        assert notices(app)[-1] == "[stopped]"

    run_chat(gemma, scenario, max_tokens=200)


def test_clear_forgets_the_conversation(gemma):
    async def scenario(app, pilot):
        await send(pilot, "Name a fruit.")
        await send(pilot, "/clear")
        assert not app.query(UserMessage) and not app.query(AssistantMessage)
        assert app.chat.messages == [{"role": "system", "content": "Be brief."}]
        assert notices(app)[-1] == "Conversation cleared."

    run_chat(gemma, scenario, system="Be brief.")


def test_regen_replaces_the_last_answer(gemma):
    async def scenario(app, pilot):
        await send(pilot, "Name a fruit.")
        first = app.query_one(AssistantMessage).source
        await send(pilot, "/regen")
        [answer] = app.query(AssistantMessage)
        assert answer.source == first  # greedy
        assert app.chat.last.prefilled == 1  # everything but the last prompt token came from the cache

    run_chat(gemma, scenario)


def test_set_changes_settings_and_reports_bad_values(gemma):
    async def scenario(app, pilot):
        await send(pilot, "/set temp 0.5", "/set top_k 7", "/set temp hot", "/set top_p 2", "/set colour blue")
        assert (app.chat.params.temperature, app.chat.params.top_k) == (0.5, 7)
        assert notices(app, "error") == [
            "/set temp: 'hot' is not a number",
            "/set top_p: top-p must be in (0, 1], got 2.0",
            "/set: unknown setting 'colour' (temp, top_k, top_p, min_p, max_tokens, ctx)",
        ]

    run_chat(gemma, scenario)


def test_save_writes_the_conversation_and_reports_a_bad_path(gemma, tmp_path):
    async def scenario(app, pilot):
        await send(pilot, "Name a fruit.", f"/save {tmp_path / 'chat.json'}",
                   f"/save {tmp_path / 'no-such-dir' / 'chat.md'}")
        saved = json.loads((tmp_path / "chat.json").read_text())
        assert saved["messages"] == app.chat.messages
        assert notices(app, "error") == [
            f"/save: cannot write {tmp_path / 'no-such-dir' / 'chat.md'}: No such file or directory"]

    run_chat(gemma, scenario)


def test_unknown_command_is_a_message_not_a_crash(gemma):
    async def scenario(app, pilot):
        await send(pilot, "/frobnicate now")
        assert notices(app, "error") == ["Unknown command /frobnicate (see /help)"]
        assert app.chat.messages == []

    run_chat(gemma, scenario)


def test_triple_quotes_span_lines(gemma):
    async def scenario(app, pilot):
        await pilot.press(*'"""ab', "enter", *'cd"""')
        assert app.query_one(PromptInput).text == '"""ab\ncd"""'  # Enter inside quotes: a new line
        await pilot.press("enter")
        await pilot.pause()
        await until(pilot, lambda: not app.generating)
        assert app.chat.messages[0] == {"role": "user", "content": "ab\ncd"}

    run_chat(gemma, scenario, max_tokens=2)


def test_a_context_shift_is_announced(gemma):
    async def scenario(app, pilot):
        await send(pilot, "/set ctx 64")
        await send(pilot, "Summarize: " + "the quick brown fox jumps over the lazy dog " * 8)
        assert app.chat.last.shifts >= 1 and app.chat.n_past <= 64
        [notice] = notices(app, "shift")
        assert notice.startswith("Context full: dropped ")

    run_chat(gemma, scenario, max_tokens=4)


def test_ctrl_c_twice_quits_when_idle(gemma):
    async def scenario(app, pilot):
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.is_running
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running

    run_chat(gemma, scenario)


def test_system_sets_and_shows_the_system_prompt(gemma):
    async def scenario(app, pilot):
        await send(pilot, "/system", "/system Answer in French.", "/system")
        assert app.chat.messages == [{"role": "system", "content": "Answer in French."}]
        assert notices(app)[-3:] == ["No system prompt.", "System prompt set.", "System prompt: Answer in French."]

    run_chat(gemma, scenario)
