"""JSON types as OpenAI's API takes them: a request field of the wrong JSON type is a 400, never coerced.

pydantic's lax mode read `"max_tokens": "5"` as 5, `"stream": "true"` or `1` as true, `"temperature": "0.5"`
as 0.5, `"n": 2.0` as 2 and `"seed": true` as 1, where OpenAI answers 400 `invalid_type`: "Invalid type for
'max_tokens': expected an integer, but got a string instead." Every request body, and every object inside one,
is a `WireModel`: strict, so a string is not a number or a boolean, a number not a string, a float (2.0 too)
not an integer and a boolean not an integer. An integer is still a number (`"temperature": 1`), and a
string still takes a `Literal` field. What JSON leaves free stays free: `extra` fields, a JSON schema
(`response_format`, a tool's `parameters`), tensor data.

Strict mode holds for the parsed body as FastAPI validates it (`validate_python`, api/direct.py likewise),
where pydantic takes only an `Enum` member, not its value, for an `Enum` field: wire fields take `Literal`s of
strings, as OpenAI's enums are (tests/unit/test_wire_types.py walks every request model for `Enum`s, for
`Literal`s of anything but strings and for models that are not strict). So a `Literal` given a value that is
not a string (`"role": 5`) is a value of the wrong JSON type too: "expected 'system', ... or 'tool', but got
an integer instead"; a string it does not list stays an invalid value.

`wrong_type` says such an error as OpenAI does; the API's one translation of validation errors into the
envelope (api/direct.py `invalid_request`) answers it as "invalid type for '<param>': expected ..., but got
... instead" with code `invalid_type`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

TYPE_ERROR = "invalid_type"  # the error type (and the answer's code) of a value of the wrong JSON type

# pydantic's complaint that a value is not of the field's JSON type at all, and that type as OpenAI says it
EXPECTED: dict[str, str] = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number", "string_type": "a string",
    "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object",
}


class WireModel(BaseModel):
    """A request body or an object inside one (subclasses add their own config: `extra` and the rest)."""

    model_config = ConfigDict(strict=True)


def json_type(value: Any) -> str:
    """A parsed JSON value's type, as OpenAI's errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def wrong_type(error: Mapping[str, Any]) -> str | None:
    """"expected an integer, but got a string instead" for a pydantic error about a value of the wrong JSON type
    (a union's is already said so: protocol/unions.py); None for any other error."""
    kind, value = error.get("type"), error.get("input")
    if kind == TYPE_ERROR:
        return str(error.get("msg", ""))
    expected = EXPECTED.get(str(kind))
    if kind == "literal_error" and not isinstance(value, str):  # every wire Literal is of strings
        expected = (error.get("ctx") or {}).get("expected")
    if expected is None:
        return None
    return f"expected {expected}, but got {json_type(value)} instead"
