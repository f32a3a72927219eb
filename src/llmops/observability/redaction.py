"""Secrets never leave the process: one redaction applied to every log record (the project's, uvicorn's and
the libraries'), rendered tracebacks included, and to tracing span attributes.

What is replaced by `[REDACTED]`: the credential after `Bearer`, the value of an `X-API-Key`,
`X-Admin-Key`, `Authorization`, `api_key`/`apikey`/`admin_key` header, query parameter or field, any
string in the project's key format (`sk-llmops-...`), and the literal secrets registered with
`register_secret` (the admin key, at start-up). Every pattern is linear-time: a fixed prefix then a bounded
character class, so redacting a hostile log line cannot stall the process."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

SECRET_PREFIX = "sk-llmops-"  # stores/keys.py's (not imported: logging must import nothing of the app)
MASK = "[REDACTED]"
_VALUE = r"[^\s\"'&,;)}\]<>]+"
_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s{1,8})" + _VALUE),
    re.compile(r"(?i)(\b(?:x-api-key|x-admin-key|authorization|api[_-]?key|admin[_-]?key|access[_-]?token)"
               r"[\"']?\s{0,4}[:=]\s{0,4}[\"']?(?:bearer\s{1,8})?)" + _VALUE),
    re.compile("()" + re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_\-]*"),
)
# Every pattern above starts at one of these words: a text with none of them (nearly every log value: a
# method, a path, a model name, an id) needs no substitution, and one search says so.
_ANCHORS = re.compile(r"(?i)bearer|authorization|api[_-]?key|admin[_-]?key|access[_-]?token|"
                      + re.escape(SECRET_PREFIX))
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """A literal that must never be logged (the admin key). Empty or very short values are ignored: they
    would mask ordinary text (settings refuse such an admin key anyway)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if _ANCHORS.search(text) is None:
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with every string in it redacted (dicts, lists and tuples walked a few levels deep)."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, int | float):  # most of a log line's other values: no ABC check
        return value
    if depth >= 4:
        return value
    if isinstance(value, Mapping):
        return {k: redact_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v, depth + 1) for v in value)
    return value


def redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: runs last before rendering, on every record (ours and foreign ones)."""
    return {k: redact_value(v) for k, v in event.items()}
