"""Log probabilities on the wire, in OpenAI's two shapes, from the engines' `TokenLogprob`s:

- chat (`logprobs: true`, `top_logprobs: k`): `{"content": [{"token", "logprob", "bytes", "top_logprobs":
  [{"token", "logprob", "bytes"}, ...]}], "refusal": null}`, per choice, and per chunk when streamed;
- completions (`logprobs: k`, the legacy shape): `{"tokens": [...], "token_logprobs": [...], "top_logprobs":
  [{token: logprob, ...}, ...], "text_offset": [...]}`, where a token's offset counts characters from the
  start of the choice's text (as vLLM counts them); with `echo` the prompt's tokens come first, the first
  of them with a null logprob and null alternatives (nothing before it predicts it: engines mark it
  UNSCORED).

Plain dicts, encoded once: a streamed token's logprobs cost one json.dumps, not a pydantic model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmops.engines.base import TokenLogprob


def _bytes(token: TokenLogprob) -> list[int] | None:
    return list(token.bytes) if token.bytes is not None else None


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t),
                         "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": _bytes(a)} for a in t.top]}
                        for t in tokens],
            "refusal": None}


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """`offset`: where the first token starts in the choice's text (the characters sent before it)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in tokens],
            "token_logprobs": [None if math.isnan(t.logprob) else t.logprob for t in tokens],
            "top_logprobs": [None if math.isnan(t.logprob) else {a.token: a.logprob for a in t.top} for t in tokens],
            "text_offset": offsets}
