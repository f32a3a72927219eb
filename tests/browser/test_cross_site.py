"""What a page on another site can make a browser send to a server on the loopback, tried in Chromium: a
body it may POST without a CORS preflight (a Blob with no type carries no Content-Type; text/plain) is
refused by /v2 inference before any image is decoded, while the same untyped body from the server's own
origin (the console's) is served. Counted from the server's own metrics: the page cannot read the answers
(no CORS)."""

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

ROUTE = "/v2/models/{name}/infer"


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


def infer_counts(base: str) -> dict[str, float]:
    """The server's /v2 inference requests by status."""
    counts: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        m = re.match(r'llmops_http_requests_total{method="POST",route="([^"]+)",status="(\d+)"} (\S+)', line)
        if m and m.group(1) == ROUTE:
            counts[m.group(2)] = float(m.group(3))
    return counts


POST = """async ([url, body, type]) => {
    const blob = type === null ? new Blob([body]) : new Blob([body], {type});
    const resp = await fetch(url, {method: 'POST', mode: 'no-cors', body: blob});
    return resp.type;
}"""


def test_another_sites_page_cannot_run_inference_with_an_undeclared_body(browser: Any, other_site: str,
                                                                         classifier: str) -> None:
    image = encode_image(digits().images[0], "PNG")
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(image).decode()]}]})
    url = classifier + "/v2/models/digits/infer"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(other_site)
        for kind in (None, "text/plain"):
            assert page.evaluate(POST, [url, body, kind]) == "opaque"  # sent; its answer unreadable
        assert eventually(lambda: infer_counts(classifier).get("400") == 2, timeout=30), infer_counts(classifier)
        assert "200" not in infer_counts(classifier)

        page.goto(classifier + "/console/")  # the server's own origin: an untyped body is served
        assert page.evaluate(POST, [url, body, None]) == "basic"
        assert eventually(lambda: infer_counts(classifier).get("200") == 1, timeout=30), infer_counts(classifier)
    finally:
        context.close()
