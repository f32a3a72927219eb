"""Checks every request body gets, whatever its model: applied once, where the body is read
(middleware/body_limit.py), not field by field.

A lone UTF-16 surrogate (`"\\ud800"` in JSON) is valid JSON but not text: it cannot be encoded as UTF-8,
so a tokenizer, a log line or the JSON answer echoing it would fail with a 500. It is refused with a 400
naming the field (e.g. `messages.0.content`)."""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate_field(body: bytes) -> str | None:
    """The dotted path of the first string (or object key) holding a lone surrogate, or None. Cheap on
    ordinary bodies: the JSON is parsed only when a surrogate escape appears in the raw bytes at all."""
    if not _ESCAPE.search(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing reports it
    return _find(data)


def _find(data: Any) -> str | None:
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:  # iterative: a deeply nested body cannot exhaust the recursion limit here
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return ".".join(path) or "body"
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):
                if _SURROGATE.search(k):
                    return ".".join((*path, "<key>")) or "body"
                stack.append((v, (*path, k)))
        elif isinstance(value, list):
            stack.extend((v, (*path, str(i))) for i, v in reversed(list(enumerate(value))))
    return None
