"""The image endpoints honour or refuse every field, as chat does (protocol/fields.py's `images` table):
POST /v1/images/generations and POST /v1/images/jobs (the same body) answer 400 `unsupported_parameter`
naming a field they do not honour (OpenAI's `quality`, `style`, ... or one OpenAI does not have) unless it is
null, false or empty; the official openai client's request is accepted; the guide's POST /generate refuses a
field it does not declare, naming it (found by an attack run: all of these were silently ignored)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from llmops.protocol.fields import IMAGES
from llmops.protocol.images import ImageGenerationRequest
from tests.unit.test_api import assert_error
from tests.unit.test_images import FAKE_SD, FAST, loaded, size, start

PATHS = ["/v1/images/generations", "/v1/images/jobs"]
OK = {"/v1/images/generations": 200, "/v1/images/jobs": 202}
REFUSED = sorted(name for name, fate in IMAGES.items() if not fate.honoured)
# a value each refused field could really be sent with (OpenAI's own values where it has them)
VALUES: dict[str, Any] = {"quality": "hd", "style": "vivid", "background": "transparent", "output_format": "webp",
                          "output_compression": 50, "moderation": "low", "safety_identifier": "end-user-1",
                          "stream": True, "partial_images": 2, "complexity": "high", "frame_count": 4,
                          "frame_duration_ms": 100, "svg": {"model": "gpt-5"}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("img-fields")
    with start(tmp, [FAKE_SD], cache={"enabled": True}) as c:
        assert loaded(c)["models"]["fake-sd"]["state"] == "ready"
        yield c


def post(c: TestClient, path: str, **body: Any) -> Any:
    return c.post(path, json={"prompt": "a red fox", **FAST, **body})


def test_every_refused_field_has_a_value_to_send() -> None:
    assert set(VALUES) == set(REFUSED)


def test_the_table_honours_exactly_the_declared_fields() -> None:
    """A field the model declares is read by the server (so honoured); one it does not declare is an extra,
    which `refused_field` sees, so the table must not call it honoured."""
    honoured = {name for name, fate in IMAGES.items() if fate.honoured}
    assert honoured == set(ImageGenerationRequest.model_fields)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", REFUSED)
def test_refused_image_fields_name_themselves(client: TestClient, path: str, name: str) -> None:
    err = assert_error(post(client, path, **{name: VALUES[name]}), 400, param=name, code="unsupported_parameter")
    assert name in err["message"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("extra", ["foo", "width", "steps", "negative"])
def test_fields_openai_does_not_have_are_refused_not_ignored(client: TestClient, path: str, extra: str) -> None:
    assert_error(post(client, path, **{extra: 1}), 400, param=extra, code="unsupported_parameter")


@pytest.mark.parametrize("path", PATHS)
def test_a_refused_field_is_named_before_other_checks(client: TestClient, path: str) -> None:
    """A job's `url` and a server without a store are 400s too; the refused field is named first."""
    assert_error(post(client, path, response_format="url", quality="hd"), 400, param="quality",
                 code="unsupported_parameter")


@pytest.mark.parametrize("path", PATHS)
def test_null_false_or_empty_means_unset(client: TestClient, path: str) -> None:
    unset: dict[str, Any] = {name: None for name in IMAGES if name not in ("prompt", "size", "num_inference_steps")}
    unset.update(stream=False, svg={}, foo=None, bar=[])
    r = post(client, path, **unset)
    assert r.status_code == OK[path], r.text
    if path == "/v1/images/generations":
        assert len(r.json()["data"]) == 1  # n: null is 1, response_format: null is b64_json
        assert size(r.json()["data"][0]["b64_json"]) == (256, 256)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("quality", ["standard", "auto"])
def test_openais_default_quality_is_what_is_served(client: TestClient, path: str, quality: str) -> None:
    """OpenAI's examples send `quality="standard"` (DALL-E) or "auto" (gpt-image): the quality served."""
    r = post(client, path, quality=quality)
    assert r.status_code == OK[path], r.text


def test_a_refused_field_left_unset_keeps_the_cache_key(client: TestClient) -> None:
    first = post(client, "/v1/images/generations", seed=11)
    assert first.status_code == 200, first.text
    again = post(client, "/v1/images/generations", seed=11, quality=None, foo=None, stream=False)
    assert again.status_code == 200, again.text
    assert again.headers["x-cache"] == "hit"
    assert again.json()["data"] == first.json()["data"]


def test_the_official_client_is_accepted_and_refused_fields_named(client: TestClient) -> None:
    """The SDK sends only the fields the caller passes (its defaults are `omit`)."""
    sent: list[bytes] = []
    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)
    client.event_hooks = {"request": [lambda req: sent.append(req.read())], "response": []}
    try:
        result = sdk.images.generate(prompt="a lighthouse", size="256x256",
                                     extra_body={"num_inference_steps": 2})
        assert result.data is not None
        assert result.data[0].b64_json
        assert sent[-1] == b'{"prompt":"a lighthouse","size":"256x256","num_inference_steps":2}'
        result = sdk.images.generate(model="fake-sd", prompt="a lighthouse", n=2, size="256x256",
                                     response_format="b64_json", user="end-user-1",
                                     extra_body={"num_inference_steps": 2, "seed": 5, "guidance_scale": 7.0,
                                                 "negative_prompt": "fog"})
        assert result.data is not None
        assert len(result.data) == 2
        with pytest.raises(BadRequestError) as refused:
            sdk.images.generate(prompt="a lighthouse", size="256x256", quality="hd")
        assert refused.value.code == "unsupported_parameter"
        assert refused.value.param == "quality"
    finally:
        client.event_hooks = {"request": [], "response": []}


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("foo", "bar"), ("size", "256x256"),
                                              ("response_format", "url"), ("quality", "hd")])
def test_guide_generate_refuses_a_field_it_does_not_declare(client: TestClient, field: str, value: Any) -> None:
    """`"n": 2` had been accepted and answered with one image. The guide's body is not OpenAI's: it has no
    table, and refuses what it does not declare as the other such bodies do (classifications, v2)."""
    body = {"prompt": "x", "width": 256, "height": 256, "num_inference_steps": 2, field: value}
    err = assert_error(client.post("/generate", json=body), 400, param=field)
    assert field in err["message"]


def test_guide_generate_still_takes_its_own_fields(client: TestClient) -> None:
    body = {"prompt": "x", "negative_prompt": "fog", "num_inference_steps": 2, "guidance_scale": 7.5,
            "width": 256, "height": 256, "model": "fake-sd", "seed": 3}
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["seed"] == 3

