"""POST /v1/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmops.api import deps
from llmops.api.disconnect import cancel_on_disconnect
from llmops.api.generation import (
    Choices,
    Collected,
    admit,
    check_request,
    collect,
    new_id,
    now,
    run_choices,
    stream_choices,
    text_requests,
)
from llmops.api.request_meta import request_meta
from llmops.api.sse import event, sse_response
from llmops.errors import InvalidRequest
from llmops.protocol.completions import Completion, CompletionChoice, CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request) -> Response:
    deps.authorize(request, body.model)
    served, engine = deps.pool(request).text_engine(body.model)
    check_request(body, served.config)
    prompt = body.prompt_text()
    if prompt is None:
        raise InvalidRequest("send one prompt per request (a list of several prompts is not supported)",
                             param="prompt")
    meta = request_meta(request, served.config, body.service_tier())
    reqs = text_requests(body, served.config, body.requested_max_tokens(), prompt=prompt)
    charge = await admit(request, served.config, len(prompt))
    choices = run_choices(request, served, engine, reqs, meta, charge)
    if body.stream:
        return await sse_response(_events(choices, body), meta.headers)
    done = await cancel_on_disconnect(request, collect(choices, len(reqs)))
    out = [CompletionChoice(index=i, text=text, finish_reason=done.finish[i] or "stop")
           for i, text in enumerate(done.texts)]
    result = Completion(id=new_id("cmpl"), created=now(), model=body.model, choices=out, usage=done.usage())
    return JSONResponse(result.model_dump(), headers=meta.headers())


async def _events(choices: Choices, body: CompletionRequest) -> AsyncIterator[bytes]:
    totals = Collected(texts=[], finish=[])
    chunk_id, created = new_id("cmpl"), now()
    async for index, text, finish in stream_choices(choices, totals):
        choice = CompletionChoice(index=index, text=text, finish_reason=finish)
        yield event(Completion(id=chunk_id, created=created, model=body.model, choices=[choice]))
    if body.include_usage():
        yield event(Completion(id=chunk_id, created=created, model=body.model, choices=[],
                               usage=totals.usage()))
