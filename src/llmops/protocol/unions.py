"""Errors for fields that take one of several forms (`str | list[str]`, a literal or an object, ...).

When no form fits, pydantic reports every form's complaint, each under a location that starts with the
form's internal name: `messages.0.content.str`, `prompt.list[str]`, `tool_choice.literal['none','auto',
'required']`, `tool_choice.NamedToolChoice.type`, `input.function-after[...]`. The API names the first error
(api/direct.py `invalid_request`), so a client was told about a parameter it never sent and the first
form's complaint ("Input should be a valid string" for a list of content parts).

`one_of(accepts)` wraps such a field (`Annotated[str | list[str], one_of("a string or a list of strings")]`)
and turns the forms' errors into what the client sent:

- the one form the value engaged (its shape matched and something inside it, or a check of its own, failed:
  a list whose item 2 is wrong, an object of an unsupported type) reports its own errors, at the client's
  path with the form's name taken out: `messages.0.content.1`;
- otherwise (no form matched the value's shape, or several did) one error at the field itself:
  "Input should be <accepts>", or, when the value's JSON type is none of the forms' (every form refused it
  as of the wrong type: `"content": 5`, `"tool_choice": 5`), "expected <accepts>, but got an integer
  instead", an `invalid_type` error (protocol/wire.py).

Every union in a request model is wrapped (tests/unit/test_validation_errors.py walks the models)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError

from llmops.protocol.wire import TYPE_ERROR, json_type, wrong_type

# pydantic's complaints that a value is not of a form's kind at all, as opposed to a value of that kind
# failing a constraint or a check (too short, an unsupported content part type, ...)
_MISMATCH = frozenset({
    "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "bool_type",
    "bool_parsing", "list_type", "tuple_type", "dict_type", "model_type", "model_attributes_type",
    "dataclass_type", "literal_error", "enum", "none_required", "is_instance_of", "string_sub_type", TYPE_ERROR,
})


def one_of(accepts: str) -> WrapValidator:
    """Annotated metadata for a union field; `accepts` completes "Input should be ..."."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise _as_client_errors(exc, accepts) from None

    return WrapValidator(check)


def _as_client_errors(exc: ValidationError, accepts: str) -> ValidationError:
    errors = exc.errors(include_url=False)
    if not errors or any(not e["loc"] or not isinstance(e["loc"][0], str) for e in errors):
        return exc  # not the forms' errors (a check on the whole union's value): already the client's
    forms: dict[str, list[Any]] = {}
    for e in errors:
        forms.setdefault(str(e["loc"][0]), []).append(e)
    engaged = [form for form in forms.values() if any(len(e["loc"]) > 1 or e["type"] not in _MISMATCH
                                                      for e in form)]
    if len(engaged) == 1:
        return ValidationError.from_exception_data(exc.title, [_untagged(e) for e in engaged[0]])
    value = _value_of(errors)
    if all(len(e["loc"]) == 1 and wrong_type(e) is not None for e in errors):
        kind = PydanticCustomError(TYPE_ERROR, "expected {accepts}, but got {got} instead",
                                   {"accepts": accepts, "got": json_type(value)})
    else:
        kind = PydanticCustomError("union_type", "Input should be {accepts}", {"accepts": accepts})
    mismatch: InitErrorDetails = {"type": kind, "loc": (), "input": value}
    return ValidationError.from_exception_data(exc.title, [mismatch])


def _value_of(errors: list[Any]) -> Any:
    """The value itself: the input of a form's error at the form's top (every form failed, so there is one
    unless all failed deeper, when the first error's input stands for it)."""
    return next((e["input"] for e in errors if len(e["loc"]) == 1), errors[0]["input"])


def _untagged(error: Any) -> InitErrorDetails:
    """`error` at the client's path (the form's name taken out), its message kept; a model's class name in
    pydantic's "a valid dictionary or instance of ChatMessage" said as what the client sends, an object. A
    `Literal`'s `expected` is kept: protocol/wire.py `wrong_type` says a value of another JSON type with it."""
    message = "Input should be an object" if error["type"] in ("model_type", "model_attributes_type") \
        else str(error["msg"])
    context: dict[str, Any] = {"message": message}
    expected = (error.get("ctx") or {}).get("expected")
    if isinstance(expected, str):
        context["expected"] = expected
    return {"type": PydanticCustomError(str(error["type"]), "{message}", context),
            "loc": tuple(error["loc"][1:]), "input": error["input"]}
