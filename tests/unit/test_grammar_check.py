"""JSON schemas llama.cpp's grammar compiler (llguidance) refuses are a 400 naming the parameter they came from
(response_format, or the tool whose parameters they are), before llama.cpp is given the request: there a
refused grammar is logged ("llg error") and the answer generated without it, a 200 no schema constrained.
The check is llguidance's own, called in the llama.cpp library the engine runs."""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
import time
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from llmops.engines import constrained
from llmops.engines.base import Message, SamplingParams, StructuredOutput, TextRequest, ToolSpec
from llmops.engines.constrained import (
    GrammarCheck,
    GrammarCompiler,
    check_grammars,
    compiler_reason,
    constraints,
    json_grammar,
    load_compiler,
)
from llmops.engines.llamacpp import LlamaCppEngine, LlamaCppOptions, _grammar_compiler, _map_error
from llmops.errors import EngineError, InvalidRequest, UnsupportedParameter

CONFLICTING = {"allOf": [{"type": "string"}, {"type": "integer"}]}
GOOD = {"type": "function", "function": {"name": "good", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def fn(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def request(**kw: Any) -> TextRequest:
    return TextRequest("r", SamplingParams(max_tokens=4), messages=(Message("user", "hi"),), **kw)


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    import xllamacpp
    llguidance, found = _grammar_compiler(xllamacpp)
    assert llguidance, "xllamacpp's wheels compile json_schema grammars with llguidance"
    assert found is not None, "llg_validate_grammar is exported by xllamacpp's extension"
    return found


# the mapping ----------------------------------------------------------------------------------------------------

def test_each_grammar_names_the_parameter_it_came_from() -> None:
    found = constraints(request(structured=StructuredOutput("json_schema", {"type": "string"})), 4096)
    assert [c.param for c in found.checks] == ["response_format"]
    assert found.checks[0].grammar == json_grammar({"type": "string"})
    spec = ToolSpec((GOOD, fn("b", {"type": "string"}), fn("c", {"type": "integer"})), "auto")
    assert [c.param for c in constraints(request(tools=spec), 4096).checks] == [
        "tools.0.function.parameters", "tools.1.function.parameters", "tools.2.function.parameters", "tools"]
    named = ToolSpec(spec.functions, "c")  # the index is the function's place in the request's tools
    assert [c.param for c in constraints(request(tools=named), 4096).checks] == [
        "tools.2.function.parameters", "tools"]
    assert constraints(request(structured=StructuredOutput("json_object")), 4096).checks == ()
    assert constraints(request(), 4096) == constrained.Constraints({})


def test_a_refused_grammar_is_a_400_naming_its_parameter_and_the_reason() -> None:
    checks = [GrammarCheck("tools.0.function.parameters", "the parameters schema of function 'a'", "ok"),
              GrammarCheck("tools.1.function.parameters", "the parameters schema of function 'b'", "bad"),
              GrammarCheck("tools", "the grammar of the tools' calls", "bad")]
    with pytest.raises(InvalidRequest) as err:
        check_grammars(checks, lambda g: "Unsatisfiable schema: incompatible types" if g == "bad" else None)
    assert err.value.param == "tools.1.function.parameters"
    assert "function 'b'" in err.value.message
    assert "incompatible types" in err.value.message
    check_grammars(checks, lambda g: None)


def test_the_compilers_message_loses_its_position_and_its_excerpt_of_the_schema() -> None:
    message = ('at 2(8): failed to compile JSON schema: Unsatisfiable schema: incompatible types\n'
               '   1 | %llguidance {}\n   2 | start: %json {"allOf": [...]}\n              ^\n')
    assert compiler_reason(message) == "Unsatisfiable schema: incompatible types"
    regex = ("at 2(8): failed to compile JSON schema: regex parse error:\n    (?=a)b\n    ^^^\n"
             "error: look-around, including look-ahead and look-behind, is not supported\n   1 | %llguidance {}\n")
    assert compiler_reason(regex) == ("regex parse error: (?=a)b error: look-around, including look-ahead and "
                                      "look-behind, is not supported")
    assert compiler_reason("") == "it does not compile"
    assert len(compiler_reason("x" * 5000)) == 400


def test_count_errors_name_the_parameter_the_schema_came_from() -> None:
    huge = {"type": "object", "properties": {"xs": {"type": "array", "minItems": 1_000_000}}}
    with pytest.raises(InvalidRequest, match="minItems of 1000000") as err:
        constraints(request(tools=ToolSpec((GOOD, fn("f", huge)), "auto")), 4096)
    assert err.value.param == "tools.1.function.parameters"
    with pytest.raises(InvalidRequest) as err:
        constraints(request(tools=ToolSpec((GOOD, fn("f", huge)), "f")), 4096)
    assert err.value.param == "tools.1.function.parameters"
    with pytest.raises(InvalidRequest) as err:
        constraints(request(structured=StructuredOutput("json_schema", huge)), 4096)
    assert err.value.param == "response_format"


def test_llama_cpp_errors_about_the_grammar_are_400s_naming_the_parameter() -> None:
    """What llama.cpp answers for a grammar it cannot parse (a build without llguidance: GBNF), whatever
    error type it gives it."""
    refused = {"code": 400, "type": "invalid_request_error",
               "message": "Failed to initialize samplers: failed to parse grammar"}
    err = _map_error(refused, "tools")
    assert isinstance(err, InvalidRequest)
    assert err.param == "tools"
    as_server = _map_error({"code": 500, "type": "server_error", "message": '"json_schema": bad schema'},
                           "response_format")
    assert isinstance(as_server, InvalidRequest)
    assert as_server.param == "response_format"
    assert isinstance(_map_error({"code": 500, "type": "server_error", "message": "out of memory"}, "tools"),
                      EngineError)
    assert _map_error(refused).param is None  # no grammar in the request: nothing to name


# llguidance's own check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("schema", "said"), [
    (CONFLICTING, "incompatible types"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "minimum (5) is greater than maximum (2)"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, "Unimplemented keys"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"type": "strin"}, "Invalid type"),
])
def test_llguidance_refuses_what_llama_cpp_would_drop(compiler: GrammarCompiler, schema: dict[str, Any],
                                                      said: str) -> None:
    reason = compiler.problem(json_grammar(schema))
    assert reason is not None
    assert said in reason
    assert "%llguidance" not in reason  # the grammar (the whole schema) is not echoed


def test_llguidance_passes_what_it_compiles(compiler: GrammarCompiler) -> None:
    for schema in [{"type": "object", "properties": {"name": {"type": "string", "format": "email"},
                                                     "n": {"type": "integer", "maximum": 5}},
                    "required": ["name"], "additionalProperties": False, "title": "T"},
                   {"type": "string", "pattern": "\\p{L}+"},
                   {"anyOf": [{"type": "string"}, CONFLICTING]},  # a union keeps what can match
                   {"$defs": {"x": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/x"}}]:
        assert compiler.problem(json_grammar(schema)) is None, schema
    spec = ToolSpec((GOOD, fn("t", {"type": "object"})), "auto")
    for check in constraints(request(tools=spec), 4096).checks:
        assert compiler.problem(check.grammar) is None


def test_response_format_with_tools_auto_compiles_and_a_refused_schema_names_it(compiler: GrammarCompiler) -> None:
    answer = StructuredOutput("json_schema", {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]})
    found = constraints(request(tools=ToolSpec((GOOD,), "auto"), structured=answer), 4096)
    assert [c.param for c in found.checks] == [
        "tools.0.function.parameters", "tools", "response_format", "response_format"]
    for check in found.checks:
        assert compiler.problem(check.grammar) is None, check.subject
    bad = constraints(request(tools=ToolSpec((GOOD,), "auto"),
                              structured=StructuredOutput("json_schema", CONFLICTING)), 4096)
    with pytest.raises(InvalidRequest) as err:
        check_grammars(bad.checks, compiler.problem)
    assert err.value.param == "response_format"


def test_a_function_no_call_could_match_is_refused_not_dropped_from_the_union(compiler: GrammarCompiler) -> None:
    """llguidance takes an `anyOf` of calls with one unsatisfiable branch and drops that branch: the function
    could never be called. Each function's schema is checked on its own, so the request is refused."""
    spec = ToolSpec((GOOD, fn("bad", CONFLICTING)), "required")
    found = constraints(request(tools=spec), 4096)
    assert compiler.problem(found.fields["grammar"]) is None  # the union alone compiles
    with pytest.raises(InvalidRequest, match=r"function 'bad'.*incompatible types") as err:
        check_grammars(found.checks, compiler.problem)
    assert err.value.param == "tools.1.function.parameters"


def test_verdicts_are_remembered_and_a_costly_grammar_is_refused(compiler: GrammarCompiler,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    grammar = json_grammar({"type": "object", "properties": {"remembered": {"type": "boolean"}}})
    calls: list[bytes] = []
    real = compiler._check
    monkeypatch.setattr(compiler, "_check", lambda data: calls.append(data) or real(data))
    assert compiler.problem(grammar) is None
    assert compiler.problem(grammar) is None
    assert len(calls) == 1
    monkeypatch.setattr(constrained, "CHECK_BUDGET_S", -1.0)  # every check is over budget
    reason = compiler.problem(json_grammar({"type": "object", "properties": {"costly": {"type": "boolean"}}}))
    assert reason is not None
    assert "too costly to compile" in reason


def test_a_library_without_llguidance_gives_no_check(tmp_path: Any) -> None:
    assert load_compiler(None) is None
    assert load_compiler(str(tmp_path / "missing.so")) is None

    class NoLlguidance:
        __name__ = "fake"

        @staticmethod
        def json_schema_to_grammar(schema: Any) -> str:
            return 'root ::= "{" ws "}"'  # GBNF: a build without llguidance

    assert _grammar_compiler(NoLlguidance()) == (False, None)


# in the engine: refused before the request reaches llama.cpp -----------------------------------------------------

def test_the_engine_refuses_before_templating_or_a_slot(compiler: GrammarCompiler) -> None:
    """Not started: any call to llama.cpp (templating, a slot) would fail with 'not started'."""
    engine = LlamaCppEngine("m", LlamaCppOptions(context_length=512))
    engine._compiler = compiler

    async def first(req: TextRequest) -> Any:
        return await anext(engine.generate(req))

    try:
        _refusals(engine, first)
    finally:
        engine._executor.shutdown()


def _refusals(engine: LlamaCppEngine, first: Any) -> None:

    with pytest.raises(InvalidRequest, match="response_format's JSON schema") as err:
        asyncio.run(first(request(structured=StructuredOutput("json_schema", CONFLICTING))))
    assert err.value.param == "response_format"
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(first(request(tools=ToolSpec((GOOD, fn("bad", {"type": "array", "uniqueItems": True})),
                                                 "required"))))
    assert err.value.param == "tools.1.function.parameters"
    with pytest.raises(EngineError, match="not started"):  # a schema that compiles goes on to llama.cpp
        asyncio.run(first(request(structured=StructuredOutput("json_schema", {"type": "string"}))))
    engine._llguidance = False
    with pytest.raises(UnsupportedParameter) as err:
        asyncio.run(first(request(tools=ToolSpec((GOOD,), "auto"))))
    assert err.value.param == "tools"


def test_a_request_whose_checks_together_run_past_their_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check has its own budget; together they have one too (many tools each just under it)."""
    slow = iter(range(1000))

    def problem(grammar: str) -> str | None:
        next(slow)
        end = time.thread_time() + 0.01
        while time.thread_time() < end:  # 10 ms of this thread's CPU a check
            pass
        return None

    monkeypatch.setattr(constrained, "REQUEST_CHECK_BUDGET_S", 0.025)
    spec = ToolSpec(tuple(fn(f"f{i}", {"type": "object"}) for i in range(6)), "required")
    with pytest.raises(InvalidRequest, match="too costly to compile together") as err:
        check_grammars(constraints(request(tools=spec), 4096).checks, problem)
    assert err.value.param.startswith("tools")


# what validation does not see: a parser llguidance cannot build, and limits a parse reaches mid-answer -------------

ARRAYS_BY_MAX_ITEMS = {"anyOf": [{"type": "array", "maxItems": i} for i in range(1, 371)]}


def person(key: str, inner: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, key: inner},
            "required": ["name", key], "additionalProperties": False}


def test_a_grammar_whose_parser_llguidance_cannot_build_is_refused(compiler: GrammarCompiler) -> None:
    """370 arrays told apart by maxItems validate, but the parser has over 65,535 symbols: llguidance panics
    when llama.cpp builds it, and the answer was generated without a grammar (prose from the first token)."""
    grammar = json_grammar(ARRAYS_BY_MAX_ITEMS)
    message = ctypes.create_string_buffer(4096)
    assert compiler._validate(compiler._init, b"lark", grammar.encode(), message, 4096) >= 0  # validation passes
    found = constraints(request(structured=StructuredOutput("json_schema", ARRAYS_BY_MAX_ITEMS)), 4096)
    with pytest.raises(InvalidRequest, match="response_format's JSON schema: llguidance cannot build its parser "
                                             r"\(panic: .*symbols") as err:
        check_grammars(found.checks, compiler.problem)
    assert err.value.param == "response_format"
    assert "panic_utils" not in err.value.message  # its first line, not the backtrace under it
    with compiler.follower(grammar) as follower:  # were it followed: given up before the first byte
        reason = follower.feed("[")
        assert reason is not None
        assert reason.startswith("llguidance cannot build its parser (panic: ")


def test_the_follower_meets_a_limit_llguidance_reaches_mid_answer(compiler: GrammarCompiler) -> None:
    """400 arrays told apart by their items' maxLength pass the check, but once `[` is read llguidance's Earley
    row has 2,400 items (its limit is 2,000): it gives up there, and llama.cpp went on unconstrained."""
    arrays = {"anyOf": [{"type": "array", "items": {"type": "string", "maxLength": i}} for i in range(1, 401)]}
    grammar = json_grammar(person("tags", arrays))
    assert compiler.problem(grammar) is None  # the check cannot see it: only a parse reaches the limit
    with compiler.follower(grammar) as follower:
        assert follower.feed('{\n  "name": "Ann",\n  "tags": ') is None
        reason = follower.feed('[\n    "friend"')
        assert reason is not None
        assert "max is 2000" in reason
        assert "\n" not in reason
        assert follower.feed("]}") == reason  # it stays given up
        assert not follower.complete()


def test_the_follower_says_where_text_leaves_the_grammar_and_when_it_is_complete(compiler: GrammarCompiler) -> None:
    grammar = json_grammar({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "additionalProperties": False})
    with compiler.follower(grammar) as follower, compiler.follower(grammar) as other:
        for piece in ('{"ci', 'ty": "Zü', 'rich"'):  # a clone each: the other follower is where it started
            assert follower.feed(piece) is None
        assert not follower.complete()
        assert follower.feed("}") is None
        assert follower.complete()
        assert follower.feed("\n\nIn this example") == "the answer went on after the grammar's end"
        reason = other.feed('{"town"')
        assert reason is not None
        assert "doesn't satisfy the grammar" in reason
    closed = compiler.follower(grammar)
    closed.close()
    closed.close()  # freed once
    with pytest.raises(ValueError, match="closed"):
        closed.feed("{")


def test_tool_choice_auto_text_is_followed_without_its_end_of_turn_token(compiler: GrammarCompiler) -> None:
    found = constraints(request(tools=ToolSpec((GOOD,), "auto")), 4096, turn_ends=(2,))
    check_grammars(found.checks, compiler.problem)
    assert found.follow is not None
    call = '<tool_call>\n{"name": "good", "arguments": {"city": "Oslo"}}\n</tool_call>'
    for text in ("It is sunny in Oslo.", "<tool", call):
        with compiler.follower(found.follow) as follower:
            assert follower.feed(text) is None, text
            assert follower.complete(), text
    with compiler.follower(found.follow) as follower:
        assert follower.feed('<tool_call>\n{"name": "rm_rf"') is not None


def test_built_parsers_are_kept_for_the_followers_a_few_at_a_time(compiler: GrammarCompiler,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constrained, "_MATCHERS", 2)
    grammars = [json_grammar({"type": "object", "properties": {f"kept{i}": {"type": "integer"}}}) for i in range(3)]
    for grammar in grammars:
        assert compiler.problem(grammar) is None
    assert list(compiler._matchers) == [constrained._digest(g.encode()) for g in grammars[1:]]
    with compiler.follower(grammars[0]) as follower:  # evicted: built again, and kept
        assert follower.feed('{"kept0": 5}') is None
        assert follower.complete()
    assert list(compiler._matchers) == [constrained._digest(g.encode()) for g in (grammars[2], grammars[0])]


# in the engine: the answer followed as llama.cpp streams it --------------------------------------------------------

class FakeServer:
    """llama.cpp's handle_completions: the chunks, through the callback, until it returns True."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.stopped_at: int | None = None

    def handle_completions(self, body: dict[str, Any], callback: Any) -> None:
        for i, raw in enumerate(self.chunks):
            if callback(raw):
                self.stopped_at = i
                return


def piece(text: str, finish: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}
    if finish is not None:
        raw["usage"] = {"completion_tokens": 9, "prompt_tokens": 5}
    return raw


CITY = json_grammar({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                     "additionalProperties": False})


def streamed(compiler: GrammarCompiler, chunks: list[dict[str, Any]], *, follow: str | None = CITY,
             stop: tuple[str, ...] = (), eager: bool = True,
             constrained_by: str = "response_format") -> tuple[list[Any], InvalidRequest | None, FakeServer]:
    engine = LlamaCppEngine("m", LlamaCppOptions(context_length=512))
    engine._compiler = compiler
    engine._server = server = FakeServer(chunks)
    got: list[Any] = []

    async def run() -> None:
        async for chunk in engine._stream({"stop": list(stop)}, 0, eager=eager, constrained_by=constrained_by,
                                          follow=follow):
            got.append(chunk)

    try:
        asyncio.run(run())
    except InvalidRequest as exc:
        return got, exc, server
    finally:
        engine._executor.shutdown()
    return got, None, server


def test_a_chunk_that_leaves_the_grammar_is_not_sent_and_generation_stops(compiler: GrammarCompiler) -> None:
    chunks = [piece('{"city"'), piece(': "Oslo"'), piece(',\n"country": "Norway"}'), piece(" more"),
              piece("", "stop")]
    for eager in (True, False):
        got, error, server = streamed(compiler, chunks, eager=eager)
        assert error is not None
        assert error.param == "response_format"
        assert error.message.startswith("llama.cpp's grammar engine (llguidance) gave up on response_format's "
                                        "schema mid-answer (Parser Error: ")
        assert "simplify the schema (for example fewer anyOf branches)" in error.message
        assert "".join(c.text for c in got) == '{"city": "Oslo"'  # the bytes that broke it never reach the client
        assert server.stopped_at == 2
    got, error, server = streamed(compiler, [*chunks[:2], piece("}"), chunks[-1]])
    assert error is None
    assert "".join(c.text for c in got) == '{"city": "Oslo"}'
    assert got[-1].finish_reason == "stop"
    assert server.stopped_at is None
    tools = streamed(compiler, chunks, constrained_by="tools")[1]
    assert tools is not None
    assert tools.param == "tools"
    assert "gave up on the tools' schemas mid-answer" in tools.message


def test_an_answer_that_stops_before_its_grammar_is_complete_fails_unless_cut_or_stopped_by_a_stop_string(
        compiler: GrammarCompiler) -> None:
    cut = [piece('{"city"'), piece(': "Os')]
    got, error, _ = streamed(compiler, [*cut, piece("", "stop")])
    assert error is not None
    assert "the answer stopped before the grammar was complete" in error.message
    assert "".join(c.text for c in got) == '{"city": "Os'
    got, error, _ = streamed(compiler, [*cut, piece("", "length")])  # max_tokens: a cut answer is expected
    assert error is None
    assert got[-1].finish_reason == "length"
    got, error, _ = streamed(compiler, [*cut, piece("", "stop")], stop=("lo",))  # a stop string ends it anywhere
    assert error is None
    got, error, _ = streamed(compiler, [*cut, piece("", "stop")], follow=None)  # nothing to follow: as it was
    assert error is None


# tools built from nested pydantic models ($defs and $refs) -------------------------------------------------------

class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    """A person to add to the address book."""

    name: str
    home: Address
    previous: list[Address]


class Node(BaseModel):
    value: int
    children: list[Node]  # recursive: its $ref points into its own $defs


def test_tools_from_nested_pydantic_models_compile_and_their_calls_follow_the_models(compiler: GrammarCompiler) -> None:
    """openai.pydantic_function_tool (and LangChain's bind_tools) write a nested model as `$defs` and
    `#/$defs/...` refs; inside the calls' grammar the parameters are a call's arguments, and the refs must
    point there (they pointed into the grammar's root: "Pointer '/$defs/Address' does not exist", a 400 for
    every such tool), alone, in a union of tools, and beside a response_format."""
    person, node = (dict(openai.pydantic_function_tool(m)) for m in (Person, Node))
    legacy = fn("legacy", {"definitions": {"A": {"type": "object", "properties": {"zip": {"type": "integer"}},
                                                 "required": ["zip"]}},
                           "type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}, "required": ["a"]})
    answer = StructuredOutput("json_schema", Person.model_json_schema())
    for spec, turn_ends, structured in [(ToolSpec((person,), "required"), (), None),
                                        (ToolSpec((person, node), "Person"), (), None),
                                        (ToolSpec((GOOD, person, node, legacy), "required"), (), None),
                                        (ToolSpec((GOOD, person, node, legacy), "auto"), (2,), None),
                                        (ToolSpec((person, node), "auto"), (), answer)]:
        found = constraints(request(tools=spec, structured=structured), 4096, turn_ends)
        check_grammars(found.checks, compiler.problem)  # a 400 before the refs were moved
        assert found.follow is not None

    follow = constraints(request(tools=ToolSpec((GOOD, person, node, legacy), "required")), 4096).follow
    assert follow is not None
    home = {"name": "Ann", "home": {"street": "Main St 1", "city": "Oslo"},
            "previous": [{"street": "Old Rd 2", "city": "Bergen"}]}
    tree = {"value": 1, "children": [{"value": 2, "children": [{"value": 3, "children": []}]}]}
    for name, arguments in [("Person", home), ("Node", tree), ("legacy", {"a": {"zip": 1234}})]:
        with compiler.follower(follow) as follower:
            text = f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'
            assert follower.feed(text) is None, name
            assert follower.complete(), name
    for name, arguments in [("Person", {**home, "home": {"street": "Main St 1"}}),  # the Address lacks its city
                            ("Node", {"value": 1, "children": [{"value": "two", "children": []}]}),
                            ("legacy", {"a": {"zip": "1234"}})]:
        with compiler.follower(follow) as follower:
            text = f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'
            assert follower.feed(text) is not None, name
    # each tool's own check reads its refs as the client wrote them: a refused definition names that tool
    refused = fn("refused", {"$defs": {"Bad": CONFLICTING}, "type": "object",
                             "properties": {"x": {"$ref": "#/$defs/Bad"}}, "required": ["x"]})
    with pytest.raises(InvalidRequest, match=r"function 'refused'.*incompatible types") as err:
        check_grammars(constraints(request(tools=ToolSpec((person, refused), "required")), 4096).checks,
                       compiler.problem)
    assert err.value.param == "tools.1.function.parameters"
