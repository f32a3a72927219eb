"""Any other path under /v1/: 404 in the OpenAI envelope naming the route as unsupported (an OpenAI API this
server does not implement, e.g. /v1/responses or /v1/audio/speech), rather than a bare "Not Found". A path
that exists under another method keeps its 405. Included after every other router."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.routing import Match

from llmops.errors import MethodNotAllowed, NotFound

router = APIRouter(include_in_schema=False)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/v1/{rest:path}", methods=METHODS)
async def unsupported_route(rest: str, request: Request) -> None:
    for route in request.app.router.routes:
        if getattr(route, "endpoint", None) is unsupported_route:
            continue
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    raise NotFound(f"{request.method} {request.url.path} is not supported by this server (an OpenAI API route "
                   "it does not implement)", param="route", code="unsupported_route")
