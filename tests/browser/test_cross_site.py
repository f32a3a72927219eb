"""What a page on another site can make a browser send to a server on the loopback, tried in Chromium: a
body it may POST without a CORS preflight (a Blob with no type carries no Content-Type; text/plain) is
refused by /v2 inference before any image is decoded, as is a multipart upload (a FormData) to
/v1/classifications, while the same bodies from the server's own origin (the console's) are served.
Counted from the server's own metrics: the page cannot read the answers (no CORS)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops.engines.tiny_resnet import digits
from tests.helpers import encode_image, eventually, live_server, write_config

INFER = "/v2/models/{name}/infer"
CLASSIFY = "/v1/classifications"


class Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title><p>another site"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def other_site() -> Iterator[str]:
    """A page on another origin (another port of the loopback)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("cross-site")
    models = [{"name": "digits", "kind": "classify", "engine": "classifier",
               "options": {"model": str(tiny_resnet_dir), "n_threads": 1}}]
    with live_server(write_config(folder / "c.yaml", models)) as base:
        yield base


def counts(base: str, route: str) -> dict[str, float]:
    """The server's POST requests to `route` by status."""
    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        m = re.match(r'llmops_http_requests_total{method="POST",route="([^"]+)",status="(\d+)"} (\S+)', line)
        if m and m.group(1) == route:
            out[m.group(2)] = float(m.group(3))
    return out


POST = """async ([url, body, type]) => {
    const blob = type === null ? new Blob([body]) : new Blob([body], {type});
    const resp = await fetch(url, {method: 'POST', mode: 'no-cors', body: blob});
    return resp.type;
}"""
UPLOAD = """async ([url, png]) => {
    const form = new FormData();
    form.append('file', new Blob([Uint8Array.from(atob(png), c => c.charCodeAt(0))], {type: 'image/png'}), 'd.png');
    const resp = await fetch(url, {method: 'POST', mode: 'no-cors', body: form});
    return resp.type;
}"""


def test_another_sites_page_cannot_run_inference_with_a_body_needing_no_preflight(
        browser: Any, other_site: str, classifier: str) -> None:
    image = encode_image(digits().images[0], "PNG")
    png = base64.b64encode(image).decode()
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [png]}]})
    infer, classify = classifier + "/v2/models/digits/infer", classifier + CLASSIFY
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(other_site)
        for kind in (None, "text/plain"):
            assert page.evaluate(POST, [infer, body, kind]) == "opaque"  # sent; its answer unreadable
        assert page.evaluate(UPLOAD, [classify, png]) == "opaque"
        assert eventually(lambda: counts(classifier, INFER).get("400") == 2, timeout=30), counts(classifier, INFER)
        assert eventually(lambda: counts(classifier, CLASSIFY).get("400") == 1, timeout=30)
        assert "200" not in counts(classifier, INFER)
        assert "200" not in counts(classifier, CLASSIFY)

        page.goto(classifier + "/console/")  # the server's own origin: both are served
        assert page.evaluate(POST, [infer, body, None]) == "basic"
        assert page.evaluate(UPLOAD, [classify, png]) == "basic"
        assert eventually(lambda: counts(classifier, INFER).get("200") == 1, timeout=30), counts(classifier, INFER)
        assert eventually(lambda: counts(classifier, CLASSIFY).get("200") == 1, timeout=30)
    finally:
        context.close()
