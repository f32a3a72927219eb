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


_WALKED = (str, dict, list)


def _find(data: Any) -> str | None:
    """Iterative (a deeply nested body cannot exhaust the recursion limit here), and a value's path is kept
    as a link to its parent's, made into text only for the one found: a body of half a million numbers
    is walked in milliseconds, not the half second that building each one's path took."""
    stack: list[tuple[Any, Any]] = [(data, None)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return _dotted(path)
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):
                if _SURROGATE.search(k):
                    return _dotted(("<key>", path))
                if isinstance(v, _WALKED):
                    stack.append((v, (k, path)))
        elif isinstance(value, list):
            walked = [i for i, v in enumerate(value) if isinstance(v, _WALKED)]  # numbers need no look
            stack.extend((value[i], (i, path)) for i in reversed(walked))
    return None


def _dotted(path: Any) -> str:
    parts: list[str] = []
    while path is not None:
        name, path = path
        parts.append(str(name))
    return ".".join(reversed(parts)) or "body"
