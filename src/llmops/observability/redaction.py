"""Secrets never leave the process: one redaction applied to every log record (the project's, uvicorn's and
the libraries'), rendered tracebacks included, to tracing span attributes, and to every error message a
client is sent (errors.filter_messages).

What is replaced by `[REDACTED]`:
- the credential after `Bearer`, and after any scheme (Basic, Token...) in an `Authorization` value;
- the value of any header, query parameter or field whose name holds api-key, admin-key, token (not
  "tokens"), secret, password, signature, credential or is `sig`, whatever comes around it
  (`X-Amz-Signature=`, `access_token:`, `(b'x-api-key', b'...')`);
- the password of a URL's user information (`redis://:pw@host`);
- any string in the project's key format (`sk-llmops-...`, in any case) and Hugging Face tokens (`hf_...`);
- the literal secrets registered with `register_secret` (every secret the configuration holds or names,
  at start-up: settings.Settings.secret_values), in any case.
A text that is not ASCII is also searched in its NFKC form with invisible format characters removed
(fullwidth letters, zero-width spaces): when that form holds a secret, it is the form logged, redacted.
Every pattern is linear-time: a fixed word, bounded repetitions, then a bounded character class, so
redacting a hostile log line cannot stall the process."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, MutableMapping
from typing import Any

SECRET_PREFIX = "sk-llmops-"  # stores/keys.py's (not imported: logging must import nothing of the app)
MASK = "[REDACTED]"
_VALUE = r"(?!\[REDACTED\])[^\s\"'&,;)}\]<>]+"  # not a mask an earlier pattern put there
_NAME = (r"(?:api[_.-]?key|admin[_-]?key|authorization|token(?!s)|secret|passw(?:or)?d|signature|credential"
         r"|(?<![\w-])sig(?![\w-]))")
_SEPARATOR = r"[\"']?\s{0,16}(?:[:=]|(?<=[\"']),\s{0,4}b?)\s{0,16}[\"']?"
_SCHEME = r"(?:(?:bearer|basic|token|digest|apikey)\s{1,16})?"
_MASKED = r"(?!" + _SCHEME + r"\[REDACTED\])"  # the credential after it was masked already (by `Bearer`'s)
_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s{1,16})" + _VALUE),
    re.compile(r"(?i)(" + _NAME + r"[\w.-]{0,32}?" + _SEPARATOR + _MASKED + _SCHEME + ")" + _VALUE),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,15}://[^\s:/@]{0,64}:)[^\s@/]{1,256}(?=@)"),
    re.compile("(?i)()" + re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_\-]*"),
    re.compile(r"()\bhf_[A-Za-z0-9]{20,}"),
)
# Every pattern above holds one of these words, in any case: a text without any of them (nearly every log
# value: a method, a path, a model name, an id) needs no substitution. Looked for as substrings of the
# lower-cased text (a regular expression doing the same case-insensitively took 6 us for an access line);
# a text that is not ASCII is looked at in its normal form, with the letters IGNORECASE matches to these
# words' letters mapped onto them (`redact_text`).
_WORDS = ("bearer", "authorization", "api", "admin", "token", "secret", "passw", "sig", "credential",
          SECRET_PREFIX, "://", "hf_")
_PLAIN = frozenset({int, float, bool, type(None)})  # a line's values that hold no text
_secrets: dict[str, re.Pattern[str]] = {}  # lower-cased secret -> its case-insensitive pattern


def register_secret(value: str | None) -> None:
    """A literal that must never be logged (the admin key, an upstream's key...), masked in any case. Empty
    or very short values are ignored: they would mask ordinary text (settings refuse such an admin key
    anyway). Its repr-escaped form too, for messages formatted with %r."""
    if not value or len(value) < 8:
        return
    for form in {value, repr(value)[1:-1]}:
        _secrets[form.lower()] = re.compile(re.escape(form), re.IGNORECASE)


def redact_text(text: str) -> str:
    if text.isascii():
        return _redact(text, text.lower())
    normal = _normal(text)
    if _clean_words(normal.translate(_DOTTED).lower()):  # no pattern's word, no secret, in any of their forms
        return text
    if normal != text:
        redacted = _run(normal)
        if redacted != normal:
            return redacted
    return _run(text)


# The letters re's IGNORECASE matches to an ASCII one that NFKC leaves as they are (the long s and the Kelvin
# sign it maps itself): mapped first, so the lower-cased text holds a pattern's word whenever a pattern could
# match it.
_DOTTED = str.maketrans({"\u0131": "i", "\u0130": "i"})


def _clean_words(lowered: str) -> bool:
    return not any(word in lowered for word in _WORDS) and not any(secret in lowered for secret in _secrets)


# Unicode's format characters (category Cf: zero-width spaces and joiners, soft hyphen, bidi marks, tags), as
# one character class so they are removed at C speed (tests/unit/test_redaction.py checks it against
# unicodedata). Unicode 14, this Python's.
_FORMAT = re.compile("[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
                     "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
                     "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")


def _normal(text: str) -> str:
    """NFKC (fullwidth and other compatibility letters to plain ones), without format characters
    (zero-width spaces and joiners, soft hyphens, bidi marks)."""
    return _FORMAT.sub("", unicodedata.normalize("NFKC", text))


def _redact(text: str, lowered: str) -> str:
    """`text` (ASCII, `lowered` its lower case) with its secrets masked; the patterns run only when one of
    their words is there."""
    for secret, pattern in _secrets.items():
        if secret in lowered:
            text = pattern.sub(MASK, text)
    for word in _WORDS:
        if word in lowered:
            return _patterns(text)
    return text


def _run(text: str) -> str:
    """Every secret and every pattern, whatever the text holds (texts that are not ASCII)."""
    for pattern in _secrets.values():
        text = pattern.sub(MASK, text)
    return _patterns(text)


def _patterns(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with every string in it redacted: dicts (their keys too), lists and tuples walked a few levels
    deep; any other object (bytes, sets, exceptions...), or one nested deeper, as its redacted repr."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN:  # most of a log line's other values: no ABC check
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, int | float):
        return value
    if depth < 4 and isinstance(value, Mapping):
        return {redact_value(k, depth + 1): redact_value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return type(value)(redact_value(v, depth + 1) for v in value)
    try:
        return redact_text(repr(value))
    except Exception:  # a repr that raises: the line must still be written, and never raise into its caller
        return f"<{type(value).__name__} object: its repr failed>"


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
    """Whether `text` certainly needs no redaction: ASCII, without a registered secret nor a pattern's word."""
    return text.isascii() and _clean_words(text.lower())
