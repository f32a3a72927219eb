"""Image URLs on a keyed server: what `response_format: url` returns can be fetched without the key (an
<img src>, a download), as OpenAI's can; the same path without its signature needs the key."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import openai
import pytest

from llmops.cli import main
from tests.helpers import live_server, write_config

pytest.importorskip("diffusers")
from PIL import Image

TINY = {"name": "tiny-sd", "kind": "image", "engine": "diffusers",
        "options": {"model": "builtin:tiny-sd", "safety_checker": False, "n_threads": 1},
        "limits": {"image": {"min_size": 64, "default_size": 64, "default_steps": 2}}}


def test_a_returned_url_is_fetchable_without_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMOPS_STATE__SQLITE_PATH", str(tmp_path / "keys.db"))
    cfg = write_config(tmp_path / "img.yaml", [TINY], images={"store_dir": str(tmp_path / "images"),
                                                                "url_ttl_s": 600})
    assert main(["keys", "create", "--name", "img", "--secret-only", "--config", str(cfg)]) == 0
    secret = capsys.readouterr().out.strip()
    with live_server(cfg) as base, openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as client:
        result = client.images.generate(model="tiny-sd", prompt="a red door", size="64x64", response_format="url")
        assert result.data is not None
        url = result.data[0].url
        assert url is not None
        assert url.startswith(f"{base}/v1/images/files/imgfile-")
        assert "expires=" in url
        assert "sig=" in url
        fetched = httpx.get(url)  # no key
        assert fetched.status_code == 200
        assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
        unsigned = url.split("?")[0]
        assert httpx.get(unsigned).status_code == 401
        assert httpx.get(unsigned, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
        assert httpx.get(forged).status_code == 403
