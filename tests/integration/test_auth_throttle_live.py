"""Failed authentication throttled on a real server, and `auth.require_keys`, with the official openai client.

Clients are told apart by X-Forwarded-For from a trusted proxy (127.0.0.1), as the rate limiter tells them
apart: one address that sends too many wrong admin keys gets 429 with Retry-After on the admin API, even
with the right key, while another address is served and its API requests too; after the window it is
served again. Wrong API keys lock nobody out. A loopback server with
`auth.require_keys` whose store is empty (a fresh Redis: as one flushed, or restarted without persistence)
refuses rather than serves open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import RedisServer, eventually, live_server, write_config

ADMIN = "throttle-test-admin-7c41e9b2d05a"
WINDOW_S = 4.0
MAX_FAILURES = 3
MODELS = [{"name": "fake", "engine": "fake"}]
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A keyed server (one key, made through the admin API) behind a trusted proxy: base, log, the key."""
    tmp = tmp_path_factory.mktemp("throttle")
    cfg = write_config(tmp / "throttle.yaml", MODELS, state={"backend": "memory"},
                       auth={"key_refresh_s": 0, "max_failures": MAX_FAILURES, "failure_window_s": WINDOW_S},
                       rate_limits={"trusted_proxies": ["127.0.0.1/32"]})
    with live_server(cfg, env={"LLMOPS_AUTH__ADMIN_KEY": ADMIN}) as base:
        made = httpx.post(f"{base}/admin/keys", headers={"X-Admin-Key": ADMIN}, json={"name": "team"})
        assert made.status_code == 201, made.text
        secret: str = made.json()["secret"]
        assert eventually(lambda: chat(base, "198.51.100.1", secret).status_code == 200)
        yield base, cfg.with_suffix(".log"), secret


def chat(base: str, address: str, key: str | None) -> httpx.Response:
    headers = {"X-Forwarded-For": address, **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, json={"model": "fake", "messages": MESSAGES})


def ask(base: str, address: str, key: str) -> str:
    """A chat through the official client, from `address` (behind the trusted proxy); the answer's text."""
    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0,
                       default_headers={"X-Forwarded-For": address}) as client:
        answer = client.chat.completions.create(model="fake", messages=MESSAGES)
    return answer.choices[0].message.content or ""


def log_text(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def test_wrong_api_keys_lock_nobody_out(server: tuple[str, Path, str]) -> None:
    """API keys are 256 random bits: not throttled, so one client cannot lock out others at its address."""
    base, log, secret = server
    address = "198.51.100.66"
    guesses = [f"sk-llmops-guess-{i}-0123456789" for i in range(MAX_FAILURES * 3)]
    for guess in guesses:
        assert chat(base, address, guess).status_code == 401
    assert ask(base, address, secret)  # the same address, with the right key
    assert "wrong admin keys from" not in log_text(log)
    assert not any(guess in log_text(log) for guess in guesses)


def test_wrong_admin_keys_lock_their_address_out_of_the_admin_api_only(server: tuple[str, Path, str]) -> None:
    base, log, secret = server
    attacker, other = "198.51.100.77", "198.51.100.10"

    def keys(address: str, admin_key: str) -> httpx.Response:
        return httpx.get(f"{base}/admin/keys", headers={"X-Forwarded-For": address, "X-Admin-Key": admin_key})

    guesses = [f"wrong-admin-key-{i}-abcdef" for i in range(MAX_FAILURES)]
    for guess in guesses:
        assert keys(attacker, guess).status_code == 403
    refused = keys(attacker, ADMIN)  # the right admin key, during the lockout: not confirmed
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_auth_failures"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    assert refused.headers["x-should-retry"] == "false"
    assert keys(other, ADMIN).status_code == 200  # another address meanwhile
    assert ask(base, attacker, secret)  # and the attacker's address keeps the API
    metrics = httpx.get(f"{base}/metrics").text
    assert 'llmops_rejections_total{model="-",reason="auth_lockout"}' in metrics
    # the window passes: the address is served again (polled, at most a few seconds)
    assert eventually(lambda: keys(attacker, ADMIN).status_code == 200, timeout=WINDOW_S + 10)
    assert eventually(lambda: f"wrong admin keys from {attacker}" in log_text(log))
    text = log_text(log)
    assert text.count(f"wrong admin keys from {attacker}") == 1
    assert ADMIN not in text
    assert not any(guess in text for guess in guesses)


def test_require_keys_keeps_a_loopback_replica_on_an_emptied_redis_keyed(tmp_path: Path,
                                                                         redis_server: RedisServer) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url}
    keyed = write_config(tmp_path / "keyed.yaml", MODELS, state=state, auth={"key_refresh_s": 0, "require_keys": True})
    with live_server(keyed, env={"LLMOPS_AUTH__ADMIN_KEY": ADMIN}) as base:  # Redis holds no key at all
        with pytest.raises(openai.AuthenticationError):
            ask(base, "127.0.0.1", "sk-llmops-anything")
        assert chat(base, "127.0.0.1", None).status_code == 401
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/health").status_code == 200
        made = httpx.post(f"{base}/admin/keys", headers={"X-Admin-Key": ADMIN}, json={"name": "first"})
        assert made.status_code == 201  # the admin API still works, to create the first key
        assert ask(base, "127.0.0.1", made.json()["secret"])


def test_without_require_keys_a_loopback_server_with_no_keys_stays_open(tmp_path: Path) -> None:
    """Today's default, unchanged: the embedded loopback server with an empty store just works."""
    cfg = write_config(tmp_path / "open.yaml", MODELS, state={"backend": "memory"}, auth={"key_refresh_s": 0})
    with live_server(cfg) as base:
        assert ask(base, "127.0.0.1", "anything")
