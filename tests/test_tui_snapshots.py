"""Snapshots of what the chat screen shows (pytest-textual-snapshot; update with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs it reports).

Only screens without timings: the status line's tok/s figures change from run to run, and the
memory figure is pinned here for the same reason.
"""

from pathlib import Path

import pytest

from edgellm.tui.app import PromptInput
from tests.test_tui import until

APP = Path(__file__).parent / "snapshot_apps" / "chat_app.py"
SIZE = (100, 24)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fixed_memory_figure(monkeypatch):
    monkeypatch.setattr("edgellm.tui.commands.current_rss_mb", lambda: 500.0)


def typing(*lines):
    """run_before: wait for the model, then send each line."""

    async def run_before(pilot):
        await until(pilot, lambda: pilot.app.ready)
        for line in lines:
            pilot.app.query_one(PromptInput).load_text(line)
            await pilot.press("enter")
            await pilot.pause()

    return run_before


def test_ready_screen(snap_compare):
    assert snap_compare(APP, terminal_size=SIZE, run_before=typing())


def test_help(snap_compare):
    assert snap_compare(APP, terminal_size=SIZE, run_before=typing("/help"))


def test_errors_are_shown_in_the_chat(snap_compare):
    assert snap_compare(APP, terminal_size=SIZE, run_before=typing("/set temp hot", "/nope", "/save /no/such/dir/x.md"))
