"""POST /v1/embeddings: parse into embeddings work, run it through the pipeline (route, guardrails, budget,
admission, engine, accounting: pipeline/embeddings.py), format (floats, or base64 as OpenAI sends them).

The body is the `EmbeddingList` as JSONResponse would render it, byte for byte, written one vector at a time:
a large answer is written in a worker thread (2,048 MiniLM vectors take about 0.5 s to JSON-encode), and
`json.dumps` holds the GIL until it returns, so one call per vector lets the event loop run in between."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import struct

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.engines.embeddings import InputTooLong
from llmops.errors import UnsupportedParameter
from llmops.pipeline import embeddings, stages
from llmops.pipeline.embeddings import EmbeddingsWork
from llmops.protocol.embeddings import EmbeddingList, EmbeddingRequest

router = APIRouter()

# An answer holding more numbers than this is written in a worker thread, not on the event loop: a float
# costs about 0.6 us to JSON-encode, so up to this many is under a millisecond on the loop (a thread hop
# costs more than that saves).
OFF_LOOP_VALUES = 1024

# JSONResponse's own rendering (starlette.responses.JSONResponse.render)
_dumps = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    refused = body.unsupported_field()
    if refused:
        raise UnsupportedParameter(f"'{refused}' is not supported by this server", param=refused)
    work = EmbeddingsWork(body.model, body.inputs(), body.dimensions, body.user)
    services = deps.services(request)
    call = await stages.prepare(services, deps.context(request), work)
    try:
        result = await cancel_on_disconnect(request, embeddings.embed(services, call, work))
    except InputTooLong as exc:
        if not isinstance(body.input, list) or isinstance(body.input[0], int):  # one text, or one list of ids
            exc.named("input")
        raise
    finally:  # settled by the work once it started; this covers a client gone before that
        stages.settle_unused(services, call)
    vectors, encoding, name, tokens = result.vectors, body.encoding_format, call.config.name, result.prompt_tokens
    if sum(len(v) for v in vectors) > OFF_LOOP_VALUES:
        content = await asyncio.to_thread(_body, vectors, encoding, name, tokens)
    else:
        content = _body(vectors, encoding, name, tokens)
    return Response(content, media_type="application/json", headers=call.headers())


def _body(vectors: list[list[float]], encoding: str | None, model: str, tokens: int) -> bytes:
    """The `EmbeddingList` JSON (object, data, model, usage), as `JSONResponse(out.model_dump())` renders it."""
    data = b",".join([_item(i, _encode(v, encoding)) for i, v in enumerate(vectors)])
    usage = _dumps({"prompt_tokens": tokens, "total_tokens": tokens})
    return b'{"object":"list","data":[%b],"model":%b,"usage":%b}' % (data, _dumps(model).encode(), usage.encode())


def _item(index: int, embedding: list[float] | str) -> bytes:
    """One `Embedding` (object, index, embedding)."""
    return b'{"object":"embedding","index":%d,"embedding":%b}' % (index, _dumps(embedding).encode())


def _encode(vector: list[float], encoding: str | None) -> list[float] | str:
    """float: the list; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
