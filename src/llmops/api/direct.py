"""Routes the edge serves itself (middleware/edge.py): the inference POSTs, whose every request would
otherwise pay FastAPI's routing, dependency solving and a second read and parse of a body the edge has
already read, bounded, checked and parsed.

A direct route is built from the FastAPI route that documents it (`APIRoute`), so the schema and what is
served cannot drift: the same endpoint function is called with the same body model, validated from the
same JSON the same way (`model_validate` on the parsed body, as FastAPI's `validate_python`), and its
errors become the same answers as FastAPI's exception handlers give (`llmops_error`, `invalid_request`,
shared with app.install_error_handlers). Only routes of one shape qualify: one JSON body parameter, the
`Request`, nothing else to solve, a `Response` returned; `direct_routes` refuses any other at start."""

from __future__ import annotations

import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from llmops.errors import InvalidRequest, LLMOpsError, error_format
from llmops.http_edge import UNKNOWN_MODEL, UNPARSED, error_response, log_fields
from llmops.observability.metrics import Metrics
from llmops.protocol.wire import TYPE_ERROR, wrong_type

Endpoint = Callable[..., Coroutine[Any, Any, Response]]
_UNPARSED_BODY = "request body is not valid JSON"


def invalid_request(errors: Iterable[Any]) -> InvalidRequest:
    """A 400 naming the first problem pydantic (or FastAPI) found in a body."""
    first = next(iter(errors), None)
    if first is None:
        return InvalidRequest("invalid request")
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"{_UNPARSED_BODY}: {first.get('msg', '')}")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        if param is None:
            return InvalidRequest("the request has no body: send a JSON object")
        return InvalidRequest(f"missing required parameter '{param}'", param=param)
    if param is None:
        return InvalidRequest(f"the request body must be a JSON object: {first.get('msg', 'invalid')}")
    expected = wrong_type(first)  # "expected an integer, but got a string instead", as OpenAI says it
    if expected is not None:
        return InvalidRequest(f"invalid type for '{param}': {expected}", param=param, code=TYPE_ERROR)
    return InvalidRequest(f"invalid value for '{param}': {first.get('msg', 'invalid')}", param=param)


def llmops_error(exc: LLMOpsError, scope: Scope, metrics: Metrics) -> JSONResponse:
    """`exc` in the path's envelope, its refusal counted once (llmops_rejections_total) under the model the
    request named, when it got that far."""
    metrics.reject(str(log_fields(scope).get("model", UNKNOWN_MODEL)), exc)
    return error_response(exc, fmt=error_format(scope["path"]))


def json_content(scope: Scope) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json (it reads no other type)."""
    for name, value in scope["headers"]:  # the first Content-Type (a loop: no generator object a request)
        if name == b"content-type":
            kind: bytes = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
    return False


class DirectRoute:
    def __init__(self, route: APIRoute, metrics: Metrics) -> None:
        self.route, self.metrics = route, metrics
        self.endpoint: Endpoint = route.endpoint
        self.model, self.body_name, self.request_name = _shape(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, raw: bytes, parsed: Any) -> None:
        scope["route"], scope["endpoint"], scope["path_params"] = self.route, self.endpoint, {}
        request = Request(scope, receive)
        request._body = raw
        try:
            body = self._body(scope, raw, parsed)
            response = await self.endpoint(**{self.body_name: body, self.request_name: request})
        except LLMOpsError as exc:
            response = llmops_error(exc, scope, self.metrics)
        await response(scope, receive, send)

    def _body(self, scope: Scope, raw: bytes, parsed: Any) -> BaseModel:
        if not raw:
            raise invalid_request([{"type": "missing", "loc": ("body",)}])
        if not json_content(scope):
            raise InvalidRequest("the request body must be JSON, sent with Content-Type: application/json")
        if parsed is UNPARSED:
            raise InvalidRequest(f"{_UNPARSED_BODY}: JSON decode error")
        try:
            return self.model.model_validate(parsed)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None


def _shape(route: APIRoute) -> tuple[type[BaseModel], str, str]:
    """The body model and the two parameter names of a route the edge can serve; ValueError otherwise."""
    d = route.dependant
    others = (d.path_params, d.query_params, d.header_params, d.cookie_params, d.dependencies)
    if len(d.body_params) != 1 or any(others) or d.request_param_name is None:
        raise ValueError(f"{route.path}: a direct route takes one JSON body and the Request, nothing else")
    if d.background_tasks_param_name or d.response_param_name or d.websocket_param_name:
        raise ValueError(f"{route.path}: a direct route takes one JSON body and the Request, nothing else")
    field = d.body_params[0]
    if getattr(field.field_info, "embed", False) or field.alias != field.name:  # FastAPI wants {"name": {...}}
        raise ValueError(f"{route.path}: a direct route's body is the whole JSON object (no embed, no alias)")
    model = field.field_info.annotation
    returns = typing.get_type_hints(route.endpoint).get("return")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"{route.path}: the body is not a pydantic model")
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        raise ValueError(f"{route.path}: a direct route returns a Response")
    return model, field.name, d.request_param_name


def direct_routes(routes: Iterable[Any], paths: Iterable[str], metrics: Metrics) -> Mapping[str, DirectRoute]:
    """The POST routes at `paths`, each served by the edge; ValueError for a path with no such route."""
    by_path = {r.path: r for r in routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())}
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise ValueError(f"no POST route for {missing}")
    return {p: DirectRoute(by_path[p], metrics) for p in paths}
