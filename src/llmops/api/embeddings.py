"""POST /v1/embeddings: parse into embeddings work, run it through the pipeline (route, guardrails, budget,
admission, engine, accounting: pipeline/embeddings.py), format (floats, or base64 as OpenAI sends them)."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.errors import UnsupportedParameter
from llmops.pipeline import embeddings, stages
from llmops.pipeline.embeddings import EmbeddingsWork
from llmops.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    refused = body.unsupported_field()
    if refused:
        raise UnsupportedParameter(f"'{refused}' is not supported by this server", param=refused)
    work = EmbeddingsWork(body.model, body.inputs(), body.dimensions, body.user)
    services = deps.services(request)
    call = await stages.prepare(services, deps.context(request), work)
    try:
        result = await cancel_on_disconnect(request, embeddings.embed(services, call, work))
    finally:  # settled by the work once it started; this covers a client gone before that
        stages.settle_unused(services, call)
    data = [Embedding(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(result.vectors)]
    tokens = result.prompt_tokens
    out = EmbeddingList(data=data, model=call.config.name,
                        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
    return JSONResponse(out.model_dump(), headers=call.headers())


def _encode(vector: list[float], encoding: str | None) -> list[float] | str:
    """float: the list; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
