"""What a signed image URL's `expires` and `sig` may look like, and what credentials that are not ASCII get.

An attack run found `GET /v1/images/files/<name>?expires=1&sig=%C3%A9` (no key) answered 500 `engine_error`
with two tracebacks: `UrlSigner.verify` handed two str to `hmac.compare_digest`, which raises TypeError when
either is not ASCII. Any bad signature is a 403. And `expires` was read with int(), so "+E", "0E", "E_..."
(underscores), " E" or Arabic-Indic digits all passed for the URL signed with E: only the form `query` writes
(plain ASCII decimal digits, no leading zero) is taken now.

The key checks compare in constant time too (settings.admin_key_matches, stores/keys.verify); they compared
bytes or hex digests already, so a header value that is not ASCII (HTTP headers are latin-1 on the wire) is
refused as a wrong key: 401 for an API key, 403 for an admin key, never a 500. Those tests guard that."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from llmops.app import create_app
from llmops.errors import PermissionDenied
from llmops.pipeline.services import Services
from llmops.pipeline.signed_urls import UrlSigner
from llmops.settings import ImageSettings, admin_key_matches, load_settings
from llmops.stores.keys import new_key

NAME = f"imgfile-{uuid.uuid4().hex}.png"
ADMIN = "Zq8vN3kR7tLm2Wp9Xc4Hj6Bd-forms"
NOT_ASCII_SIGS = ["\u00e9", "\u00e9" * 64, "\u0660" * 64, "\ufffd", "a" * 63 + "\u00e9"]


def parts(query: str) -> tuple[str, str]:
    q = parse_qs(query)
    return q["expires"][0], q["sig"][0]


@pytest.mark.parametrize("sig", NOT_ASCII_SIGS)
def test_a_sig_that_is_not_ascii_is_refused_not_raised(sig: str) -> None:
    signer = UrlSigner(ImageSettings(), None)
    expires, _ = parts(signer.query(NAME))
    with pytest.raises(PermissionDenied, match="not validly signed"):  # was TypeError from compare_digest
        signer.verify(NAME, expires, sig)


@pytest.mark.parametrize("spelling", ["+{e}", "0{e}", "00{e}", " {e}", "{e} ", "{e}\n", "{u}", "{arabic}"])
def test_only_the_plain_decimal_expires_that_was_signed_verifies(spelling: str) -> None:
    signer = UrlSigner(ImageSettings(url_ttl_s=60), None)
    expires, sig = parts(signer.query(NAME, now=1_796_000_000.0))
    signer.verify(NAME, expires, sig, now=1_796_000_001.0)  # the canonical spelling still verifies
    arabic = "".join(chr(0x660 + int(d)) for d in expires)  # int() reads Arabic-Indic digits as well
    underscored = f"{expires[0]}_{expires[1:]}"  # int() reads "1_796..." too
    other = spelling.format(e=expires, u=underscored, arabic=arabic)
    assert int(other) == int(expires)  # every one of them int() took for the signed value
    with pytest.raises(PermissionDenied, match="not validly signed"):
        signer.verify(NAME, other, sig, now=1_796_000_001.0)


def test_upper_case_hex_and_an_overlong_expires_are_refused() -> None:
    signer = UrlSigner(ImageSettings(), None)
    expires, sig = parts(signer.query(NAME))
    with pytest.raises(PermissionDenied):
        signer.verify(NAME, expires, sig.upper())
    with pytest.raises(PermissionDenied):
        signer.verify(NAME, "9" * 5000, sig)  # refused before int() is asked to read it


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    s = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"},
                      images={"store_dir": str(tmp_path)}, auth={"admin_key": ADMIN})
    (tmp_path / NAME).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        key, secret = new_key("k", (), "interactive")
        services: Services = c.app.state.services  # type: ignore[attr-defined]
        c.portal.call(services.state.keys.add, key)
        yield c, secret


@pytest.mark.parametrize("sig", NOT_ASCII_SIGS)
def test_the_file_endpoint_answers_403_to_a_sig_that_is_not_ascii(keyed: tuple[TestClient, str], sig: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client, _ = keyed
    response = client.get(f"/v1/images/files/{NAME}?expires=1&sig={quote(sig)}")  # expires=1: long past
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "permission_error"
    assert "Traceback" not in caplog.text


def test_the_file_endpoint_refuses_a_non_canonical_expires(keyed: tuple[TestClient, str]) -> None:
    client, _ = keyed
    signer = client.app.state.services.url_signer  # type: ignore[attr-defined]
    expires, sig = parts(signer.query(NAME))
    assert client.get(f"/v1/images/files/{NAME}?expires={expires}&sig={sig}").status_code == 200
    for other in (f"+{expires}", f"0{expires}", f"{expires[0]}_{expires[1:]}"):
        response = client.get(f"/v1/images/files/{NAME}?expires={quote(other)}&sig={sig}")
        assert response.status_code == 403, (other, response.text)


# latin-1 bytes that are not ASCII, and UTF-8 ones (é, and a euro sign): what a client may put in a header
NOT_ASCII_HEADERS = [b"\xe9", "sk-llmops-\u00e9".encode(), "sk-llmops-\u20ac".encode(), b"\xff" * 40]


@pytest.mark.parametrize("value", NOT_ASCII_HEADERS)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_an_api_key_that_is_not_ascii_is_a_401(keyed: tuple[TestClient, str], header: str, value: bytes) -> None:
    client, _ = keyed
    sent = b"Bearer " + value if header == "Authorization" else value
    response = client.get("/v1/models", headers={header: sent})  # type: ignore[dict-item]
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("value", NOT_ASCII_HEADERS)
@pytest.mark.parametrize("header", ["X-Admin-Key", "Authorization", "X-API-Key"])
def test_an_admin_key_that_is_not_ascii_is_a_403(keyed: tuple[TestClient, str], header: str, value: bytes) -> None:
    client, _ = keyed
    sent = b"Bearer " + value if header == "Authorization" else value
    response = client.get("/admin/keys", headers={header: sent})  # type: ignore[dict-item]
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "permission_error"


def test_admin_key_matches_takes_any_string() -> None:
    key = SecretStr(ADMIN)
    for given in ("\u00e9", "\u00e9" * len(ADMIN), ADMIN + "\u00e9", ""):
        assert admin_key_matches(key, given) is False
    assert admin_key_matches(key, ADMIN) is True
