"""Every secret the configuration holds or names is registered with the redaction (not only the admin key),
and what a client or /ready is shown carries none of them: error messages go through the same redaction,
and an upstream's URL is shown without its credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from llmops import errors
from llmops.engines.upstream import UpstreamEngine, UpstreamOptions, _error_from, credentials_conflict, shown_url
from llmops.errors import ConfigError, EngineError, error_body
from llmops.eval.models import parse_grade
from llmops.eval.scorers import ScorerError
from llmops.eval.targets import client_for
from llmops.observability import redaction
from llmops.settings import load_settings

UPSTREAM_KEY = "sk-proj-UpStr3amK3yForTheTests0123"
JUDGE_KEY = "sk-judge-JudgeK3yForTheTests4567"


@pytest.fixture
def filtered() -> Iterator[None]:
    """The redaction installed as the error-message filter, as configure_logging does, then removed."""
    saved = errors._shown
    errors.filter_messages(redaction.redact_text)
    try:
        yield
    finally:
        errors.filter_messages(saved)


def test_every_configured_secret_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPKEY", UPSTREAM_KEY)
    monkeypatch.setenv("JKEY", JUDGE_KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_TokenFromTheEnvironment0123456")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=HcTeamS3cretValue,other=0therS3cretValue")
    settings = load_settings(
        None,
        models=[{"name": "fake", "engine": "fake"},
                {"name": "up", "engine": "upstream", "options": {
                    "base_url": "http://upuser:UpUrlPassw0rd@127.0.0.1:9/v1?code=UpUrlC0de77", "model": "m",
                    "api_key_env": "UPKEY"}}],
        routes=[{"name": "r", "variants": [{"model": "fake"}], "online_eval": {"sample": 1.0, "scorers": [
            {"kind": "judge", "model": "j", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "JKEY"}]}}],
        state={"backend": "memory", "redis_url": "redis://:RedisPassw0rd99@127.0.0.1:6379/0"},
        observability={"otlp_endpoint": "http://127.0.0.1:4318/v1/traces?token=OtlpQueryS3cret"},
        auth={"admin_key": "3f9c2a7e81d04b6f9e5a0c1d2b3e4f5a"}, images={"url_secret": "image-url-secret-0123"})
    named = set(settings.secret_values())
    assert {UPSTREAM_KEY, JUDGE_KEY, "hf_TokenFromTheEnvironment0123456", "HcTeamS3cretValue", "0therS3cretValue",
            "UpUrlPassw0rd", "UpUrlC0de77",
            "dXB1c2VyOlVwVXJsUGFzc3cwcmQ=",  # upuser:UpUrlPassw0rd as the Basic credentials httpx sends
            "RedisPassw0rd99", "OtlpQueryS3cret", "3f9c2a7e81d04b6f9e5a0c1d2b3e4f5a", "image-url-secret-0123"} <= named


def test_an_upstream_echoing_its_key_is_masked_in_the_error_a_client_gets(filtered: None) -> None:
    redaction.register_secret(UPSTREAM_KEY)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}. Find yours at ..."}})
    exc = _error_from(401, body.encode())
    assert isinstance(exc, EngineError)  # the upstream refused this server's key: a 500, not the client's 400
    message = error_body(exc)["error"]["message"]
    assert "UpStr3amK3y" not in message
    assert redaction.MASK in message
    long = json.dumps({"error": {"message": "x" * 290 + UPSTREAM_KEY}})  # the cut falls inside the key
    assert "UpStr3am" not in error_body(_error_from(500, long.encode()))["error"]["message"]
    assert error_body(_error_from(500, b'{"error": "a plain string"}'))["error"]["message"] == \
        "upstream: a plain string"


@pytest.mark.parametrize("credential", [
    "sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIj", "AKIAIOSFODNN7EXAMPLE",
    "ghp_aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "github_pat_11ABCDEFG0123456789abc_aB1cD2eF3gH4iJ5kL6mN7oP8qR9",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "sk-ant-api03-aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2",
    "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"])
def test_an_upstream_echoing_a_third_party_credential_is_masked(filtered: None, credential: str) -> None:
    """Credentials the configuration does not know (no register_secret): recognised by their shapes, in what
    an upstream's error says, before it is cut to 300 characters."""
    secret = credential[12:30]
    for status, body in ((401, json.dumps({"error": {"message": f"Invalid credentials: {credential}"}})),
                         (400, json.dumps({"detail": f"bad request from {credential}"})),  # the raw body shown
                         (500, json.dumps({"error": {"message": "x" * 279 + " " + credential}}))):  # cut inside
        message = error_body(_error_from(status, body.encode()))["error"]["message"]
        assert secret not in message, message
        assert redaction.MASK in message


def test_an_upstream_url_is_shown_without_credentials() -> None:
    url = "http://upuser:UpUrlPassw0rd@127.0.0.1:18156/v1?code=UpUrlC0de77"
    assert shown_url(url) == "http://127.0.0.1:18156/v1"
    assert shown_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    engine = UpstreamEngine("up", UpstreamOptions(base_url=url, model="m"))
    assert engine.health().detail["upstream"] == "http://127.0.0.1:18156/v1"


def test_a_judge_reply_is_kept_out_of_the_message_and_shown_by_detail() -> None:
    with pytest.raises(ScorerError) as info:
        parse_grade("Looking at it: my private diagnosis is PRIVATE-CONTENT-123")
    assert "PRIVATE-CONTENT" not in str(info.value)  # online evaluation logs str(exc)
    assert "PRIVATE-CONTENT-123" in info.value.detail()  # the offline report shows it


def test_a_url_password_and_a_key_from_the_environment_are_refused_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the URL go out as HTTP Basic and replace the Bearer key (httpx and the openai client
    alike), so the key would silently never be sent: the configuration is refused, naming neither secret."""
    url = "http://upuser:UpUrlPassw0rd@127.0.0.1:18156/v1"
    with pytest.raises(ValueError, match=r"api_key_env \(UPKEY\) a key sent as Bearer"):
        UpstreamOptions(base_url=url, api_key_env="UPKEY")
    problem = credentials_conflict(url, "UPKEY")
    assert problem is not None
    assert "UpUrlPassw0rd" not in problem
    assert credentials_conflict(url, None) is None  # either one alone is fine
    assert credentials_conflict("http://127.0.0.1:18156/v1", "UPKEY") is None
    monkeypatch.setenv("UPKEY", UPSTREAM_KEY)
    with pytest.raises(ConfigError, match="never be sent"):
        client_for(url, "UPKEY")


def test_the_missing_key_message_survives_the_redaction_of_error_messages(filtered: None) -> None:
    """It once read "send Authorization: [REDACTED] <key>": the redaction took its example for a key."""
    from fastapi.testclient import TestClient

    from llmops.app import create_app
    from llmops.stores.keys import new_key

    settings = load_settings(models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"})
    with TestClient(create_app(settings)) as client:
        key, _ = new_key("team", (), "interactive")
        client.portal.call(client.app.state.services.state.keys.add, key)  # type: ignore[attr-defined]
        message = client.post("/v1/chat/completions", json={"model": "fake", "messages": []}).json()["error"]["message"]
    assert redaction.MASK not in message
    assert "Authorization header" in message
