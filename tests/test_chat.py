"""The conversation engine (edgellm.chat): prefix reuse, context shift, stopping, saving.

Reuse and memory run on the real bundled model (greedy, short answers); the context-shift
mechanics run on a tiny random model with a byte vocabulary, where hundreds of tokens take
milliseconds. Gemma-3-270M as bundled is the pre-trained model, so its "answers" are not chat
answers; the engine does not care.
"""

import json
import threading

import numpy as np
import pytest

import edgellm
from edgellm.chat import ChatSession, common_prefix
from edgellm.errors import EdgeLLMError
from edgellm.sampling import SamplingParams
from tests.tiny_gguf import write_tiny_model

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def gemma(model_path):
    return edgellm.load(model_path, ctx=256)


@pytest.fixture
def session(gemma):
    gemma.set_context(256)
    return ChatSession(gemma, system="Answer in one word.", params=GREEDY, max_tokens=8)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("tiny") / "chat.gguf", "llama", n_vocab=320, vocab=True)
    return edgellm.load(path, threads=1, ctx=64)


def count_evaluated(llm, monkeypatch) -> list[int]:
    """Patch llm so that every forward pass appends its batch size to the returned list."""
    sizes = []
    real_eval = llm._eval

    def counting_eval(ids, all_logits):
        sizes.append(len(ids))
        return real_eval(ids, all_logits)

    monkeypatch.setattr(llm, "_eval", counting_eval)
    return sizes


def test_next_turn_prefills_exactly_the_new_tokens(session, gemma, monkeypatch):
    list(session.send("Name a fruit."))
    held = session.cache_ids  # turn 1's prompt and answer
    sizes = count_evaluated(gemma, monkeypatch)
    list(session.send("Another one?"))
    conversation = session.tokenize(session.messages[:-1])
    assert conversation[: len(held)] == held  # the answer re-tokenizes as it was generated
    assert session.last.reused == len(held)
    new = len(conversation) - len(held)  # "<end_of_turn>\n<start_of_turn>user\nAnother one?..."
    assert session.last.prefilled == new == 14
    assert sizes[0] == new  # one forward pass over exactly those, then one token at a time
    assert sizes[1:] == [1] * (len(session.last.tokens) - 1)


def test_regen_evaluates_only_the_last_prompt_token(session):
    first = "".join(session.send("Name a fruit."))
    prompt = session.tokenize(session.messages[:-1])
    again = "".join(session.regen())
    assert (session.last.reused, session.last.prefilled) == (len(prompt) - 1, 1)
    assert again == first  # greedy: the same answer from the same cache
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]


def test_edited_message_reuses_up_to_the_edit(gemma):
    gemma.set_context(256)
    first = [{"role": "user", "content": "Tell me about cats and their habits."}]
    edited = [{"role": "user", "content": "Tell me about dogs and their habits."}]
    list(gemma.chat(first, max_tokens=4, temperature=0))
    list(gemma.chat(edited, max_tokens=4, temperature=0))
    session = gemma._chat_session
    a, b = session.tokenize(first), session.tokenize(edited)
    assert gemma.last_turn.reused == common_prefix(a, b) > 4
    assert gemma.last_turn.prefilled == len(b) - common_prefix(a, b)


def test_other_use_of_the_cache_is_noticed(session, gemma):
    list(session.send("Name a fruit."))
    gemma.logits([2, 100, 200])  # llm.logits() clears the cache and fills it with something else
    list(session.send("Another one?"))
    assert session.last.reused == 0
    assert session.cache_ids[: session.last.prompt_tokens] == session.tokenize(session.messages[:-1])


def test_stop_keeps_the_partial_answer(session):
    stop = threading.Event()
    session.max_tokens = 100
    pieces = []
    for piece in session.send("Tell me a story.", stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    assert session.last.stop_reason == "stopped"
    assert len(session.last.tokens) < 100
    assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces)}


def test_memory_stays_flat_over_three_contexts(gemma, reference_dir):
    """-c 256, long user messages and short answers until 3x the context has gone through."""
    gemma.set_context(256)
    chat = ChatSession(gemma, system="You are a helpful assistant.", params=GREEDY, max_tokens=8)
    words = (reference_dir / "texts" / "GPL-3.txt").read_text().split()
    rss, seen, shifts = [], 0, 0
    for turn in range(10):
        list(chat.send(" ".join(words[turn * 60 : (turn + 1) * 60])))
        seen += chat.last.prefilled + len(chat.last.tokens)
        shifts += chat.last.shifts
        assert chat.n_past <= 256
        rss.append(_rss_mb())
    assert seen > 3 * 256 and shifts >= 3
    assert chat.cache_ids[:4] == [2, 105, 2364, 107]  # <bos><start_of_turn>user\n: kept by every shift
    print(f"RSS over {seen} tokens, {shifts} shifts at -c 256: {[round(r) for r in rss]} MB")
    assert max(rss[3:]) - rss[2] < 8  # MB, after the context first filled


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_generation_past_the_context_shifts_and_keeps_the_start(tiny_llm):
    tiny_llm.set_context(64)
    chat = ChatSession(tiny_llm, system="sys", params=GREEDY, max_tokens=150)
    shifts = []
    chat.on_shift = lambda n_keep, n_discard: shifts.append((n_keep, n_discard))
    list(chat.send("hello"))
    start = chat.tokenize(chat.messages[:2])[: chat.n_keep(chat.messages)]
    assert len(chat.last.tokens) == 150 and chat.last.stop_reason == "length"
    assert len(shifts) == chat.last.shifts >= 2 and all(k == len(start) for k, _ in shifts)
    assert chat.n_past <= 64 and chat.cache_ids[: len(start)] == start


def test_next_turn_after_a_shift_still_reuses_the_cache(tiny_llm, monkeypatch):
    tiny_llm.set_context(256)
    chat = ChatSession(tiny_llm, params=GREEDY)
    stop = threading.Event()
    chat.on_shift = lambda n_keep, n_discard: stop.set()  # end the answer at its first shift
    list(chat.send("hello", stop))
    assert chat.last.shifts == 1
    held = len(chat.cache_ids)
    sizes = count_evaluated(tiny_llm, monkeypatch)
    chat.max_tokens = 2
    list(chat.send("more"))
    assert chat.last.reused == held and chat.last.shifts == 0
    assert sizes[0] == chat.last.prefilled == chat.last.prompt_tokens - held


def test_a_prompt_longer_than_the_context_is_shifted_not_refused(tiny_llm):
    tiny_llm.set_context(64)
    chat = ChatSession(tiny_llm, system="sys", params=GREEDY, max_tokens=4)
    list(chat.send("word " * 100))
    assert chat.last.shifts >= 1 and chat.last.dropped > 0
    assert chat.last.prompt_tokens < 64 and len(chat.last.tokens) == 4


def test_regen_past_the_sliding_window_still_reuses_the_prompt(tmp_path):
    # sliding-window layers keep ROLLBACK_TOKENS extra positions for this
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", n_vocab=320, vocab=True, window=16, swa_pattern=2)
    chat = ChatSession(edgellm.load(path, threads=1, ctx=256), params=GREEDY, max_tokens=40)
    list(chat.send("a message longer than the window"))
    prompt = chat.tokenize(chat.messages[:-1])
    assert len(prompt) + len(chat.last.tokens) > 2 * 16
    list(chat.regen())
    assert (chat.last.reused, chat.last.prefilled) == (len(prompt) - 1, 1)


def test_save_as_markdown_and_json(session, tmp_path):
    answer = "".join(session.send("Name a fruit."))
    session.save(str(tmp_path / "chat.md"))
    session.save(str(tmp_path / "chat.json"))
    assert (tmp_path / "chat.md").read_text() == (
        f"## System\n\nAnswer in one word.\n\n## User\n\nName a fruit.\n\n## Assistant\n\n{answer.strip()}\n")
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["messages"][-1] == {"role": "assistant", "content": answer}


def test_save_to_an_unwritable_path_is_an_error(session, tmp_path):
    with pytest.raises(EdgeLLMError, match="cannot write"):
        session.save(str(tmp_path / "missing-dir" / "chat.md"))


def test_conversation_must_end_with_a_user_message(gemma):
    with pytest.raises(EdgeLLMError, match="user message"):
        list(gemma.chat([{"role": "assistant", "content": "hi"}]))
