"""Tool calls and structured output as llama.cpp grammar fields, and the model's `<tool_call>` blocks
turned into tool-call deltas as text streams."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from llmops.engines import constrained
from llmops.engines.base import SamplingParams, StructuredOutput, TextChunk, TextRequest, TokenUsage, ToolSpec
from llmops.engines.constrained import CALL_OPEN, SAFE_INTEGER, bounded, constraints, tool_call_stream

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def grammar_fields(req: TextRequest, limit: int | None = None, turn_ends: tuple[int, ...] = ()) -> dict[str, Any]:
    """The llama.cpp completion fields that constrain `req`'s output."""
    return constraints(req, limit, turn_ends).fields


def request(**kw: object) -> TextRequest:
    return TextRequest("r", SamplingParams(), messages=(), **kw)  # type: ignore[arg-type]


def test_structured_output_is_a_bounded_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "m": {"type": "integer", "maximum": 5}}}
    fields = grammar_fields(request(structured=StructuredOutput("json_schema", schema)))
    props = fields["json_schema"]["properties"]
    assert props["n"] == {"type": "integer", "maximum": SAFE_INTEGER, "minimum": -SAFE_INTEGER}
    assert props["m"]["maximum"] == 5
    assert grammar_fields(request(structured=StructuredOutput("json_object"))) == {"json_schema": {"type": "object"}}
    assert bounded([{"type": ["integer", "null"]}])[0]["minimum"] == -SAFE_INTEGER


def test_tool_grammar_per_choice() -> None:
    auto = grammar_fields(request(tools=ToolSpec((WEATHER, TIME), "auto")), turn_ends=(2, 106))
    assert "grammar_lazy" not in auto  # llama.cpp ignores it for llguidance grammars: auto was required
    assert "start: tc_calls | TC_TEXT tc_end\n" in auto["grammar"]
    assert "tc_end: <[2]> | <[106]>\n" in auto["grammar"]
    assert '"get_time"' in auto["grammar"]
    assert '"get_weather"' in auto["grammar"]
    assert grammar_fields(request(tools=ToolSpec((WEATHER,), "auto"))) == {}  # no turn ends known: unconstrained
    required = grammar_fields(request(tools=ToolSpec((WEATHER, TIME), "required", parallel=False)), turn_ends=(2,))
    assert "TC_TEXT" not in required["grammar"]
    assert "tc_call)?" not in required["grammar"]  # one call only
    named = grammar_fields(request(tools=ToolSpec((WEATHER, TIME), "get_time")))
    assert '"get_weather"' not in named["grammar"]


def test_response_format_with_tools_shapes_the_answer_that_is_not_a_call() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    shaped = StructuredOutput("json_schema", schema)
    auto = grammar_fields(request(tools=ToolSpec((WEATHER,), "auto"), structured=shaped))
    assert "start: tc_calls | tc_answer\n" in auto["grammar"]  # no turn ends needed: the JSON ends itself
    assert '"answer": {"type": "integer", "maximum": 9007199254740991' in auto["grammar"]
    assert "TC_TEXT" not in auto["grammar"]
    assert "json_schema" not in auto
    any_object = grammar_fields(request(tools=ToolSpec((WEATHER,), "auto"), structured=StructuredOutput("json_object")),
                                turn_ends=(2,))
    assert 'tc_answer: %json {"type": "object"}' in any_object["grammar"]
    required = grammar_fields(request(tools=ToolSpec((WEATHER,), "required"), structured=shaped))
    assert "tc_answer" not in required["grammar"]  # calls only: there is no answer to shape


def test_the_answer_is_followed_in_the_grammar_llama_cpp_applies() -> None:
    """What the answer's text is followed with (engines/llamacpp.py): the grammar llama.cpp constrains it
    with; for tool_choice auto's text, without the end-of-turn tokens, which never appear in the text."""
    from llmops.engines.constrained import json_grammar

    shaped = StructuredOutput("json_schema", {"type": "object", "properties": {"answer": {"type": "integer"}}})
    alone = constraints(request(structured=shaped), 4096)
    assert alone.follow == json_grammar(alone.fields["json_schema"])
    assert constraints(request(structured=StructuredOutput("json_object"))).follow == json_grammar({"type": "object"})
    for choice in ("required", "get_time"):
        calls = constraints(request(tools=ToolSpec((WEATHER, TIME), choice)), 4096, (2,))
        assert calls.follow == calls.fields["grammar"]
    both = constraints(request(tools=ToolSpec((WEATHER,), "auto"), structured=shaped), 4096, (2,))
    assert both.follow == both.fields["grammar"]
    auto = constraints(request(tools=ToolSpec((WEATHER, TIME), "auto")), 4096, (2, 106))
    assert "start: tc_calls | TC_TEXT tc_end\ntc_end: <[2]> | <[106]>\n" in auto.fields["grammar"]
    assert auto.follow == auto.fields["grammar"].replace("TC_TEXT tc_end\ntc_end: <[2]> | <[106]>\n", "TC_TEXT\n")
    assert auto.checks[-1].grammar == auto.follow  # the calls' grammar is checked as it is followed
    assert constraints(request(tools=ToolSpec((WEATHER,), "auto"))).follow is None  # unconstrained: not followed
    assert constraints(request()).follow is None


async def _chunks(pieces: list[str], finish: str = "stop") -> AsyncIterator[TextChunk]:
    for p in pieces:
        yield TextChunk(p)
    yield TextChunk("", finish, TokenUsage(3, len(pieces)))


async def _run(pieces: list[str], finish: str = "stop") -> list[TextChunk]:
    return [c async for c in tool_call_stream(_chunks(pieces, finish))]


async def test_calls_become_deltas_and_repeats_are_dropped() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    out = await _run(["Let me check. <tool", "_call>", call[11:30], call[30:], "\n", call])
    assert "".join(c.text for c in out) == "Let me check. "
    deltas = [d for c in out for d in c.tool_calls]
    assert len(deltas) == 1
    assert deltas[0].index == 0
    assert deltas[0].name == "get_weather"
    assert json.loads(deltas[0].arguments) == {"city": "Oslo"}
    assert out[-1].finish_reason == "tool_calls"
    assert out[-1].usage is not None


async def test_a_call_cut_by_max_tokens_is_sent_as_written_and_the_finish_is_length() -> None:
    """As OpenAI does: the client sees the call it paid for, and why its arguments do not parse. (It was
    dropped: an answer of nothing but a length finish.)"""
    done = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
    out = await _run([done, '<tool_call>\n{"name": "get_time", "arguments": {"city": "Li'], finish="length")
    deltas = [d for c in out for d in c.tool_calls]
    assert [(d.index, d.name) for d in deltas] == [(0, "get_weather"), (1, "get_time")]
    assert deltas[1].arguments == '{"city": "Li'
    assert out[-1].finish_reason == "length"
    assert "".join(c.text for c in out) == ""
    unnamed = await _run(['<tool_call>\n{"name": "get_we'], finish="length")  # no name yet: nothing to send
    assert [d for c in unnamed for d in c.tool_calls] == []
    assert unnamed[-1].finish_reason == "length"
    repeat = await _run([done, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "O'], finish="length")
    assert [d.name for c in repeat for d in c.tool_calls] == ["get_weather"]  # cut inside a repeat: dropped,
    assert repeat[-1].finish_reason == "tool_calls"  # and the calls are whole


async def test_text_without_calls_passes_through() -> None:
    out = await _run(["Hello", " <to", "day>"])
    assert "".join(c.text for c in out) == "Hello <today>"
    assert out[-1].finish_reason == "stop"


def test_counts_beyond_the_context_are_settled_before_the_grammar_is_compiled() -> None:
    """A minimum no answer could reach is refused; a maximum at or beyond the context says nothing and is
    dropped (compiled, either one unrolled into a grammar of millions of states: 25 s and 5.7 GB)."""
    import pytest

    from llmops.errors import InvalidRequest
    huge = {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000}
    with pytest.raises(InvalidRequest, match="minItems of 1000000"):
        grammar_fields(request(structured=StructuredOutput("json_schema", huge)), 4096)
    tool = {"type": "function", "function": {"name": "f", "parameters": huge}}
    with pytest.raises(InvalidRequest, match="minItems"):
        grammar_fields(request(tools=ToolSpec((tool,), "required")), 4096)
    wide = {"type": "object", "properties": {"xs": {"type": "array", "maxItems": 1_000_000, "minItems": 2}}}
    settled = grammar_fields(request(structured=StructuredOutput("json_schema", wide)), 4096)["json_schema"]
    assert settled["properties"]["xs"] == {"type": "array", "minItems": 2}
    assert bounded(wide)["properties"]["xs"]["maxItems"] == 1_000_000  # no limit given: left as it is


def test_a_count_error_names_the_parameter_its_schema_came_from() -> None:
    """A tool's schema is named as the tool's parameters (its index in the request's tools), not as
    response_format; response_format's as response_format."""
    import pytest

    from llmops.errors import InvalidRequest
    huge = {"type": "object", "properties": {"xs": {"type": "array", "minItems": 1_000_000}}}
    many = {"type": "function", "function": {"name": "many", "parameters": huge}}
    for choice in ("auto", "required", "many"):
        with pytest.raises(InvalidRequest) as err:
            grammar_fields(request(tools=ToolSpec((WEATHER, TIME, many), choice)), 4096)
        assert err.value.param == "tools.2.function.parameters"
    with pytest.raises(InvalidRequest) as err:
        grammar_fields(request(structured=StructuredOutput("json_schema", huge)), 4096)
    assert err.value.param == "response_format"


def test_auto_text_is_any_text_but_one_that_begins_a_call() -> None:
    text = re.compile(constrained._not_beginning_with(CALL_OPEN))
    for answer in ("4", "<b>bold</b>", "<", "<tool_call", "<toolbox>", "Sure.\n<tool_call>\n{}", "\n"):
        assert text.fullmatch(answer), answer
    for answer in ("<tool_call>", "<tool_call>\n{\"name\": \"f\"}"):
        assert not text.fullmatch(answer), answer


async def test_a_call_of_a_function_not_offered_is_dropped() -> None:
    """Under tool_choice auto, a call written after some text is not the grammar's: a name no tool has (or an
    empty one, which failed the response's validation: a 500) must not reach the client."""
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    for bad in ('{"name": "", "arguments": {}}', '{"name": "rm_rf", "arguments": {}}'):
        chunks = _chunks(["Let me check.\n", f"<tool_call>\n{bad}\n</tool_call>\n", good])
        out = [c async for c in tool_call_stream(chunks, frozenset({"get_weather", "get_time"}))]
        assert [d.name for c in out for d in c.tool_calls] == ["get_weather"]
        assert out[-1].finish_reason == "tool_calls"
    cut = _chunks(['<tool_call>\n{"name": "rm_rf", "arguments": {"pa'], "length")
    out = [c async for c in tool_call_stream(cut, frozenset({"get_weather"}))]
    assert [d for c in out for d in c.tool_calls] == []
    assert out[-1].finish_reason == "length"


def test_past_call_arguments_become_json_objects_llama_cpp_parses() -> None:
    from llmops.engines.llamacpp import _json_arguments

    assert _json_arguments("") == "{}"
    assert _json_arguments(' {"city": "Paris"} ') == ' {"city": "Paris"} '
    for text in ("not json", '{"city": "Par', '{"x": NaN}', "[1]", "null", '{"a": "\\ud800"}'):
        assert json.loads(_json_arguments(text)) == text  # kept as a JSON string: what the model wrote


# tools whose parameters refer to their own parts ($defs, definitions, the whole) ------------------------------

ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
           "required": ["street", "zip"]}
NESTED = {"type": "function", "function": {"name": "add_person", "parameters": {
    "$defs": {"Address": ADDRESS, "Home": {"type": "object", "properties": {"at": {"$ref": "#/$defs/Address"}}}},
    "type": "object", "properties": {"home": {"$ref": "#/$defs/Home"},
                                     "previous": {"type": "array", "items": {"$ref": "#/$defs/Address"}}},
    "required": ["home"]}}}
LEGACY = {"type": "function", "function": {"name": "legacy", "parameters": {
    "definitions": {"A/B": ADDRESS}, "type": "object", "properties": {"a": {"$ref": "#/definitions/A~1B"}}}}}
TREE = {"type": "function", "function": {"name": "tree", "parameters": {
    "$id": "https://example.com/tree", "type": "object",
    "properties": {"label": {"type": "string"}, "kids": {"type": "array", "items": {"$ref": "#"}},
                   "$ref": {"type": "string", "const": {"$ref": "#/x"}},  # a property named $ref; a value
                   "enum": {"enum": [{"$ref": "#"}]},
                   "own": {"$id": "https://example.com/own", "$defs": {"s": {"type": "string"}},
                           "$ref": "#/$defs/s"}}}}}  # a resource of its own: its $ref is its own


def call_schema(grammar: str) -> Any:
    """The JSON schema of one call in a tools grammar (what follows `%json` in its tc_call rule)."""
    at = grammar.index("%json ", grammar.index("tc_call: ")) + len("%json ")
    return json.JSONDecoder().raw_decode(grammar, at)[0]


def pointer(root: Any, ref: str) -> Any:
    """What a local `$ref` points to from `root`."""
    assert ref == "#" or ref.startswith("#/"), ref
    target = root
    for part in filter(None, ref[1:].split("/")):
        key = part.replace("~1", "/").replace("~0", "~")
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target


def test_a_tools_refs_point_where_its_parameters_were_moved_in_the_calls_schema() -> None:
    """A call is {"name", "arguments"}, the arguments the tool's parameters: `#/$defs/Address` would point
    into the call's root (llguidance: "Pointer '/$defs/Address' does not exist"), so each local `$ref`
    points to the same part of the parameters at their place in the call, or in the union of calls."""
    single = call_schema(grammar_fields(request(tools=ToolSpec((NESTED,), "required")), 4096)["grammar"])
    arguments = single["properties"]["arguments"]
    assert arguments["properties"]["home"] == {"$ref": "#/properties/arguments/$defs/Home"}
    assert pointer(single, "#/properties/arguments/$defs/Home")["properties"]["at"]["$ref"] == \
        "#/properties/arguments/$defs/Address"
    assert pointer(single, arguments["properties"]["previous"]["items"]["$ref"]) == arguments["$defs"]["Address"]
    assert arguments["$defs"]["Address"]["properties"]["zip"]["maximum"] == SAFE_INTEGER  # bounded in $defs too

    union = call_schema(grammar_fields(request(tools=ToolSpec((WEATHER, NESTED, LEGACY, TREE), "required")),
                        4096)["grammar"])
    nested, legacy, tree = (union["anyOf"][k]["properties"]["arguments"] for k in (1, 2, 3))
    assert pointer(union, nested["properties"]["home"]["$ref"]) == nested["$defs"]["Home"]
    assert pointer(union, nested["$defs"]["Home"]["properties"]["at"]["$ref"]) == nested["$defs"]["Address"]
    assert legacy["properties"]["a"] == {"$ref": "#/anyOf/2/properties/arguments/definitions/A~1B"}
    assert pointer(union, legacy["properties"]["a"]["$ref"]) == legacy["definitions"]["A/B"]
    assert tree["properties"]["kids"]["items"] == {"$ref": "#/anyOf/3/properties/arguments"}  # the whole
    assert "$id" not in tree  # under its own $id the moved pointers would point inside it
    assert tree["properties"]["$ref"] == {"type": "string", "const": {"$ref": "#/x"}}  # values stay values
    assert tree["properties"]["enum"] == {"enum": [{"$ref": "#"}]}
    assert tree["properties"]["own"]["$ref"] == "#/$defs/s"

    checks = constraints(request(tools=ToolSpec((WEATHER, NESTED), "auto")), 4096, (2,)).checks
    alone = bounded(NESTED["function"]["parameters"], 4096)  # each tool's own check: its refs as written
    assert checks[1].grammar == constrained.json_grammar(alone)
    assert alone["properties"]["home"] == {"$ref": "#/$defs/Home"}
