"""Signed, expiring image URLs: the signature, its expiry, tampering, the shared secret, and the file
endpoint on a keyed server (a signed URL needs no key; an unsigned one still does)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from llmops.app import create_app
from llmops.errors import PermissionDenied
from llmops.pipeline.services import Services
from llmops.pipeline.signed_urls import UrlSigner
from llmops.settings import ImageSettings, load_settings
from llmops.stores.cache import MemoryCache
from llmops.stores.keys import new_key

NAME = f"imgfile-{uuid.uuid4().hex}.png"


def parts(query: str) -> tuple[str, str]:
    q = parse_qs(query)
    return q["expires"][0], q["sig"][0]


def test_a_signature_verifies_until_it_expires() -> None:
    signer = UrlSigner(ImageSettings(url_ttl_s=60), None)
    expires, sig = parts(signer.query(NAME, now=1000.0))
    assert expires == "1060"
    signer.verify(NAME, expires, sig, now=1059.0)
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify(NAME, expires, sig, now=1061.0)


@pytest.mark.parametrize("tamper", ["name", "expires", "sig", "missing"])
def test_a_tampered_url_is_refused(tamper: str) -> None:
    signer = UrlSigner(ImageSettings(), None)
    expires, sig = parts(signer.query(NAME))
    name = f"imgfile-{uuid.uuid4().hex}.png" if tamper == "name" else NAME
    expires = str(int(expires) + 3600) if tamper == "expires" else expires
    sig = {"sig": sig[:-1] + ("0" if sig[-1] != "0" else "1"), "missing": None}.get(tamper, sig)
    with pytest.raises(PermissionDenied, match="not validly signed"):
        signer.verify(name, expires, sig)


def test_the_configured_secret_is_used_and_a_generated_one_differs() -> None:
    a = UrlSigner(ImageSettings(url_secret=SecretStr("s3cret")), None)
    b = UrlSigner(ImageSettings(url_secret=SecretStr("s3cret")), None)
    query = a.query(NAME)
    b.verify(NAME, *parts(query))  # two replicas with the same configured secret
    with pytest.raises(PermissionDenied):
        UrlSigner(ImageSettings(), None).verify(NAME, *parts(query))


async def test_replicas_share_a_generated_secret_through_the_store() -> None:
    shared = MemoryCache(16)  # stands in for the Redis cache both replicas reach
    first, second = UrlSigner(ImageSettings(), shared), UrlSigner(ImageSettings(), shared)
    await first.load()
    await second.load()
    second.verify(NAME, *parts(first.query(NAME)))


@pytest.fixture
def keyed(tmp_path: Path) -> TestClient:
    s = load_settings(None, models=[{"name": "fake", "engine": "fake"}], state={"backend": "memory"},
                      images={"store_dir": str(tmp_path)})
    (tmp_path / NAME).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return TestClient(create_app(s), raise_server_exceptions=False)


def test_a_signed_url_needs_no_key_on_a_keyed_server(keyed: TestClient) -> None:
    with keyed as c:
        key, secret = new_key("k", (), "interactive")
        services: Services = c.app.state.services  # type: ignore[attr-defined]
        c.portal.call(services.state.keys.add, key)
        signer = services.url_signer
        url = f"/v1/images/files/{NAME}"
        assert c.get(url).status_code == 401
        assert c.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        ok = c.get(f"{url}?{signer.query(NAME)}")
        assert (ok.status_code, ok.headers["content-type"]) == (200, "image/png")
        expires, sig = parts(signer.query(NAME))
        bad = c.get(f"{url}?expires={expires}&sig={sig[::-1]}")
        assert (bad.status_code, bad.json()["error"]["type"]) == (403, "permission_error")
        old = c.get(f"{url}?{signer.query(NAME, now=time.time() - 7200)}")
        assert old.status_code == 403
        assert "expired" in old.json()["error"]["message"]
        other = f"imgfile-{uuid.uuid4().hex}.png"
        assert c.get(f"/v1/images/files/{other}?{signer.query(other)}").status_code == 404


@pytest.mark.parametrize("query", ["xsig=1", "a=sig=", "expires=9999999999&nosig=1", "expires=1&sigma=x",
                                   "a=1%26sig%3D2"])
def test_a_query_without_a_sig_parameter_still_needs_the_key(keyed: TestClient, query: str) -> None:
    """Only a `sig` parameter of its own lets a request through without a key (then it is checked): "sig="
    inside another parameter's name or value is no signature."""
    with keyed as c:
        key, _ = new_key("k", (), "interactive")
        services: Services = c.app.state.services  # type: ignore[attr-defined]
        c.portal.call(services.state.keys.add, key)
        response = c.get(f"/v1/images/files/{NAME}?{query}")
        assert response.status_code == 401, response.text


def test_an_empty_sig_is_checked_and_refused(keyed: TestClient) -> None:
    with keyed as c:
        key, _ = new_key("k", (), "interactive")
        services: Services = c.app.state.services  # type: ignore[attr-defined]
        c.portal.call(services.state.keys.add, key)
        assert c.get(f"/v1/images/files/{NAME}?expires=9999999999&sig=").status_code == 403
