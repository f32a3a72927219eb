"""Secrets never leave the process: one redaction applied to every log record (the project's, uvicorn's and
the libraries'), rendered tracebacks included, to tracing span attributes, and to every error message a
client is sent (errors.filter_messages).

What is replaced by `[REDACTED]`:
- the credential after `Bearer`, and after any scheme (Basic, Token...) in an `Authorization` value;
- the value of any header, query parameter or field whose name holds api-key, admin-key, token (not
  "tokens"), secret, password, signature, credential or is `sig`, whatever comes around it
  (`X-Amz-Signature=`, `access_token:`, `(b'x-api-key', b'...')`);
- the password of a URL's user information (`redis://:pw@host`);
- any string in the project's key format (`sk-llmops-...`, in any case);
- the credentials third parties issue, recognised by their shapes (`_ISSUED`): OpenAI's (`sk-proj-`,
  `sk-svcacct-`, `sk-admin-`, `sk-None-` and legacy `sk-` keys) and Anthropic's (`sk-ant-api03-...`), any other
  `sk-` key of 32 characters or more, AWS access key ids (`AKIA`/`ASIA` and 16 capitals or digits), GitHub
  tokens (`ghp_` `gho_` `ghu_` `ghs_` `ghr_`, `github_pat_`), Slack tokens (`xoxb-` `xoxp-` `xoxa-` `xoxr-`
  `xoxs-` `xoxe-`, `xapp-`), Google API keys (`AIza...`), Hugging Face tokens (`hf_...`), Stripe secret and
  restricted keys (`sk_live_` `rk_live_` and their `_test_` forms), JWTs (`eyJ...`.`eyJ...`.`...`) and PEM
  private key blocks (`-----BEGIN ... PRIVATE KEY-----` to its END line, or to where the text stops being
  the block's);
- the literal secrets registered with `register_secret` (every secret the configuration holds or names,
  at start-up: settings.Settings.secret_values), in any case; not in a client error's message
  (`redact_shapes`), which quotes what the client sent: masking a literal there would confirm a guess.
A text that is not ASCII is also searched in its NFKC form with invisible format characters removed
(fullwidth letters, zero-width spaces): when that form holds a secret, it is the form logged, redacted.
Every pattern is linear-time: a fixed word, bounded repetitions, then a bounded character class (no
quantifier inside a repeated group, no unbounded repetition followed by anything that can fail but a JWT's
`.`, see `_ISSUED`), so redacting a hostile log line cannot stall the process."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

SECRET_PREFIX = "sk-llmops-"  # stores/keys.py's (not imported: logging must import nothing of the app)
MASK = "[REDACTED]"
_VALUE = r"(?!\[REDACTED\])[^\s\"'&,;)}\]<>]+"  # not a mask an earlier pattern put there
_NAME = (r"(?:api[_.-]?key|admin[_-]?key|authorization|token(?!s)|secret|passw(?:or)?d|signature|credential"
         r"|(?<![\w-])sig(?![\w-]))")
_SEPARATOR = r"[\"']?\s{0,16}(?:[:=]|(?<=[\"']),\s{0,4}b?)\s{0,16}[\"']?"
_SCHEME = r"(?:(?:bearer|basic|token|digest|apikey)\s{1,16})?"
_MASKED = r"(?!" + _SCHEME + r"\[REDACTED\])"  # the credential after it was masked already (by `Bearer`'s)


def _begins(head: str, inside: str = "A-Za-z0-9") -> str:
    r"""`head` (a regular expression of a fixed width, starting with a plain character), where it starts a word:
    no `inside` character before it (not `task-...`, `disk-admin-...`), or an escape that ends in one
    (`\nsk-...` in JSON text, `%22sk-...` or `%3Dsk-...` in a URL, `\u0022sk-...`). The look-behinds come
    after `head`, so the alternation starts with plain characters (re skips to the places they occur) and a
    place where `head` is not is left at once."""
    return (head + r"(?:(?<![" + inside + "]" + head + r")|(?<=\\[nrt]" + head + r")|(?<=%[0-9A-Fa-f]{2}" + head
            + r")|(?<=\\u[0-9A-Fa-f]{4}" + head + "))")


# The characters after `sk-` hold a capital or a digit within the first 64: a key does (32 random lower-case
# hex digits have no digit with odds ~1e-14), a hyphenated lower-case slug (`sk-admin-dashboard-settings-page`)
# does not.
_MIXED = r"(?=[a-z_-]{0,63}[A-Z0-9])"
_B64URL = r"[A-Za-z0-9_-]"
# Credentials third parties issue, by their shapes: one alternation, case-sensitive (the issuers' prefixes
# are; an upper-cased key is no longer the key). Each branch is a fixed prefix then one character class
# repeated, at least as many times as the shortest real credential has (an ordinary word is never one), with
# nothing after it that can fail but the AWS id's bounded end and the JWT's dots. A JWT starts where no
# base64url character precedes it (or after an escape), so a run of them is tried from its start only and
# each run followed by `.` is read at most twice (as a JWT's first segment, then as its second): linear,
# however many `eyJ` a run holds. Run last: a name's pattern masks the whole value a credential is in. The
# empty group, last, is the `m.group(1)` `_patterns` keeps (one first would hide the alternation's first
# characters from re).
_ISSUED = "|".join((
    _begins("sk-") + "(?:proj|svcacct|admin|None|ant)-" + _MIXED + r"[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
    _begins("sk-") + _MIXED + r"[A-Za-z0-9_-]{32,}",  # legacy OpenAI keys, and other providers' `sk-` keys
    _begins("A(?:KIA|SIA)") + r"[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
    _begins("gh[pousr]_") + r"[A-Za-z0-9]{36,}",  # GitHub
    _begins("github_pat_") + r"[A-Za-z0-9_]{22,}",
    _begins("xox[abeoprs]-") + r"[A-Za-z0-9-]{10,}",  # Slack
    _begins("xapp-") + r"[A-Za-z0-9-]{10,}",
    _begins("AIza") + r"[A-Za-z0-9_-]{35,}",  # Google API keys
    _begins("hf_") + r"[A-Za-z0-9]{20,}",  # Hugging Face
    _begins("sk_(?:live|test)_") + r"[A-Za-z0-9]{16,}",  # Stripe secret and restricted keys
    _begins("rk_(?:live|test)_") + r"[A-Za-z0-9]{16,}",
    _begins("eyJ", "A-Za-z0-9_-") + _B64URL + r"{4,}\.eyJ" + _B64URL + r"{4,}\." + _B64URL + "*",  # JWTs
))
# A PEM private key block: its own pattern, run first, as its words are apart (a name's pattern would mask
# `-----BEGIN` alone after `credential:`, leaving the key). Its body is base64, whitespace, `\` (`\n` escaped
# in JSON), `:` `,` and a `-` not starting `-----` (the `Proc-Type:`/`DEK-Info:` headers of an encrypted
# key) and `%` (percent-encoded, in a URL): it stops at the END line, which is taken with it, or where the
# text stops looking like the block (a message cut inside the block keeps nothing of the key).
_SPACE = r"(?: |\+|%20)"
_LABEL = r"(?:[A-Z0-9 +]|%20){0,32}PRIVATE" + _SPACE + "KEY(?:" + _SPACE + "BLOCK)?-----"
_PEM = r"()-----BEGIN" + _LABEL + r"(?:[A-Za-z0-9+/=\s\\:,%]|-(?!----))*(?:-----END" + _LABEL + ")?"
_PATTERNS = (
    re.compile(_PEM),
    re.compile(r"(?i)(\bbearer\s{1,16})" + _VALUE),
    re.compile(r"(?i)(" + _NAME + r"[\w.-]{0,32}?" + _SEPARATOR + _MASKED + _SCHEME + ")" + _VALUE),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,15}://[^\s:/@]{0,64}:)[^\s@/]{1,256}(?=@)"),
    re.compile("(?i)()" + re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_\-]*"),
    re.compile("(?:" + _ISSUED + ")()"),
)
# Every pattern above holds one of these words, in any case: a text without any of them (nearly every log
# value: a method, a path, a model name, an id) needs no substitution. Looked for as substrings of the
# lower-cased text (a regular expression doing the same case-insensitively took 6 us for an access line);
# a text that is not ASCII is looked at in its normal form, with the letters IGNORECASE matches to these
# words' letters mapped onto them (`redact_text`).
_WORDS = ("bearer", "authorization", "api", "admin", "token", "secret", "passw", "sig", "credential",
          SECRET_PREFIX, "://", "sk-", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
          "xox", "xapp-", "aiza", "hf_", "k_live_", "k_test_", "eyj", "-----begin")
_PLAIN = frozenset({int, float, bool, type(None)})  # a line's values that hold no text
_secrets: dict[str, re.Pattern[str]] = {}  # lower-cased secret -> its case-insensitive pattern
# `_clean`'s answer for the short strings log lines carry: most values come back line after line (a method, a
# path, a route, a model name, the logger's), and a lookup is ~30 ns where the 28 word searches are ~2 us.
# Emptied when full (ids seen once fill it) and whenever a secret is registered (an answer depends on them).
_clean_seen: dict[str, bool] = {}
_CLEAN_SEEN_MAX = 4096
_CLEAN_SEEN_LONGEST = 256


def register_secret(value: str | None) -> None:
    """A literal that must never be logged (the admin key, an upstream's key...), masked in any case. Empty
    or very short values are ignored: they would mask ordinary text (settings refuse such an admin key
    anyway). Its repr-escaped form too, for messages formatted with %r."""
    if not value or len(value) < 8:
        return
    for form in {value, repr(value)[1:-1]}:
        _secrets[form.lower()] = re.compile(re.escape(form), re.IGNORECASE)
    _clean_seen.clear()


def redact_text(text: str) -> str:
    if text.isascii():
        return _redact(text, text.lower())
    normal = _normal(text)
    if _clean_words(normal.translate(_DOTTED).lower()):  # no pattern's word, no secret, in any of their forms
        return text
    return _normal_first(text, normal, _run)


def redact_shapes(text: str) -> str:
    """`text` with what every pattern recognises masked (credentials by their shapes, values after a secret's
    name, a URL's password), but not compared with the registered literals: what a client error's message
    goes through (errors.filter_messages), where the text quotes the client, and masking a literal would tell
    the client its guess was one of the server's secrets. It depends on the text alone."""
    if text.isascii():
        lowered = text.lower()
        return _patterns(text) if any(word in lowered for word in _WORDS) else text
    normal = _normal(text)
    if not any(word in normal.translate(_DOTTED).lower() for word in _WORDS):
        return text
    return _normal_first(text, normal, _patterns)


def _normal_first(text: str, normal: str, run: Callable[[str], str]) -> str:
    """`run` over the normal form of a text that is not ASCII, when that finds something to mask (the mask
    then covers what fullwidth letters or invisible characters hid); else over the text as it is."""
    if normal != text:
        redacted = run(normal)
        if redacted != normal:
            return redacted
    return run(text)


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

    A line of flat values (the access line: strings, numbers, None) whose every string is clean (`_clean`:
    every pattern needs a leading word or a secret inside one value) is returned as it is; only a line
    where some value is not is walked value by value."""
    for value in event.values():
        kind = type(value)
        if kind is str:
            if not _clean_value(value):
                break
        elif kind not in _PLAIN:
            break
    else:
        return event
    return {k: redact_value(v) for k, v in event.items()}


def _clean_value(text: str) -> bool:
    """`_clean(text)`, remembered for short texts (`_clean_seen`)."""
    known = _clean_seen.get(text)
    if known is None:
        known = _clean(text)
        if len(text) <= _CLEAN_SEEN_LONGEST:
            if len(_clean_seen) >= _CLEAN_SEEN_MAX:
                _clean_seen.clear()
            _clean_seen[text] = known
    return known


def _clean(text: str) -> bool:
    """Whether `text` certainly needs no redaction: ASCII, without a registered secret nor a pattern's word."""
    return text.isascii() and _clean_words(text.lower())
