"""The edge serves the inference POSTs itself (api/direct.py). What it answers must be what FastAPI's own
routing of the same route answers: every case here is sent both ways, through the edge and, with the edge
switched off, through FastAPI alone, and the answers compared."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from llmops.api.direct import direct_routes
from llmops.app import DIRECT_PATHS, LLMOpsApp
from llmops.observability.metrics import Metrics

JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]

CASES: list[tuple[str, bytes, dict[str, str]]] = [
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hello"}]}', JSON),
    (CHAT, b'{"model": "fake"}', JSON),
    (CHAT, b'{"model": "fake", "messages": "hello"}', JSON),
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "n": 0}', JSON),
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}', JSON),
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', JSON),
    (CHAT, b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', JSON),
    (CHAT, b'{"model": ', JSON),
    (CHAT, b"[1, 2]", JSON),
    (CHAT, b"", JSON),
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}', {"content-type": "text/plain"}),
    (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}', {}),
    ("/v1/completions", b'{"model": "fake", "prompt": "say", "max_tokens": 2}', JSON),
    ("/v1/completions", b'{"model": "fake", "prompt": 7}', JSON),
    ("/v1/embeddings", b'{"model": "fake", "input": "x"}', JSON),
    ("/v1/images/generations", b'{"prompt": "a cat", "size": "0x0"}', JSON),
]


@pytest.fixture
def both(client: TestClient) -> tuple[TestClient, LLMOpsApp]:
    app = client.app
    assert isinstance(app, LLMOpsApp)
    return client, app


def _answer(client: TestClient, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    response = client.post(path, content=body, headers=headers)
    data = response.json()
    if response.status_code != 200:
        return response.status_code, (data["error"]["type"], data["error"]["param"])
    return response.status_code, (data["object"], [c.get("finish_reason") for c in data["choices"]])


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
def test_the_edge_answers_as_fastapi_would(both: tuple[TestClient, LLMOpsApp], path: str, body: bytes,
                                          headers: dict[str, str]) -> None:
    client, app = both
    direct = _answer(client, path, body, headers)
    entry, app.entry = app.entry, None  # FastAPI alone: its routing, dependency solving, error handlers
    try:
        routed = _answer(client, path, body, headers)
    finally:
        app.entry = entry
    assert direct == routed


def test_every_direct_path_is_the_documented_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in DIRECT_PATHS:
        assert "post" in schema["paths"][path]
        assert "requestBody" in schema["paths"][path]["post"]


def test_a_bad_body_names_the_problem(client: TestClient) -> None:
    empty = client.post(CHAT, content=b"", headers=JSON).json()["error"]
    assert "no body" in empty["message"]
    listed = client.post(CHAT, content=b"[]", headers=JSON).json()["error"]
    assert "JSON object" in listed["message"]
    plain = client.post(CHAT, content=b"{}", headers={"content-type": "text/plain"}).json()["error"]
    assert "application/json" in plain["message"]
    broken = client.post(CHAT, content=b'{"model"', headers=JSON).json()["error"]
    assert broken["message"].startswith("request body is not valid JSON")


class _Body(BaseModel):
    x: int


def test_a_route_of_another_shape_is_refused_at_start() -> None:
    router = APIRouter()

    @router.post("/with-query")
    async def with_query(body: _Body, request: Request, q: int = 0) -> JSONResponse:
        return JSONResponse({})

    @router.post("/embedded")
    async def embedded(body: Annotated[_Body, Body(embed=True)], request: Request) -> JSONResponse:
        return JSONResponse({})

    @router.post("/returns-model")
    async def returns_model(body: _Body, request: Request) -> _Body:
        return body

    for path in ("/with-query", "/embedded", "/returns-model", "/absent"):
        with pytest.raises(ValueError, match=path):
            direct_routes(router.routes, [path], Metrics())
