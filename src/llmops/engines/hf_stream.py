"""Streaming pieces for transformers' `generate`: incremental detokenization with stop strings, and
OpenAI's presence/frequency penalties."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmops.engines.textgen import find_stop


class TextAccumulator:
    """Turns generated token ids into text pieces. Text that could be the start of a stop sequence is
    held back until it is known not to be one; once a stop sequence appears, `stopped` is set."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str],
                 emit: Callable[[str], bool]) -> None:
        self._decode, self._stops, self._emit = decode, tuple(stops), emit
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already emitted
        self.stopped = False
        self.cancelled = False
        self._hold = max((len(s) for s in self._stops), default=1) - 1

    @property
    def tokens(self) -> int:
        return len(self._ids)

    def add(self, token_ids: Sequence[int]) -> None:
        if self.stopped or self.cancelled:
            return
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        cut = find_stop(text, self._stops)
        if cut >= 0:
            self.stopped = True
            self._send(text[:cut])
            return
        self._send(text[: max(self._sent, len(text) - self._hold)])

    def flush(self) -> None:
        if not self.stopped and not self.cancelled:
            self._send(self._decode(self._ids))

    def _send(self, upto: str) -> None:
        piece = upto[self._sent:]
        if piece:
            self._sent = len(upto)
            if self._emit(piece):
                self.cancelled = True


def penalty_processor(prompt_len: int, presence: float, frequency: float) -> Callable[[Any, Any], Any]:
    """OpenAI's penalties over the generated tokens: logit -= count*frequency + (count>0)*presence."""
    import torch

    def process(input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence

    return process
