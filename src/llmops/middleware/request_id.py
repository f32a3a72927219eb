"""Give every request an id: the client's `X-Request-Id` if it is sane, else a fresh one; returned on the
response (the edge adds it to the answer's headers) and kept in `scope["state"]["request_id"]` for logs."""

from __future__ import annotations

import re

from starlette.types import Scope

from llmops.ids import unique_hex

_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def assign_request_id(scope: Scope) -> str:
    given = ""
    for name, value in scope["headers"]:  # a loop, not next() over a generator: one object fewer a request
        if name == b"x-request-id":
            given = value.decode("latin-1")
            break
    request_id = given if given and _SANE.match(given) else unique_hex()
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id
