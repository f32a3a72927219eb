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
# Every pattern above starts at one of these words, in any case: a text without any of them (nearly every
# log value: a method, a path, a model name, an id) needs no substitution. Looked for as substrings of the
# case-folded text: a regular expression doing the same case-insensitively took 6 us for an access line.
# Case folding maps every character re's IGNORECASE matches to these words' letters onto that letter,
# except two it matches to "i": the dotless i and the dotted capital I (which folds to "i" and U+0307);
# a text with either goes the patterns' way.
_WORDS = ("bearer", "authorization", "apikey", "api_key", "api-key", "adminkey", "admin_key", "admin-key",
          "accesstoken", "access_token", "access-token", SECRET_PREFIX)
_UNFOLDED = ("\u0131", "\u0307")
_PLAIN = frozenset({int, float, bool, type(None)})  # a line's values that hold no text
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
    if not _has_word(text):
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
    """structlog processor: runs last before rendering, on every record (ours and foreign ones).

    A line of flat values (the access line: strings, numbers, None) is searched once, its strings joined:
    every pattern needs a leading word or a secret inside one value, and a joined text holds every
    substring its parts hold. Only a line where that search finds something is walked value by value."""
    texts: list[str] = []
    for value in event.values():
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif kind not in _PLAIN:
            break
    else:
        if _clean("\n".join(texts)):
            return event
    return {k: redact_value(v) for k, v in event.items()}


def _clean(text: str) -> bool:
    return not _has_word(text) and not any(secret in text for secret in _secrets)


def _has_word(text: str) -> bool:
    folded = text.casefold()
    for word in _WORDS:
        if word in folded:
            return True
    return _UNFOLDED[0] in folded or _UNFOLDED[1] in folded
