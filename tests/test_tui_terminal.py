"""`edgellm chat` in a real terminal: tmux runs it, sends keys and reads the pane as a person
would see it (.ci/run installs tmux)."""

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.slow


class Pane:
    def __init__(self, command: list[str], width=100, height=30):
        assert shutil.which("tmux"), "tmux is needed for the terminal test (.ci/run installs it)"
        self.name = f"edgellm-test-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "TERM": "xterm-256color"}
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        " ".join(command) + "; sleep 600"], check=True, env=env)

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, predicate, timeout=300) -> str:
        """Poll the pane until predicate(text) holds (the timeout only guards against a hang)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if predicate(text):
                return text
            assert time.monotonic() < deadline, f"the pane never got there:\n{text}"
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_chat_in_a_terminal():
    # -n 5000: still answering (the context shifting) when Esc arrives, however fast decode is
    pane = Pane([sys.executable, "-m", "edgellm.cli", "chat", "-c", "256", "--temp", "0", "-n", "5000"])
    try:
        pane.wait_for(lambda t: "ctx 4/256" in t)  # loaded and warmed up: the status line
        pane.keys("Tell me a story.", "Enter")
        pane.wait_for(lambda t: "answering…" in t)
        pane.wait_for(lambda t: len(_answer_lines(t)) > 0)  # streaming
        pane.keys("Escape")
        screen = pane.wait_for(lambda t: "[stopped]" in t)
        assert "› Tell me a story." in screen
        assert "TTFT" in screen and "tok/s" in screen  # the status line after the answer
        pane.keys("/exit", "Enter")
        pane.wait_for(lambda t: "ctx" not in t)  # the app is gone; the shell's sleep holds the pane
    finally:
        pane.close()


def _answer_lines(screen: str) -> list[str]:
    """Lines between the user's message and the prompt box."""
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if "› Tell me a story." in line), None)
    end = next((i for i, line in enumerate(lines) if "▔▔▔" in line), len(lines))
    return [line for line in lines[start + 1 : end] if line.strip()] if start is not None else []
