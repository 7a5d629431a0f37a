"""`edgellm chat` without a terminal (a pipe) is the plain REPL: answers on stdout, notices and
errors on stderr, the same /commands, and bad input never ends the session."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def chat(stdin: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgellm.cli", "chat", "-c", "256", "--temp", "0", *flags],
                          input=stdin, capture_output=True, text=True, timeout=900)


def test_piped_chat_answers_and_runs_commands(tmp_path):
    saved = tmp_path / "chat.json"
    result = chat("Name a fruit.\n/set temp hot\n/nope\n/regen\n/stats\n"
                  f"/save {saved}\n/save {tmp_path}/missing/x.md\n\"\"\"two\nlines\"\"\"\n", "-n", "4")
    assert result.returncode == 0, result.stderr
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # /regen replaced the answer
    answer = messages[1]["content"]
    assert result.stdout.count(answer + "\n") >= 2  # first answer and the regenerated one, on stdout
    err = result.stderr
    assert "error: /set temp: 'hot' is not a number" in err
    assert "error: Unknown command /nope (see /help)" in err
    assert "prompt 13 tokens: 12 reused from the cache, 1 prefilled" in err  # /stats after /regen
    assert f"error: /save: cannot write {tmp_path}/missing/x.md: No such file or directory" in err


def test_exit_command_ends_the_session():
    result = chat("/exit\nName a fruit.\n")
    assert (result.returncode, result.stdout) == (0, "")


def test_bad_flags_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    for flags, message in (
        (["-n", "0"], "edgellm: error: -n must be positive or -1, got 0\n"),
        (["--top-p", "2"], "edgellm: error: top-p must be in (0, 1], got 2.0\n"),
        ([str(bad)], f"edgellm: error: {bad}: "),
    ):
        result = chat("", *flags)
        assert result.returncode == 2 and result.stderr.startswith(message), (flags, result.stderr)
