"""Image classification and the Open Inference Protocol, from an attack run:
- a 1 x 1,000,000 PNG (a few KB) passed at full size: scaling by the shorter side never shrinks it. Images more
  than MAX_ASPECT_RATIO times as long as wide are refused from the header, so a decoded image kept is bounded;
- decoding ran on asyncio's default executor (the stores' key lookups queued behind it) and before the budget:
  it now runs on the media side's own threads, after the key's permission, budget and the cache lookup;
- what Pillow raises for a JPEG cut short (OSError), a zTXt/iCCP chunk inflating too far (ValueError), ... was
  a 500: every such failure on a client's bytes is a 400 invalid_image, a server's own fault still a 500;
- any Content-Type was parsed as JSON (a cross-site text/plain or form POST needs no CORS preflight);
- a large /v2 body was parsed and flattened on the event loop;
- the model was looked up before the key's permission (404 naming models vs 403); ragged nested /v2 data with
  a matching count was accepted; the /versions/{version} routes the protocol names were 404."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from llmops.api import classifying, inference_v2
from llmops.engines.tiny_resnet import Digits, digits
from llmops.errors import DeadlineExceeded, InvalidRequest
from llmops.media.image_input import (
    MAX_ASPECT_RATIO,
    ImageLimits,
    check_request_pixels,
    decode_image,
    decode_images,
)
from llmops.media.workers import DecodeThreads
from llmops.protocol.inference_v2 import flatten
from llmops.stores.keys import KeyLimits, new_key
from tests.helpers import encode_image, ready_client, write_config
from tests.unit.test_classify import INFER, b64, bytes_request, digit_png, serve, v2_error
from tests.unit.test_image_input import png_header_only

LIMITS = ImageLimits(max_image_bytes=4_000_000, max_pixels=16_000_000)


@pytest.fixture(scope="module")
def data() -> Digits:
    return digits()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> Iterator[TestClient]:
    yield from serve(tmp_path_factory.mktemp("classify-hardening"), tiny_resnet_dir)


class Spy:
    """Wraps a function, recording the thread each call ran on and whether an event loop ran there."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.calls.append((threading.current_thread().name, on_loop))
        return self.fn(*args, **kwargs)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(classifying.decode_images)
    monkeypatch.setattr(classifying, "decode_images", spy)
    return spy


def thin_png(width: int, height: int) -> bytes:
    """A real, decodable PNG of a blank width x height image (a few KB for a million pixels)."""
    return encode_image(Image.new("L", (width, height)), "PNG")


# H1: an image's aspect ratio is bounded, so what a decoded image keeps is -------------------------------------------


def test_a_one_pixel_wide_image_is_refused_from_its_header() -> None:
    header = png_header_only(1, 16_000_000)  # the attack's shape: 48 MB of RGB from 31 KB on the wire
    with pytest.raises(InvalidRequest) as info:
        check_request_pixels([(header, "x[0]")], LIMITS)  # nothing decoded: the header says enough
    assert info.value.code == "invalid_image"
    assert info.value.param == "x[0]"
    assert "1x16000000" in info.value.message
    assert f"{MAX_ASPECT_RATIO}:1" in info.value.message
    with pytest.raises(InvalidRequest):
        decode_images([(thin_png(2_000, 1), "x[0]")], ImageLimits(4_000_000, 16_000_000, keep_side=64))


def test_images_up_to_the_aspect_limit_are_kept_within_it() -> None:
    keep = 16
    items = [(thin_png(64, 64 * MAX_ASPECT_RATIO), "x[0]"), (thin_png(64 * MAX_ASPECT_RATIO, 64), "x[1]")]
    images = decode_images(items, ImageLimits(4_000_000, 16_000_000, keep_side=keep))
    assert [im.size for im in images] == [(keep, keep * MAX_ASPECT_RATIO), (keep * MAX_ASPECT_RATIO, keep)]
    for im in images:  # the bound the README states: keep_side x (MAX_ASPECT_RATIO x keep_side)
        assert im.width * im.height <= MAX_ASPECT_RATIO * keep * keep


def test_a_thin_image_is_a_400_over_http(client: TestClient) -> None:
    thin = thin_png(1, 1_000_000)  # within the fixture's 1 M pixels and 100 KB: once classified at full size
    assert len(thin) < 100_000
    err = client.post("/v1/classifications", json={"images": [b64(thin)]}).json()["error"]
    assert (err["code"], err["param"]) == ("invalid_image", "images[0]")
    v2_error(client.post(INFER, json=bytes_request([thin])), 400, "inputs[0].data[0]", f"{MAX_ASPECT_RATIO}:1")


# H2: decoding on the media side's own threads, after the cheap refusals -------------------------------------------


def test_images_decode_on_their_own_threads_not_the_default_executor(client: TestClient, data: Digits,
                                                                     decodes: Spy) -> None:
    resp = client.post(INFER, json=bytes_request([digit_png(data, data.test[30])]),
                       headers={"Cache-Control": "no-cache"})
    assert resp.status_code == 200, resp.text
    assert len(decodes.calls) == 1
    name, on_loop = decodes.calls[0]
    assert not on_loop
    assert name.startswith("media-decode"), name  # asyncio.to_thread's would be "asyncio_N"


def test_a_cache_hit_decodes_nothing(client: TestClient, data: Digits, decodes: Spy) -> None:
    request = bytes_request([digit_png(data, data.test[31])], parameters={"top_k": 3})
    first, second = client.post(INFER, json=request), client.post(INFER, json=request)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert len(decodes.calls) == 1


def test_decode_threads_drop_work_past_its_deadline() -> None:
    threads = DecodeThreads(1)
    ran: list[int] = []
    gate, started = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        gate.wait(5)

    async def main() -> None:
        blocker = asyncio.ensure_future(threads.run(block))
        assert await asyncio.to_thread(started.wait, 5)  # the pool's one thread is taken
        with pytest.raises(DeadlineExceeded, match="before its images were decoded"):
            await threads.run(ran.append, 1, deadline=time.monotonic() + 0.05, waiting="its images were decoded")
        gate.set()
        await blocker
        assert await threads.run(sum, [1, 2]) == 3

    asyncio.run(main())
    assert ran == []  # queued behind the blocker, its deadline passed: it never ran
    threads.close()
    assert threads._executor is None
    assert asyncio.run(threads.run(sum, [2, 2])) == 4  # a new pool after close
    threads.close()


def test_the_app_closes_its_decode_threads(tmp_path: Path, tiny_resnet_dir: Path, data: Digits) -> None:
    gen = serve(tmp_path, tiny_resnet_dir)
    c = next(gen)
    assert c.post(INFER, json=bytes_request([digit_png(data, data.test[0])])).status_code == 200
    threads = c.app.state.decode_threads  # type: ignore[attr-defined]
    assert threads._executor is not None
    with pytest.raises(StopIteration):
        next(gen)  # the app's lifespan ends
    assert threads._executor is None


# M1: whatever Pillow raises on a client's bytes is a 400 ------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_with(kind: bytes, body: bytes) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(kind, body) + _chunk(b"IDAT", zlib.compress(b"\0" * 72)) + \
        _chunk(b"IEND", b"")


def _noise(fmt: str) -> bytes:
    return encode_image(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)


BROKEN = {
    "jpeg cut short": _noise("JPEG")[:300],  # OSError "Truncated File Read" while opening
    "bmp cut short": encode_image(Image.new("RGB", (20, 20)), "BMP")[:40],
    "webp cut short": _noise("WEBP")[:60],  # OSError "could not create decoder object"
    "zTXt bomb": _png_with(b"zTXt", b"k\0\0" + zlib.compress(b"A" * 2_000_000, 9)),  # ValueError, MAX_TEXT_CHUNK
    "iCCP bomb": _png_with(b"iCCP", b"p\0\0" + zlib.compress(b"A" * 2_000_000, 9)),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_every_pillow_failure_on_client_bytes_is_invalid_image(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_image(BROKEN[name], LIMITS, "file[0]")
    assert info.value.code == "invalid_image"
    assert info.value.param == "file[0]"
    assert "truncated or corrupt" in info.value.message
    assert len(info.value.message) < 300


def test_a_server_fault_while_decoding_is_not_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import PngImagePlugin

    def out_of_memory(self: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", out_of_memory)
    with pytest.raises(MemoryError):
        decode_image(encode_image(Image.new("RGB", (8, 8)), "PNG"), LIMITS, "x")


def test_broken_images_are_400_in_each_routes_envelope(client: TestClient) -> None:
    for name, broken in BROKEN.items():
        v2_error(client.post(INFER, json=bytes_request([broken])), 400, "inputs[0].data[0]", "truncated or corrupt")
        resp = client.post("/v1/classifications", json={"images": [b64(broken)]})
        assert resp.status_code == 400, (name, resp.text)
        err = resp.json()["error"]
        assert (err["code"], err["param"], err["type"]) == ("invalid_image", "images[0]", "invalid_request_error")


# M2: a body must be declared JSON (or, under /v2, not declared) ----------------------------------------------------

CROSS_SITE_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                    "text/plain;charset=UTF-8"]


@pytest.mark.parametrize("content_type", CROSS_SITE_TYPES)
def test_v2_refuses_bodies_a_cross_site_page_can_send(client: TestClient, data: Digits, content_type: str) -> None:
    raw = inference_v2.InferenceRequest.model_validate(bytes_request([digit_png(data, data.test[1])])) \
        .model_dump_json().encode()
    v2_error(client.post(INFER, content=raw, headers={"content-type": content_type}), 400, "must be JSON")


def test_v2_takes_json_declared_or_undeclared(client: TestClient, data: Digits) -> None:
    raw = inference_v2.InferenceRequest.model_validate(bytes_request([digit_png(data, data.test[1])])) \
        .model_dump_json().encode()
    assert client.post(INFER, content=raw, headers={"content-type": "application/json"}).status_code == 200
    bare = client.post(INFER, content=raw)  # httpx sends no Content-Type with raw bytes: as Triton's client
    assert bare.status_code == 200, bare.text


@pytest.mark.parametrize("origin", ["https://evil.example", "http://testserver.evil.example", "null",
                                    "http://127.0.0.1:9", "testserver"])
def test_v2_refuses_an_undeclared_body_from_another_origin(client: TestClient, data: Digits, origin: str) -> None:
    """A page on another site can POST a Blob with no type (no Content-Type, no preflight); its browser names
    the page's origin."""
    raw = inference_v2.InferenceRequest.model_validate(bytes_request([digit_png(data, data.test[1])])) \
        .model_dump_json().encode()
    v2_error(client.post(INFER, content=raw, headers={"origin": origin}), 400, "must be JSON")
    declared = client.post(INFER, content=raw, headers={"origin": origin, "content-type": "application/json"})
    assert declared.status_code == 200, declared.text  # JSON declared needs a preflight: CORS decides


@pytest.mark.parametrize("origin", ["http://testserver", "https://TestServer"])
def test_v2_takes_an_undeclared_body_from_its_own_origin(client: TestClient, data: Digits, origin: str) -> None:
    raw = inference_v2.InferenceRequest.model_validate(bytes_request([digit_png(data, data.test[1])])) \
        .model_dump_json().encode()
    resp = client.post(INFER, content=raw, headers={"origin": origin})
    assert resp.status_code == 200, resp.text


def test_a_multipart_upload_from_another_origin_is_refused(client: TestClient, data: Digits) -> None:
    """A page on another site can post a FormData (multipart) without a preflight: refused when its browser
    names another origin; curl -F (no Origin) and the server's own pages are served."""
    files = [("file", ("d.png", digit_png(data, data.test[1]), "image/png"))]
    for origin in ("https://evil.example", "null"):
        resp = client.post("/v1/classifications", files=files, headers={"origin": origin})
        assert resp.status_code == 400, resp.text
        assert "another origin" in resp.json()["error"]["message"]
    for headers in ({}, {"origin": "http://testserver"}):
        assert client.post("/v1/classifications", files=files, headers=headers).status_code == 200


def test_an_origin_cors_allows_may_send_what_needs_no_preflight(tmp_path: Path, tiny_resnet_dir: Path,
                                                                 data: Digits) -> None:
    models = [{"name": "digits", "kind": "classify", "engine": "classifier",
               "options": {"model": str(tiny_resnet_dir), "n_threads": 1}}]
    cfg = write_config(tmp_path / "cors.yaml", models, state={"backend": "memory"},
                       web={"cors_origins": ["https://app.example"]})
    files = [("file", ("d.png", digit_png(data, data.test[1]), "image/png"))]
    raw = inference_v2.InferenceRequest.model_validate(bytes_request([digit_png(data, data.test[1])])) \
        .model_dump_json().encode()
    with ready_client(cfg, 60) as c:
        for origin, status in (("https://app.example", 200), ("https://evil.example", 400)):
            headers = {"origin": origin}
            assert c.post("/v1/classifications", files=files, headers=headers).status_code == status
            assert c.post(INFER, content=raw, headers=headers).status_code == status


@pytest.mark.parametrize("content_type", [*CROSS_SITE_TYPES[:2], CROSS_SITE_TYPES[3], None])
def test_classifications_refuse_a_body_not_declared_json(client: TestClient, data: Digits,
                                                         content_type: str | None) -> None:
    raw = b'{"images": ["' + b64(digit_png(data, data.test[1])).encode() + b'"]}'
    headers = {"content-type": content_type} if content_type else {}
    resp = client.post("/v1/classifications", content=raw, headers=headers)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "must be JSON" in err["message"]
    assert client.post("/v1/classifications", content=raw, headers={"content-type": "application/json"}) \
        .status_code == 200


# M3: a large /v2 body is parsed off the event loop ----------------------------------------------------------------


def test_a_large_v2_body_is_parsed_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(inference_v2.parse_json)
    monkeypatch.setattr(inference_v2, "parse_json", spy)
    n = 2 * 3 * 32 * 32
    ok = {"inputs": [{"name": "x", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": [0.123456789] * n}]}
    mismatch = {"inputs": [{"name": "x", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": [0.123456789] * n}]}
    assert len(inference_v2.InferenceRequest.model_validate(ok).model_dump_json()) > inference_v2.OFF_LOOP_BYTES
    assert client.post(INFER, json=ok).status_code == 200
    v2_error(client.post(INFER, json=mismatch), 400, f"holds {3 * 3 * 32 * 32} elements but data has {n}")
    assert len(spy.calls) == 2
    assert all(not on_loop and name.startswith("media-decode") for name, on_loop in spy.calls), spy.calls


# LOW: permission before existence; ragged data; versions ----------------------------------------------------------


def test_ragged_nested_data_is_refused_even_when_its_count_matches(client: TestClient) -> None:
    ragged = {"inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32",
                          "data": [[0.0] * 3071, [0.0]]}]}
    v2_error(client.post(INFER, json=ragged), 400, "inputs[0]", "does not match shape [1, 3, 32, 32]")
    with pytest.raises(ValueError, match="deeper"):
        flatten([["a"], ["b"]], [2], 2)
    with pytest.raises(ValueError, match="nested 1 deep"):
        flatten([[1, 2], 3], [2, 2], 4)
    assert flatten([[1, 2], [3, 4]], [2, 2], 4) == [1, 2, 3, 4]
    assert flatten([1, 2, 3, 4], [2, 2], 4) == [1, 2, 3, 4]
    assert flatten([["a"], ["b"]], [2, 1], 2) == ["a", "b"]


def test_the_versions_routes_serve_the_models_one_version(client: TestClient, data: Digits) -> None:
    meta = client.get("/v2/models/digits/versions/1")
    assert meta.status_code == 200, meta.text
    assert meta.json()["versions"] == ["1"]
    assert client.get("/v2/models/digits").json()["versions"] == ["1"]
    assert client.get("/v2/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}
    request = bytes_request([digit_png(data, data.test[2])])
    resp = client.post("/v2/models/digits/versions/1/infer", json=request)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["model_name"], resp.json()["model_version"]) == ("digits", "1")
    v2_error(client.post("/v2/models/digits/versions/2/infer", json=request), 404, "no version '2'")
    v2_error(client.get("/v2/models/digits/versions/2"), 404)
    v2_error(client.get("/v2/models/digits/versions/2/ready"), 404)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory,
          tiny_resnet_dir: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A server with keys: one kept to the chat model, one for digits with its budget spent ($0), one with
    budget to spare."""
    for c in serve(tmp_path_factory.mktemp("classify-keyed"), tiny_resnet_dir):
        store = c.app.state.services.state.keys  # type: ignore[attr-defined]
        only_fake, fake_secret = new_key("only-fake", ("fake",), "interactive", KeyLimits())
        broke, broke_secret = new_key("broke", ("digits",), "interactive", KeyLimits(budget_usd=0.0))
        rich, rich_secret = new_key("rich", ("digits",), "interactive", KeyLimits(budget_usd=100.0))
        for key in (only_fake, broke, rich):
            c.portal.call(store.add, key)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10  # the auth middleware re-reads the key count once a second
        while c.get("/v2/models/digits").status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c, {"fake": fake_secret, "broke": broke_secret, "rich": rich_secret, "rich_id": rich.id}


def test_a_key_kept_to_other_models_learns_nothing_of_which_exist(keyed: tuple[TestClient, dict[str, str]],
                                                                  data: Digits) -> None:
    c, secrets = keyed
    auth = {"Authorization": f"Bearer {secrets['fake']}"}
    request = bytes_request([digit_png(data, data.test[0])])
    answers = [c.post("/v2/models/nope/infer", json=request, headers=auth),
               c.post("/v2/models/digits/infer", json=request, headers=auth),
               c.get("/v2/models/nope", headers=auth), c.get("/v2/models/nope/ready", headers=auth)]
    for resp in answers:
        message = v2_error(resp, 403, "may not use model")
        assert "does not exist" not in message
    for model in ("nope", "digits"):
        resp = c.post("/v1/classifications", json={"model": model, "images": ["AA=="]}, headers=auth)
        assert resp.status_code == 403, resp.text
        err = resp.json()["error"]
        assert err["code"] == "model_not_allowed"
        assert "digits" not in err["message"] or model == "digits"  # no list of the models that exist


def test_a_spent_budget_is_refused_before_any_image_is_decoded(keyed: tuple[TestClient, dict[str, str]],
                                                               data: Digits, decodes: Spy) -> None:
    c, secrets = keyed
    auth = {"X-API-Key": secrets["broke"]}
    v2_error(c.post(INFER, json=bytes_request([digit_png(data, data.test[3])] * 4), headers=auth), 429, "budget")
    resp = c.post("/v1/classifications", json={"images": [b64(digit_png(data, data.test[3]))]}, headers=auth)
    assert resp.status_code == 429, resp.text
    assert decodes.calls == []


def test_a_bad_image_gives_its_budget_reservation_back(keyed: tuple[TestClient, dict[str, str]]) -> None:
    c, secrets = keyed
    accountant = c.app.state.services.accountant  # type: ignore[attr-defined]
    noise = encode_image(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    broken = bytes_request([noise[: len(noise) // 2]])  # refused only once decoded, after the budget reserved
    v2_error(c.post(INFER, json=broken, headers={"X-API-Key": secrets["rich"]}), 400, "truncated or corrupt")
    assert accountant.reserved(secrets["rich_id"]) == 0.0
