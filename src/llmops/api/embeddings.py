"""POST /v1/embeddings: parse, admit (the model's admission, deadline and priority, like every request),
embed (concurrent requests coalesced into one forward batch by the engine), account, format."""

from __future__ import annotations

import asyncio
import base64
import struct
import time

from fastapi import APIRouter, Request

from llmops.api import deps
from llmops.api.request_meta import request_meta
from llmops.engines.base import EmbeddingResult
from llmops.errors import DeadlineExceeded, LLMOpsError, UnsupportedParameter
from llmops.middleware.observe import log_fields
from llmops.observability.inference import InferenceObserver
from llmops.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    refused = body.unsupported_field()
    if refused:
        raise UnsupportedParameter(f"'{refused}' is not supported by this server", param=refused)
    pool = deps.pool(request)
    config = pool.config(body.model, "embeddings")
    deps.authorize(request, config.name)
    inputs = body.inputs()
    texts = [x for x in inputs if isinstance(x, str)]
    checked = iter(deps.guardrails(request).check_input(texts))
    inputs = [next(checked) if isinstance(x, str) else x for x in inputs]
    meta = request_meta(request, config)
    charge = await deps.accountant(request).admit(deps.api_key(request), config, sum(len(t) for t in texts))
    served, engine = pool.embedding_engine(config.name)
    obs = InferenceObserver(request.app.state.metrics, request.app.state.tracer, config.name, log_fields(request.scope))
    status, tokens = "error", 0
    try:
        async with served.admission.slot(meta.deadline, meta.priority) as ticket:
            meta.admitted(ticket)
            obs.admitted(ticket)
            result = await _embed(engine.embed(inputs, body.dimensions), meta.deadline)
        tokens, status = result.prompt_tokens, "success"
    except LLMOpsError as exc:
        status = obs.rejected(exc)
        raise
    finally:
        obs.embedded(status, tokens, len(inputs))
        deps.accountant(request).settle(charge, tokens)
    data = [Embedding(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(result.vectors)]
    return EmbeddingList(data=data, model=config.name,
                         usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


async def _embed(work: object, deadline: float) -> EmbeddingResult:
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await work  # type: ignore[misc, no-any-return]
    except TimeoutError:
        raise DeadlineExceeded("the request ran past its deadline") from None


def _encode(vector: list[float], encoding: str | None) -> list[float] | str:
    """float: the list; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
