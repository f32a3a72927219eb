"""Secrets never leave the process: every log record (ours, uvicorn's, a library's), rendered tracebacks and
span attributes are redacted; tracebacks carry no locals; an escaped exception is answered once, in the
envelope, without closing the connection; log_step and library warnings give one short line each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import unicodedata
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmops.middleware.observe import Observer, Responder, method_label
from llmops.observability import logging as logmod
from llmops.observability import redaction
from llmops.observability.logging import ConsoleLine, configure_logging, log_step
from llmops.observability.metrics import Metrics, ModelLoad
from llmops.observability.redaction import redact_text
from llmops.observability.tracing import build_tracer
from llmops.stores import keys

KEY = "sk-llmops-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcdef"
ADMIN = "an-admin-key-of-enough-length-42"
PLAIN_SECRET = "zq8-a-literal-without-any-leading-word"


def test_the_key_format_is_the_stores() -> None:
    assert redaction.SECRET_PREFIX == keys.SECRET_PREFIX


@pytest.mark.parametrize(("text", "gone"), [
    (f"Authorization: Bearer {KEY}", KEY),
    ("authorization: bearer abc.def-ghi", "abc.def-ghi"),
    ("GET /v1/models?api_key=opensesame123&x=1", "opensesame123"),
    ("headers={'x-api-key': 'mysecretvalue'}", "mysecretvalue"),
    ('{"X-Admin-Key": "adminvalue99"}', "adminvalue99"),
    (f"the key {KEY} leaked", KEY[10:]),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("Authorization: Token t0kenvalue", "t0kenvalue"),
    ("api_key:            widelyspaced", "widelyspaced"),
    ("Authorization: Bearer             widelyspaced", "widelyspaced"),
    ("POST /v1/traces?token=OtlpQueryS3cret&x=1", "OtlpQueryS3cret"),
    ("HEAD /cdn/config.json?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=HfCdnS1g&Signature=CfS1g", "HfCdnS1g"),
    ("HEAD /cdn/config.json?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=HfCdnS1g&Signature=CfS1g", "CfS1g"),
    ("HEAD /cdn/config.json?X-Amz-Credential=AKIAX%2F1&X-Amz-Signature=HfCdnS1g", "AKIAX"),
    ("GET /v1/images/files/a.png?expires=1&sig=abcdef123", "abcdef123"),
    ("password=hunter22 and passwd: hunter33", "hunter22"),
    ("password=hunter22 and passwd: hunter33", "hunter33"),
    ("client_secret=s3cr3tvalue", "s3cr3tvalue"),
    ("warning: the first key in Redis at redis://:RightPw123456@127.0.0.1:6379/3", "RightPw123456"),
    ("redis://user:UserPw99@host/0", "UserPw99"),
    ("HF token hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ("headers [(b'x-api-key', b'tupledvalue')]", "tupledvalue"),
    (f"/x/{KEY.upper()}", KEY.upper()[10:]),
    ("/x/\uff53\uff4b-llmops-fullwidthkeybody", "fullwidthkeybody"),
    ("/x/sk-llmops\u200b-zerowidthkeybody", "zerowidthkeybody"),
    ("/x/sk-llmops-\u200bzerowidthkeybody", "zerowidthkeybody"),
])
def test_redact_text(text: str, gone: str) -> None:
    out = redact_text(text)
    assert gone not in out
    assert "[REDACTED]" in out


@pytest.mark.parametrize("text", [
    "prompt_tokens=4 completion_tokens=12 max_tokens: 64", "llmops_generation_tokens_total=3",
    "signal design sigma=3", "the token, which is fine", "GET /v1/chat/completions 200", "model=gemma-3-270m"])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


# Third parties' credentials, as their issuers shape them (made-up values). The second of each pair is what
# must not be left anywhere in the redacted text.
_PEM_BODY = ("MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
             "aFDrBz9vFqU4yZ3Q+7kLmNoPqRsTuVwXyZ0123456789abcdefgh==")
ISSUED = [
    ("sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStT3BlbkFJ", "Ab3dEfGhIjKlMnOp"),
    ("sk-svcacct-Zy9xWvUtSrQpOnMlKjIhGfEdCbA0123456789", "Zy9xWvUtSrQpOnMl"),
    ("sk-admin-Zy9xWvUtSrQpOnMlKjIhGfEdCbA0123456789", "Zy9xWvUtSrQpOnMl"),
    ("sk-None-Zy9xWvUtSrQpOnMlKjIhGfEdCbA0123456789", "Zy9xWvUtSrQpOnMl"),
    ("sk-Zy9xWvUtSrQpT3BlbkFJOnMlKjIhGfEdCbA0123456789abcd", "Zy9xWvUtSrQpT3Blbk"),  # legacy OpenAI
    ("sk-0123456789abcdef0123456789abcdef", "0123456789abcdef01234"),  # other providers' `sk-` + hex
    ("sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "0123456789abcdef01234"),
    ("sk-ant-api03-aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2yZ3aB4cD5eF6gH7iJ8kL9mN0oP1qR2sT3uV4wX5yZ6aB7cD8eF9gH0"
     "iJ1kL2mN3o-AA", "aB1cD2eF3gH4iJ5k"),
    ("sk-ant-admin01-aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2yZ3", "aB1cD2eF3gH4iJ5k"),
    ("AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ("ASIAY34FZKBOKMUTVV7A", "Y34FZKBOKMUTVV7A"),
    ("ghp_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "aB1cD2eF3gH4iJ5k"),
    ("gho_16C7e42F292c6912E7710c838347Ae178B4a", "16C7e42F292c6912"),
    ("ghu_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "aB1cD2eF3gH4iJ5k"),
    ("ghs_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "aB1cD2eF3gH4iJ5k"),
    ("ghr_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "aB1cD2eF3gH4iJ5k"),
    ("github_pat_11ABCDEFG0123456789abc_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2yZ3aB4cD5eF6gH7iJ8kL9mN0oP1qR2",
     "11ABCDEFG0123456789abc"),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "1234567890123-AbCdEf"),
    ("xoxp-123456789012-123456789012-123456789012-0123456789abcdef0123456789abcdef", "0123456789abcdef"),
    ("xoxa-2-123456789012-AbCdEfGhIjKlMnOp", "123456789012-AbCdEf"),
    ("xoxr-123456789012-AbCdEfGhIjKlMnOp", "123456789012-AbCdEf"),
    ("xoxs-123456789012-AbCdEfGhIjKlMnOp", "123456789012-AbCdEf"),
    ("xapp-1-A0123456789-0123456789012-abcdef0123456789", "A0123456789-012"),
    ("AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "SyDaGmWKa4JsXZ"),
    ("hf_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1w", "aB1cD2eF3gH4iJ5k"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjt"),
    ("rk_live_51H8aB1cD2eF3gH4iJ5kL6", "51H8aB1cD2eF3gH4"),
    ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjt"),
    ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
     ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "eyJzdWIiOiIxMjM0NTY3"),
    ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
     ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "SflKxwRJSMeKKF2QT4fw"),
    (f"-----BEGIN PRIVATE KEY-----\n{_PEM_BODY}\n-----END PRIVATE KEY-----", "0Z3VS5JJcds3xfn"),
    (f"-----BEGIN RSA PRIVATE KEY-----\n{_PEM_BODY}\n-----END RSA PRIVATE KEY-----", "aFDrBz9vFqU4yZ3Q"),
    (f"-----BEGIN OPENSSH PRIVATE KEY-----\n{_PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----", "aFDrBz9vFqU4yZ3Q"),
    ("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0123456789ABCDEF\n\n"
     f"{_PEM_BODY}\n-----END EC PRIVATE KEY-----", "aFDrBz9vFqU4yZ3Q"),
    (f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{_PEM_BODY}", "aFDrBz9vFqU4yZ3Q"),  # cut: no END line
]


@pytest.mark.parametrize(("credential", "gone"), ISSUED)
@pytest.mark.parametrize("frame", [
    "upstream: Incorrect API key provided: {}. Find yours at https://example.com/keys.",
    "{}",
    "key={}&x=1",
    "the key ({}) was refused",
    "json",  # in a JSON error body: json.dumps escapes the PEM's newlines as `\n`
    "json-in-json",  # a JSON body quoted in another one's message: `\"` and `\\n`
    "url",  # percent-encoded, in a URL: `%22sk-...`, `%0A` for a newline
    "\\n{}",  # after an escaped newline, as an upstream's unparsed body shows
])
def test_third_party_credentials_are_masked(credential: str, gone: str, frame: str) -> None:
    from urllib.parse import quote

    if frame == "json":
        text = json.dumps({"error": {"message": f"invalid credential: {credential}", "type": "auth"}})
    elif frame == "json-in-json":
        text = json.dumps({"error": {"message": json.dumps({"detail": f"bad: {credential}"})}})
    elif frame == "url":
        text = "GET /v1/x?q=" + quote(json.dumps({"k": credential}), safe="")
    else:
        text = frame.format(credential)
    out = redact_text(text)
    assert gone not in out, out
    assert redaction.MASK in out
    assert _every_pattern(text) == out  # the anchor words let every one of them through


@pytest.mark.parametrize("text", [
    "model=gpt-4o-mini", "gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "text-embedding-3-small",
    "sk-learn", "sk-", "sk-1", "the sk-proj-abc key is too short", "sk-ant-api03-short",
    "sk-admin-dashboard-settings-page-layout", "sk-abcdefghijklmnopqrstuvwxyzabcdefghijkl",  # no capital, no digit
    "task-0123456789abcdef0123456789abcdef01", "risk-admin-dashboard-settings-page-v2-Layout",  # inside a word
    "request id 0123456789abcdef0123456789abcdef", "req_0123456789abcdef0123456789abcdef",
    "chatcmpl-AbCdEf0123456789AbCdEf0123456789", "0f8fad5b-d9cb-469f-a165-70867728950e",
    "AKIA", "AKIAX%2F1", "AKIAIOSFODNN7EXAMPLEXY", "xAKIAIOSFODNN7EXAMPLE", "akiaiosfodnn7example",
    "timezone Asia/Tokyo", "ASIA-PACIFIC-REGION-0001",
    "ghp_short", "ghx_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "github_pat_", "GITHUB_PAT_TOKEN_NAME",
    "xoxo-gossip", "xoxb-1", "xapp-", "AIza", "AIzaSyShort", "HF_HOME=/data/hf", "hf_hub_download",
    "hf_transfer", "pk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_", "sk_live_short",
    "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.payload.sig", "keyJar.eyJxxxx.y",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n-----END PUBLIC KEY-----",
    "the private key was not found", "Bearer-less text", "a disk-full error, a task-runner, a risk-model",
])
def test_look_alikes_are_left_alone(text: str) -> None:
    assert redact_text(text) == text
    shown = json.dumps({"error": {"message": text}})
    assert redact_text(shown) == shown


def test_the_issued_patterns_repeat_no_repetition() -> None:
    """Linear time on hostile input: no quantifier repeats a group that holds another quantifier (the
    shape of catastrophic backtracking), in any of the patterns. An optional part (`?`) repeats nothing."""
    from re import _parser  # type: ignore[attr-defined]

    repeats = {_parser.MAX_REPEAT, _parser.MIN_REPEAT, _parser.POSSESSIVE_REPEAT}

    def walk(items: Any, inside_repeat: bool) -> None:
        for op, av in items:
            if op in repeats and av[1] > 1:
                assert not inside_repeat, f"a repetition inside a repetition: {av}"
                walk(av[2], True)
            elif op in repeats:
                walk(av[2], inside_repeat)
            elif op is _parser.SUBPATTERN:
                walk(av[-1], inside_repeat)
            elif op is _parser.BRANCH:
                for branch in av[1]:
                    walk(branch, inside_repeat)
            elif op in (_parser.ASSERT, _parser.ASSERT_NOT):
                walk(av[1], inside_repeat)

    for pattern in redaction._PATTERNS:
        walk(_parser.parse(pattern.pattern), False)


def test_a_registered_secret_is_masked_in_any_case_and_through_invisible_characters() -> None:
    redaction.register_secret("AdmK07b23d0ad4650a78b2cfb1ae")
    for shown in ("AdmK07b23d0ad4650a78b2cfb1ae", "ADMK07B23D0AD4650A78B2CFB1AE", "admk07b23d0ad4650a78b2cfb1ae",
                  "AdmK07b2\u200b3d0ad4650a78b2cfb1ae", "AdmK07b2\u00ad3d0ad4650a78b2cfb1ae"):
        out = redact_text(f"/v1/models/{shown}")
        assert "3d0ad4650" not in out.upper(), out
        assert redaction.MASK in out


# Characters re's IGNORECASE matches to a leading word's letter: Kelvin sign, long s, dotless i, dotted I,
# and leading words spelt with them.
_LOOKALIKES = ["\u212a", "\u017f", "\u0131", "\u0130", "api\u212aey", "acce\u017f\u017f_token",
               "author\u0131zation", "Bearer\u0130"]
_LEADS = ["Bearer ", "bearer\t", "Authorization: ", "X-Api-Key=", "x-admin-key: ", "api_key=", "APIKEY:",
          "admin-key=", "access_token=", "access-token: ", "sk-llmops-", "SK-LLMOPS-", "token=", "Password: ",
          "X-Amz-Signature=", "sig=", "client_secret=", "redis://:", "hf_", "\uff53\uff4b-llmops-", "sk-proj-",
          "sk-", "AKIA", "ghp_", "github_pat_", "xoxb-", "AIza", "sk_live_", "eyJ", "-----BEGIN PRIVATE KEY-----"]


@settings(max_examples=400, deadline=None)
@example("")
@example("author\u0131zation: v4lue")  # dotless i
@example("AUTHOR\u0130ZATION=v4lue")  # dotted capital I
@example("api\u212aey=v4lue")  # Kelvin sign
@given(st.lists(st.sampled_from(["Bearer ", "bearer\t", "Authorization", "X-Api-Key", "api_key", "APIKEY",
                                 "admin-key", "access_token", "sk-llmops-", "SK-LLMOPS-", ":", "=", " ", "'",
                                 '"', "abc", "k9", "-", "_", "\n", "é", "token", "tokens", "Secret", "PASSWD",
                                 "sig", "signature", "credential", "://", "@", "hf_", "AbCdEfGhIjKlMnOpQrStUv",
                                 "\u200b", "\uff53", "\u00ad", "[REDACTED]", ",", "b", "sk-proj-", "AKIA",
                                 "ASIA", "IOSFODNN7EXAMPLE", "ghp_", "xoxb-", "eyJ", ".", "AIza", "\\n", "%22",
                                 "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "\uff21\uff2b\uff29\uff21",
                                 *_LOOKALIKES]),
                max_size=12).map("".join))
def test_the_anchor_check_skips_only_texts_no_pattern_changes(text: str) -> None:
    """redact_text searches for the patterns' leading words first and leaves a text without any as it is:
    the same result as running every pattern."""
    for case in (text, *(f"{text} {lead}v4lue" for lead in _LEADS)):
        _same_as_every_pattern(case)


_VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(),
                   st.lists(st.sampled_from([*_LEADS, *_LOOKALIKES, "abc", " ", "=", ":", PLAIN_SECRET[:12],
                                             PLAIN_SECRET[12:],
                                             "\n"]), max_size=6).map("".join))


@settings(max_examples=300, deadline=None)
@example({"event": "request", "path": f"/x?k={PLAIN_SECRET}", "status": 200})
@example({"event": "request", "a": PLAIN_SECRET[:12], "b": PLAIN_SECRET[12:]})  # in neither value
@example({"event": "author\u0131zation: v4lue", "status": None})
@given(st.dictionaries(st.sampled_from(["event", "path", "model", "status", "a", "b", "c"]), _VALUES, max_size=7))
def test_a_flat_line_searched_once_is_redacted_as_value_by_value(event: dict[str, Any]) -> None:
    """redact_event searches a line of plain values once, its strings joined: the same line as redacting
    each value."""
    redaction.register_secret(PLAIN_SECRET)
    expected = {k: _every_pattern(v) if isinstance(v, str) else v for k, v in event.items()}
    assert redaction.redact_event(None, "info", dict(event)) == expected


def test_a_value_that_cannot_be_shown_says_so_instead_of_raising(capfd: pytest.CaptureFixture[str]) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    with json_logs(capfd):
        structlog.get_logger("llmops.access").warning("request", odd=Unprintable())
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert [(line["event"], line["odd"], line["logger"]) for line in lines] == [
        ("request", "<Unprintable object: its repr failed>", "llmops.access")]


def test_the_console_line() -> None:
    """`time [level] event [logger] key=value` (sorted; a value with a space or quote quoted), then the
    traceback: structlog's ConsoleRenderer's format, uncoloured."""
    line = ConsoleLine(colors=False)(None, "error", {
        "event": "request", "timestamp": "2026-12-03T00:00:00Z", "level": "error", "logger": "llmops.access",
        "path": "/v1/x y", "status": 500, "model": None, "exception": "Traceback (most recent call last):\n  boom"})
    assert line.splitlines() == [
        "2026-12-03T00:00:00Z [error    ] request                        [llmops.access] model=None path='/v1/x y' "
        "status=500", "Traceback (most recent call last):", "  boom"]
    coloured = ConsoleLine(colors=True)(None, "info", {"event": "e", "level": "info"})
    assert coloured.startswith("\x1b[32m[info     ]\x1b[0m e")


def _same_as_every_pattern(text: str) -> None:
    assert redact_text(text) == _every_pattern(text)


def _every_pattern(text: str) -> str:
    """The reference: every registered secret (in any case), then every pattern, run on the whole text; for
    a text that is not ASCII, on its NFKC form without format characters first, which is what is kept
    when anything is found there."""
    def run(t: str) -> str:
        for secret in redaction._secrets:
            t = re.sub(re.escape(secret), redaction.MASK, t, flags=re.IGNORECASE)
        for pattern in redaction._PATTERNS:
            t = pattern.sub(lambda m: m.group(1) + redaction.MASK, t)
        return t

    if not text.isascii():
        normal = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")
        if normal != text and run(normal) != normal:
            return run(normal)
    return run(text)


@contextlib.contextmanager
def json_logs(capfd: pytest.CaptureFixture[str], flush_s: float = 0.0) -> Iterator[pytest.CaptureFixture[str]]:
    """JSON logging configured inside the test (a handler made in a fixture would hold a closed stream)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    try:
        configure_logging("info", "json", secrets=(ADMIN,), flush_s=flush_s)
        capfd.readouterr()
        yield capfd
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        warnings.showwarning = saved[2]
        logmod._handler = logmod._access = None  # structlog's lines went straight to the test's handler


def _fail(api_key: str, prompt: str) -> None:
    raise RuntimeError("engine blew up")


def test_every_record_is_redacted_and_tracebacks_have_no_locals(capfd: pytest.CaptureFixture[str]) -> None:
    with json_logs(capfd):
        _log_attacks()
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == 3  # uvicorn's access logger is off
    assert KEY not in err
    assert KEY[10:30] not in err
    assert ADMIN not in err
    assert "my private prompt" not in err  # no locals in the traceback
    assert "engine blew up" in lines[2]["exception"]
    assert {line["logger"] for line in lines} == {"uvicorn.error", "some.library", "llmops.app"}


def _log_attacks() -> None:
    logging.getLogger("uvicorn.error").info("client sent Authorization: Bearer %s", KEY)
    logging.getLogger("some.library").warning("admin key is %s", ADMIN)
    try:
        _fail(KEY, " ".join(["my", "private", "prompt"]))  # only a local would show it
    except RuntimeError:
        logging.getLogger("llmops.app").exception("unhandled error")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?api_key=%s HTTP/1.1" 200', KEY)


def test_library_warnings_become_one_line_each_once(capfd: pytest.CaptureFixture[str]) -> None:
    with json_logs(capfd), warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("a long FutureWarning\nwith many\nlines", FutureWarning, stacklevel=1)
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    assert lines[0]["category"] == "FutureWarning"
    assert lines[0]["message"] == "a long FutureWarning"


def test_info_lines_are_written_together_and_a_warning_at_once_after_them(
        capfd: pytest.CaptureFixture[str]) -> None:
    """BatchedStderr: INFO lines wait for the batch (here a minute), a WARNING is written at once with every
    line held before it, in order, and a flush (as logging's shutdown does at exit) writes what is held."""
    with json_logs(capfd, flush_s=60.0):
        log = logging.getLogger("llmops.access")
        log.info("first")
        log.info("second")
        assert capfd.readouterr().err == ""  # held
        logging.getLogger("llmops.app").warning("trouble")
        events = [json.loads(line)["event"] for line in capfd.readouterr().err.splitlines()]
        assert events == ["first", "second", "trouble"]
        log.info("third")
        assert capfd.readouterr().err == ""
        logging.getLogger().handlers[0].flush()
        assert [json.loads(line)["event"] for line in capfd.readouterr().err.splitlines()] == ["third"]


def test_held_lines_are_written_within_the_flush_time(capfd: pytest.CaptureFixture[str]) -> None:
    with json_logs(capfd, flush_s=0.05):
        logging.getLogger("llmops.access").info("request")
        seen = ""
        deadline = time.monotonic() + 10
        while '"request"' not in seen:
            assert time.monotonic() < deadline, "the held line was never written"
            time.sleep(0.01)
            seen += capfd.readouterr().err


def test_log_step_says_how_long(capfd: pytest.CaptureFixture[str]) -> None:
    with json_logs(capfd):
        with log_step("assembling model", model="m"):
            pass
        with pytest.raises(ValueError, match="bad"), log_step("loading model", model="m"):
            raise ValueError("bad")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["assembling model...", "assembling model done",
                                                 "loading model...", "loading model failed"]
    assert "seconds" in lines[1]
    assert lines[3]["error"] == "ValueError"


def test_span_attributes_are_redacted() -> None:
    exporter = InMemorySpanExporter()
    tracer = build_tracer(None, "t", exporter=exporter)
    with tracer.span("http GET", {"http.target": f"/x?api_key={KEY}"}) as span:
        span.set_attribute("note", f"Bearer {KEY}")
    tracer.start("engine", {"llmops.key": KEY}).end()
    tracer.shutdown()
    attributes = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    assert KEY not in json.dumps(attributes)


def test_method_labels_are_a_closed_set() -> None:
    assert method_label("GET") == "GET"
    assert method_label("PROPFIND") == "OTHER"
    assert method_label("X" * 100) == "OTHER"


def test_model_labels_are_a_closed_set() -> None:
    metrics = Metrics()
    metrics.watch(lambda: {"fake": ModelLoad(0, 0, "ready")}, dict)
    for name in ("fake", "nope", "other"):
        metrics.requests.labels(name, "ok").inc()
        metrics.cache_requests.labels(model=name, result="hit").inc()
    text = metrics.requests.collect()[0].samples
    assert sorted({s.labels["model"] for s in text}) == ["fake", "unknown"]
    for name in ("fake", "nope", "other"):  # again, through the children kept from the first time
        metrics.requests.labels(name, "ok").inc()
    counts = {s.labels["model"]: s.value for s in metrics.requests.collect()[0].samples if s.name.endswith("_total")}
    assert counts == {"fake": 2, "unknown": 4}


def test_a_name_labelled_before_the_models_are_known_is_mapped_once_they_are() -> None:
    metrics = Metrics()
    metrics.requests.labels("nope", "ok").inc()  # no set yet: any name passes
    metrics.watch(lambda: {"fake": ModelLoad(0, 0, "ready")}, dict)
    metrics.requests.labels("nope", "ok").inc()
    counts = {s.labels["model"]: s.value for s in metrics.requests.collect()[0].samples if s.name.endswith("_total")}
    assert counts == {"nope": 1, "unknown": 1}


def test_an_escaped_exception_is_answered_once_without_reraising() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    observer = Observer(Metrics(), build_tracer(None, "t"))
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "query_string": b""}
    asyncio.run(observer.observe(scope, receive, Responder(send, []), inner))  # no raise: uvicorn keeps the connection
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["error"]["type"] == "server_error"
    assert "boom" not in sent[1]["body"].decode()


def test_the_format_characters_class_is_unicodes_category_cf() -> None:
    import sys
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert set(redaction._FORMAT.findall(every)) == {c for c in every if unicodedata.category(c) == "Cf"}


def test_a_closed_stream_does_not_raise_from_the_log_writer() -> None:
    """pytest closes the stream it captured while a BatchedStderr's writer thread may still flush it: the
    flush raised ValueError in that thread (an unhandled thread exception, failing whichever test ran)."""
    import os

    handler = logmod.BatchedStderr(flush_s=60.0)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - closed below, as pytest's capture does
    handler.stream.close()
    handler.write_line("a line", logging.INFO)
    handler.flush()  # nothing raised
