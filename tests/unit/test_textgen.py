from __future__ import annotations

import pytest

from llmops.engines.base import Message, SamplingParams, TextRequest
from llmops.engines.chat_format import FALLBACK_STOPS, render_fallback
from llmops.engines.hf_stream import TextAccumulator
from llmops.engines.textgen import find_stop, prepare_fallback, resolve_max_tokens
from llmops.errors import ContextLengthExceeded


def test_fallback_transcript() -> None:
    text = render_fallback([Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello"),
                            Message("user", "Capital of France?")])
    assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello\nUser: Capital of France?\nAssistant:"


def test_fallback_adds_turn_stops_after_the_requests() -> None:
    req = TextRequest("r", SamplingParams(stop=("END",)), messages=(Message("user", "x"),))
    prepared = prepare_fallback(req)
    assert prepared.stops == ("END", *FALLBACK_STOPS)
    assert prepared.fallback_chat


def test_budget() -> None:
    assert resolve_max_tokens(None, 10, 100, 256) == 90
    assert resolve_max_tokens(None, 10, 1000, 256) == 256
    assert resolve_max_tokens(90, 10, 100, 256) == 90
    with pytest.raises(ContextLengthExceeded) as info:
        resolve_max_tokens(91, 10, 100, 256)
    assert info.value.param == "max_tokens"
    with pytest.raises(ContextLengthExceeded):
        resolve_max_tokens(None, 100, 100, 256)


def test_find_stop() -> None:
    assert find_stop("abc\nUser: x", ["\nUser:", "zzz"]) == 3
    assert find_stop("abc", ["\nUser:"]) == -1


def test_accumulator_holds_back_possible_stop_prefix() -> None:
    vocab = {1: "Paris", 2: ".", 3: "\n", 4: "User", 5: ":", 6: " more"}
    sent: list[str] = []
    acc = TextAccumulator(lambda ids: "".join(vocab[i] for i in ids), ["\nUser:"], lambda s: sent.append(s) or False)
    for t in (1, 2, 3, 4):
        acc.add([t])
    assert "".join(sent) in ("Paris", "Paris.")  # "\nUser" could still become the stop: held back
    acc.add([5])
    assert acc.stopped
    acc.add([6])
    assert "".join(sent) == "Paris."


def test_accumulator_flushes_the_tail() -> None:
    sent: list[str] = []
    acc = TextAccumulator(lambda ids: "ab" * len(ids), ["zzzz"], lambda s: sent.append(s) or False)
    acc.add([1])
    acc.flush()
    assert "".join(sent) == "ab"
