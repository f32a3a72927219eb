"""Constrained output on llama.cpp: structured output and tool calls as llama.cpp grammars.

`response_format` becomes llama.cpp's `json_schema` (compiled by llama.cpp into a grammar, so the answer
always parses and matches). Tools follow the Hermes/Qwen convention that tool-aware chat templates (and
the `chatml-tools` template in chat_format.py) write into the prompt: a call is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. The grammar (llguidance syntax, which is
what this llama.cpp build speaks) admits only calls of the offered functions with arguments matching their
JSON schema (moved under the call's `arguments`, its local `$ref`s moved with it), from the first token for
`required` or a named function. For `auto` it admits those calls or a text that does not begin with
`<tool_call>`, ended by the model's end-of-turn token (or, with a `response_format`, a JSON answer matching
it), so the model chooses with its first tokens. (llama.cpp's lazy grammars, which wait for a trigger word,
are GBNF's only: it applies an llguidance grammar from the first token whatever `grammar_lazy` says, which
made `auto` behave as `required`.) A text answer may still go on to write a call; the splitter below takes
it, unconstrained, as the model wrote it.

llama.cpp compiles these grammars with llguidance when a slot takes the request, and where llguidance
refuses one (a conflicting `allOf`, a keyword it does not implement, a look-around pattern) it logs
"llg error" and generates without it. So every grammar is first checked by llguidance itself
(`GrammarCompiler`, in the same library), and one it refuses is a 400 naming the parameter it came from:
`response_format`, or `tools.<i>.function.parameters` for a tool's (each on its own: in a union of calls an
unsatisfiable one would be dropped without a word), or `tools` for the calls' grammar as a whole. The check
builds llguidance's parser too (its matcher), since some grammars that validate cannot be built (a parser
of over 65,535 symbols is a panic in llguidance, which llama.cpp logs and answers unconstrained).

llguidance also has limits that only a parse reaches (an Earley row of over 2,000 items, a lexer of too many
states), which a grammar may meet after some tokens of the answer; llama.cpp then logs "llg error" and goes
on sampling unconstrained. So the answer is followed, as llama.cpp streams it, by a `GrammarFollower` (the
same grammar, a byte-level matcher in the same library): the first text that leaves the grammar, or where
llguidance gives up, is an error in the answer's place (engines/llamacpp.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llmops.engines.base import TextChunk, TextRequest, ToolCallDelta, ToolSpec
from llmops.errors import InvalidRequest

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
SAFE_INTEGER = 2**53 - 1  # the integers JSON interoperates on (RFC 8259): a bound for unbounded ones
MAX_PARALLEL_CALLS = 4
RESPONSE_FORMAT = "response_format"


ITEM_COUNTS = ("minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")


def tool_param(index: int) -> str:
    """The request parameter a tool's argument schema is (the same path a body validation error names)."""
    return f"tools.{index}.function.parameters"


def bounded(schema: Any, limit: int | None = None, *, param: str | None = None) -> Any:
    """`schema` with every unbounded integer limited to +-(2^53 - 1): a small model at temperature 0 can
    otherwise write digits until max_tokens, and the answer never closes. With `limit` (the model's
    context, in tokens: each item or property takes at least one), a count no answer could reach is
    settled here, before the grammar compiler spends seconds and gigabytes unrolling it: a minimum above
    it is refused (400 naming `param`, the request parameter the schema came from), a maximum at or above
    it says nothing and is dropped. (The schema's shape was checked by protocol/json_schema.py, its depth
    bounded, when the request was read.)"""
    if isinstance(schema, list):
        return [bounded(x, limit, param=param) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, limit, param=param) for k, v in schema.items()}
    kind = out.get("type")
    if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
    if limit is not None:
        _settle_counts(out, limit, param)
    return out


def _settle_counts(schema: dict[str, Any], limit: int, param: str | None) -> None:
    for name in ITEM_COUNTS:
        value = schema.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < limit:
            continue
        if name.startswith("min") and value > limit:
            raise InvalidRequest(f"the schema's {name} of {value} asks for more than an answer of this model's "
                                 f"{limit} tokens of context can hold", param=param)
        if name.startswith("max"):
            del schema[name]


def json_grammar(schema: Any) -> str:
    """The grammar llama.cpp compiles from a `json_schema` field (what its json_schema_to_grammar writes
    when it is built with llguidance, as xllamacpp's wheels are)."""
    return f"%llguidance {{}}\nstart: %json {json.dumps(schema)}"


def _call_schema(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}  # nothing after the arguments


def _calls_schema(functions: list[tuple[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call of any of `functions` (name, argument schema): the call object, or a
    union of them. Each argument schema is moved inside it, so its local `$ref`s are moved with it
    (`relocated`): `#/$defs/Address` would otherwise point into the union's root, where nothing is."""
    if len(functions) == 1:
        name, arguments = functions[0]
        return _call_schema(name, relocated(arguments, "/properties/arguments"))
    return {"anyOf": [_call_schema(name, relocated(arguments, f"/anyOf/{k}/properties/arguments"))
                      for k, (name, arguments) in enumerate(functions)]}


_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                          "dependencies"})  # names to schemas (draft 7's dependencies: or to lists of names)
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})  # JSON values, whatever their shape


def relocated(schema: Any, base: str) -> Any:
    """`schema` as it reads placed at `base` (a JSON pointer, "/properties/arguments") inside another: each
    local `$ref` that is a JSON pointer (`#`, the schema itself, and `#/...`: `$defs`, `definitions` or
    any place in it) points to the same place at its new location, `#/$defs/X` becoming
    `#<base>/$defs/X`. Its own `$id` is dropped (under one it would be a resource of its own, where the
    moved pointers resolve to nothing); a subschema with an `$id` is one, whose `$ref`s are its own and
    stay as they are. Values (`const`, `enum`, `default`, `examples`) are never read as schemas."""
    if not isinstance(schema, dict):
        return schema
    return _relocated({k: v for k, v in schema.items() if not (k == "$id" and _resource(schema))}, base)


def _resource(schema: dict[str, Any]) -> bool:
    """Whether `schema` has an `$id` of its own (a URI; an `$id` of "#name" is draft 6's anchor)."""
    return isinstance(schema.get("$id"), str) and not schema["$id"].startswith("#")


def _relocated(schema: Any, base: str) -> Any:
    if not isinstance(schema, dict):
        return [_relocated(x, base) for x in schema] if isinstance(schema, list) else schema
    if _resource(schema):  # its `#` pointers are its own
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            out[key] = f"#{base}{value[1:]}"
        elif key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _relocated(sub, base) for name, sub in value.items()}
        else:
            out[key] = _relocated(value, base)
    return out


def _offered(spec: ToolSpec) -> list[tuple[int, dict[str, Any]]]:
    """The functions the model may call, each with its index in the request's `tools`."""
    indexed = [(i, f.get("function", f)) for i, f in enumerate(spec.functions)]
    if spec.choice in ("auto", "required"):
        return indexed
    return [(i, fn) for i, fn in indexed if fn.get("name") == spec.choice]


def offered_names(spec: ToolSpec) -> frozenset[str]:
    """The names of the functions the model may call."""
    return frozenset(str(fn.get("name")) for _, fn in _offered(spec))


def _call_rules(functions: list[tuple[str, Any]], parallel: bool) -> str:
    """The grammar's rules for calls of `functions` (name, argument schema): `tc_calls`, without its start."""
    call = _calls_schema(functions)
    more = ' ("\\n" tc_call)?' * (MAX_PARALLEL_CALLS - 1) if parallel else ""
    return (f"tc_calls: tc_call{more}\n"
            f'tc_call: "{CALL_OPEN}\\n" %json {json.dumps(call)} "\\n{CALL_CLOSE}"\n')


def _grammar(rules: str, turn_ends: tuple[int, ...] = (), answer: Any = None, *, followed: bool = False) -> str:
    """The calls' grammar. With `answer` (tool_choice auto with a `response_format`: its JSON schema), the
    model may instead answer with a JSON value matching it, which ends the grammar by itself. Else with
    `turn_ends` (tool_choice auto: the tokens the model may end its turn with), a text answer instead of
    calls is admitted too, ended by one of those tokens: llguidance ends a grammar with the one end-of-text
    token llama.cpp gives it, which a text lexeme open to any character never yields to (every text answer
    then ran to max_tokens), so the grammar names the model's own. `followed`: the grammar the streamed
    text is followed with, where those tokens never appear (llama.cpp does not write them into the text),
    so the text answer ends with the text."""
    start = "start: tc_calls\n"
    if answer is not None:
        start = f"start: tc_calls | tc_answer\ntc_answer: %json {json.dumps(answer)}\n"
    elif turn_ends:
        ends = " | ".join(f"<[{token}]>" for token in turn_ends)
        text = "TC_TEXT\n" if followed else f"TC_TEXT tc_end\ntc_end: {ends}\n"
        start = f"start: tc_calls | {text}TC_TEXT: /{_not_beginning_with(CALL_OPEN)}/\n"
    return f"%llguidance {{}}\n{start}{rules}"


def _not_beginning_with(marker: str) -> str:
    """A regex (Rust's syntax, llguidance's) of the non-empty texts that do not begin with `marker`: those
    that part from it at some character, then anything, and its own proper beginnings (llguidance has no
    look-ahead). `marker` is plain: letters, `<`, `>` and `_`, none of which the regex needs escaped."""
    assert re.fullmatch(r"[A-Za-z<>_]+", marker)
    parted = "|".join(f"{marker[:i]}[^{marker[i]}]" for i in range(len(marker)))
    beginnings = "|".join(marker[:i] for i in range(1, len(marker)))
    return f"(?s:(?:{parted}).*)|{beginnings}"


@dataclass(frozen=True)
class GrammarCheck:
    """A grammar llama.cpp will compile for a request: the parameter it comes from, and what it is called
    in the error that refuses it."""

    param: str
    subject: str
    grammar: str


@dataclass(frozen=True)
class Constraints:
    """The llama.cpp completion fields that constrain a request's output, and the grammars they compile to
    (each argument schema on its own too: in a union of calls llguidance drops a function whose schema no
    value can match, without a word, so that function could never be called)."""

    fields: dict[str, Any]
    checks: tuple[GrammarCheck, ...] = ()
    follow: str | None = None  # the grammar the answer's text is followed with (GrammarFollower); None: free


def constraints(request: TextRequest, limit: int | None = None, turn_ends: tuple[int, ...] = ()) -> Constraints:
    """What constrains this request's output (`limit`: the model's context in tokens, which bounds the
    counts a schema may ask for; `turn_ends`: the tokens the model ends a turn with, which a text answer
    under tool_choice auto ends with). With tools, `response_format` shapes the answer that is not a call:
    under tool_choice auto the model writes calls or a JSON answer matching it; under `required` or a named
    function the answer is calls only, so it has nothing to shape. With tool_choice auto, no
    `response_format` and no `turn_ends` known, nothing constrains the answer: its calls are taken as the
    model writes them."""
    answer, answer_checks = _answer_schema(request, limit)
    if request.tools is None:
        if answer is None:
            return Constraints({})
        return Constraints({"json_schema": answer}, answer_checks, json_grammar(answer))
    calls: list[tuple[str, Any]] = []
    checks = []
    for index, fn in _offered(request.tools):
        param = tool_param(index)
        arguments = bounded(fn.get("parameters") or {"type": "object"}, limit, param=param)
        calls.append((fn["name"], arguments))
        checks.append(GrammarCheck(param, f"the parameters schema of function {fn['name']!r}",
                                   json_grammar(arguments)))  # on its own: its $refs as the client wrote them
    rules = _call_rules(calls, request.tools.parallel)
    grammar = _grammar(rules)  # what the client's schemas make: checked
    if request.tools.choice != "auto":
        checks.append(GrammarCheck("tools", "the grammar of the tools' calls", grammar))
        return Constraints({"grammar": grammar}, tuple(checks), grammar)
    if answer is not None:
        checks.append(GrammarCheck("tools", "the grammar of the tools' calls", grammar))
        both = _grammar(rules, answer=answer)
        return Constraints({"grammar": both}, (*checks, *answer_checks, GrammarCheck(
            RESPONSE_FORMAT, "the grammar of the tools' calls or response_format's answer", both)), both)
    if not turn_ends:
        checks.append(GrammarCheck("tools", "the grammar of the tools' calls", grammar))
        return Constraints({}, tuple(checks))
    # checked as it is followed: the calls, or a text (the turn's end is the model's token, not llguidance's
    # here: its vocabulary in the check is bytes)
    followed = _grammar(rules, turn_ends, followed=True)
    checks.append(GrammarCheck("tools", "the grammar of the tools' calls", followed))
    return Constraints({"grammar": _grammar(rules, turn_ends)}, tuple(checks), followed)


def _answer_schema(request: TextRequest, limit: int | None) -> tuple[Any, tuple[GrammarCheck, ...]]:
    """`response_format`'s schema, bounded (json_object, or json_schema without one: any object), and its
    check; (None, ()) without one."""
    if request.structured is None:
        return None, ()
    schema = request.structured.schema if request.structured.type == "json_schema" else None
    if not schema:
        return {"type": "object"}, ()
    settled = bounded(schema, limit, param=RESPONSE_FORMAT)
    return settled, (GrammarCheck(RESPONSE_FORMAT, "response_format's JSON schema", json_grammar(settled)),)


def check_grammars(checks: Iterable[GrammarCheck], problem: Callable[[str], str | None]) -> None:
    """400 naming the parameter of the first grammar the compiler refuses (`problem`: its reason, or None),
    or of the one that takes the request's checks past REQUEST_CHECK_BUDGET_S of this thread's CPU (each
    check has its own budget; 128 tools just under it would hold a worker for half a minute)."""
    started = time.thread_time()
    for check in checks:
        reason = problem(check.grammar)
        if reason is None and time.thread_time() - started > REQUEST_CHECK_BUDGET_S:
            reason = (f"the request's schemas are too costly to compile together (over {REQUEST_CHECK_BUDGET_S} s "
                      "of CPU to check)")
        if reason is not None:
            raise InvalidRequest(f"llama.cpp's grammar compiler refuses {check.subject}: {reason}",
                                 param=check.param)


# llguidance's own check, in the library llama.cpp runs ----------------------------------------------------------

CHECK_BUDGET_S = 1.0  # CPU seconds one grammar's check may take: validating it, then building its parser, which
# is what llama.cpp does when a slot takes the request, in the loop that decodes every slot (the build takes 1-4x
# as long as the validation; before builds were checked, 0.25 s of validation, about 1 s in all, was the limit)
REQUEST_CHECK_BUDGET_S = 2.0  # CPU seconds all of one request's checks may take together
_VERDICTS = 1024  # grammars whose verdict is remembered (a client sends the same tools every turn)
_MATCHERS = 16  # grammars whose built parser is kept, for the followers of the answers (cloned: microseconds)
_MESSAGE_BYTES = 4096
_EXCERPT = re.compile(r"^\s*\d+ \| ")  # the start of llguidance's excerpt of the grammar under its message
_POSITION = re.compile(r"^at \d+\(\d+\): ")
_CARETS = re.compile(r"^\s*\^+\s*$")
_STOPPED = re.compile(r"^parser stopped\b")  # llguidance's error for a byte after its grammar's end


class _TokenizerInit(ctypes.Structure):
    """llguidance's LlgTokenizerInit (llguidance.h; the layout llama.cpp's own llguidance.cpp fills in)."""

    _fields_ = [("vocab_size", ctypes.c_uint32), ("tok_eos", ctypes.c_uint32),
                ("token_lens", ctypes.POINTER(ctypes.c_uint32)), ("token_bytes", ctypes.c_char_p),
                ("tokenizer_json", ctypes.c_char_p), ("tokenize_assumes_string", ctypes.c_bool),
                ("tokenize_fn", ctypes.c_void_p), ("use_approximate_greedy_tokenize_fn", ctypes.c_bool),
                ("tokenize_user_data", ctypes.c_void_p), ("slices", ctypes.POINTER(ctypes.c_char_p))]


class _InitHead(ctypes.Structure):
    """The first fields of LlgConstraintInit: the rest (the parser's limits) keep llguidance's defaults,
    the ones llama.cpp compiles with."""

    _fields_ = [("tokenizer", ctypes.c_void_p), ("log_buffer_level", ctypes.c_uint32),
                ("log_stderr_level", ctypes.c_uint32)]


def _declare(lib: ctypes.CDLL) -> None:
    """The signatures (llguidance.h) of the functions called here."""
    lib.llg_new_tokenizer.restype = ctypes.c_void_p
    lib.llg_new_tokenizer.argtypes = [ctypes.POINTER(_TokenizerInit), ctypes.c_char_p, ctypes.c_size_t]
    lib.llg_constraint_init_set_defaults.restype = None
    lib.llg_constraint_init_set_defaults.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.llg_validate_grammar.restype = ctypes.c_int32
    lib.llg_validate_grammar.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.c_size_t]
    lib.llg_new_matcher.restype = ctypes.c_void_p
    lib.llg_new_matcher.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.llg_clone_matcher.restype = ctypes.c_void_p
    lib.llg_clone_matcher.argtypes = [ctypes.c_void_p]
    lib.llg_free_matcher.restype = None
    lib.llg_free_matcher.argtypes = [ctypes.c_void_p]
    for name in ("llg_matcher_is_error", "llg_matcher_is_accepting", "llg_matcher_is_stopped"):
        getattr(lib, name).restype = ctypes.c_bool
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.llg_matcher_get_error.restype = ctypes.c_char_p
    lib.llg_matcher_get_error.argtypes = [ctypes.c_void_p]
    lib.llg_matcher_consume_tokens.restype = ctypes.c_int32
    lib.llg_matcher_consume_tokens.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t]


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _matcher_error(lib: ctypes.CDLL, matcher: int) -> str | None:
    """The first line of a matcher's error (llguidance's message, a panic's backtrace below it), or None."""
    if not lib.llg_matcher_is_error(matcher):
        return None
    raw = lib.llg_matcher_get_error(matcher)
    lines = [x.strip() for x in (raw or b"").decode(errors="replace").splitlines() if x.strip()]
    return _POSITION.sub("", lines[0])[:300] if lines else "llguidance gave no reason"


class GrammarFollower:
    """One answer's text followed by llguidance, byte by byte, in the grammar llama.cpp constrains it with:
    where llguidance gives up mid-answer (a limit only a parse reaches) llama.cpp goes on unconstrained, and
    the text leaves the grammar, or llguidance's own error is met here at the same byte. A clone of the
    grammar's built matcher (`GrammarCompiler.follower`), used by one thread; `close` frees it."""

    def __init__(self, lib: ctypes.CDLL, matcher: int) -> None:
        self._lib = lib
        self._matcher: int | None = matcher
        self.error = _matcher_error(lib, matcher)
        if self.error is not None:
            self.error = f"llguidance cannot build its parser ({self.error})"

    def feed(self, text: str) -> str | None:
        """Consume the text's bytes: llguidance's error (its first line) once the text left the grammar or
        llguidance gave up on it, else None."""
        if self.error is not None or not text:
            return self.error
        if self._matcher is None:
            raise ValueError("the follower is closed")
        data = text.encode()
        tokens = (ctypes.c_uint32 * len(data)).from_buffer_copy(_widen(data))
        if self._lib.llg_matcher_consume_tokens(self._matcher, tokens, len(data)) != 0:
            error = _matcher_error(self._lib, self._matcher) or "llguidance refused the text"
            self.error = "the answer went on after the grammar's end" if _STOPPED.match(error) else error
        return self.error

    def complete(self) -> bool:
        """Whether the text so far is a whole answer of the grammar (it may end here, or must)."""
        if self.error is not None or self._matcher is None:
            return False
        lib, matcher = self._lib, self._matcher
        return bool(lib.llg_matcher_is_accepting(matcher) or lib.llg_matcher_is_stopped(matcher))

    def close(self) -> None:
        matcher, self._matcher = self._matcher, None
        if matcher is not None:
            self._lib.llg_free_matcher(matcher)

    def __enter__(self) -> GrammarFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _widen(data: bytes) -> bytes:
    """Each byte as a uint32 in this machine's byte order (the byte vocabulary's token ids), as
    consume_tokens takes them: one copy, not a Python int per byte."""
    out = bytearray(4 * len(data))
    out[0 if sys.byteorder == "little" else 3::4] = data
    return bytes(out)


class GrammarCompiler:
    """llguidance's check of a grammar (`llg_validate_grammar`, then its parser built: `llg_new_matcher`),
    called through ctypes in the llama.cpp library the engine runs, so the verdict is the one llama.cpp
    reaches when a slot starts the request. There a grammar llguidance refuses is logged and the answer
    generated without it: a 200 no schema constrained. The check is run off the event loop (ctypes
    releases the GIL); verdicts are remembered by the grammar's digest, and the last grammars' parsers are
    kept for the followers of their answers (`follower`).

    The vocabulary is 256 one-byte tokens: whether a JSON schema or grammar compiles does not depend on the
    model's tokens, and llguidance's tokenizer built from the model's costs seconds (llama.cpp's first
    constrained request on Gemma 3, 262,144 tokens, waited 2 s for it). A follower reads the answer's text
    in those tokens, one per byte."""

    def __init__(self, library: str) -> None:
        lib = ctypes.CDLL(library)  # already loaded: the same handle
        _declare(lib)
        self._lib = lib
        self._validate = lib.llg_validate_grammar
        tokens = [bytes([b]) for b in range(256)] + [b"\xff<eos>"]  # 0xff: llama.cpp's mark of a special token
        lens = (ctypes.c_uint32 * len(tokens))(*map(len, tokens))
        no_slices = (ctypes.c_char_p * 1)(None)
        tok_init = _TokenizerInit(len(tokens), 256, lens, b"".join(tokens), None, False, None, True, None,
                                  no_slices)
        error = ctypes.create_string_buffer(1024)
        tokenizer = lib.llg_new_tokenizer(ctypes.byref(tok_init), error, len(error))
        if not tokenizer:
            raise OSError(f"llguidance refused its tokenizer: {error.value.decode(errors='replace')}")
        self._init = ctypes.create_string_buffer(1024)  # LlgConstraintInit is about 90 bytes
        lib.llg_constraint_init_set_defaults(self._init, tokenizer)
        head = _InitHead.from_buffer(self._init)
        if head.tokenizer != tokenizer:
            raise OSError("llguidance's LlgConstraintInit is not laid out as llguidance.h says")
        head.log_buffer_level = head.log_stderr_level = 0
        self._lock = threading.Lock()
        self._verdicts: OrderedDict[bytes, str | None] = OrderedDict()
        self._matchers: OrderedDict[bytes, int] = OrderedDict()  # built parsers, cloned for followers

    def problem(self, grammar: str) -> str | None:
        """Why llguidance refuses `grammar`, or None. Blocks for as long as the check takes: call it off the
        event loop."""
        data = grammar.encode()
        key = _digest(data)
        with self._lock:
            if key in self._verdicts:
                self._verdicts.move_to_end(key)
                return self._verdicts[key]
        verdict = self._check(data)
        with self._lock:
            self._verdicts[key] = verdict
            while len(self._verdicts) > _VERDICTS:
                self._verdicts.popitem(last=False)
        return verdict

    def _check(self, data: bytes) -> str | None:
        message = ctypes.create_string_buffer(_MESSAGE_BYTES)
        started = time.thread_time()
        status = self._validate(self._init, b"lark", data, message, _MESSAGE_BYTES)
        if status < 0:  # 1 is a warning: the grammar compiles
            return compiler_reason(message.value.decode(errors="replace"))
        matcher = None
        if time.thread_time() - started <= CHECK_BUDGET_S:  # else over budget already: not built
            matcher = self._lib.llg_new_matcher(self._init, b"lark", data)
            if (reason := _matcher_error(self._lib, matcher)) is not None:
                self._lib.llg_free_matcher(matcher)
                return f"llguidance cannot build its parser ({reason})"
        spent = time.thread_time() - started
        if spent > CHECK_BUDGET_S:
            if matcher is not None:
                self._lib.llg_free_matcher(matcher)
            return (f"it is too costly to compile ({spent:.2f} s of CPU to check; llama.cpp would hold every "
                    f"answer's decoding about as long; the limit is {CHECK_BUDGET_S} s)")
        if matcher is not None:
            self._keep(_digest(data), matcher)
        return None

    def _keep(self, key: bytes, matcher: int, clone: bool = False) -> int | None:
        """Keep `matcher` as `key`'s built parser (one already kept is kept instead, and this one freed);
        with `clone`, a clone of the kept one (under the lock: an evicted parser is freed)."""
        unused = []
        with self._lock:
            kept = self._matchers.setdefault(key, matcher)
            if kept != matcher:
                unused.append(matcher)
            self._matchers.move_to_end(key)
            copy = self._lib.llg_clone_matcher(kept) if clone else None
            while len(self._matchers) > _MATCHERS:
                unused.append(self._matchers.popitem(last=False)[1])
        for old in unused:
            self._lib.llg_free_matcher(old)
        return copy

    def follower(self, grammar: str) -> GrammarFollower:
        """A follower of one answer in `grammar`: a clone of its parser, built once (kept from its check, or
        built here: as long as the check took); one llguidance cannot build is a follower in error."""
        data = grammar.encode()
        key = _digest(data)
        with self._lock:
            kept = self._matchers.get(key)
            if kept is not None:
                self._matchers.move_to_end(key)
                return GrammarFollower(self._lib, self._lib.llg_clone_matcher(kept))
        built = self._lib.llg_new_matcher(self._init, b"lark", data)
        if _matcher_error(self._lib, built) is not None:
            return GrammarFollower(self._lib, built)
        copy = self._keep(key, built, clone=True)
        assert copy is not None
        return GrammarFollower(self._lib, copy)


def compiler_reason(message: str) -> str:
    """llguidance's message without its position in our grammar and its excerpt of it (the whole schema)."""
    lines = []
    for line in message.strip().splitlines():
        if _EXCERPT.match(line):
            break
        if not _CARETS.match(line):
            lines.append(line.strip())
    reason = _POSITION.sub("", " ".join(x for x in lines if x)).removeprefix("failed to compile JSON schema: ")
    return reason[:400] or "it does not compile"


@functools.cache
def load_compiler(library: str | None) -> GrammarCompiler | None:
    """The check in `library` (the llama.cpp extension), or None where it has no llguidance in it; one per
    library, whichever engines run it (its verdicts are the library's)."""
    if not library:
        return None
    try:
        return GrammarCompiler(library)
    except (OSError, AttributeError):  # not a shared library; no llg_* symbols
        return None


def tools_preamble(spec: ToolSpec) -> str:
    """The tools as a system text, for prompts whose format has no place for them (the fallback format)."""
    listed = "\n".join(json.dumps(f) for f in spec.functions)
    return ("You may call functions to answer. They are listed within <tools></tools>:\n"
            f"<tools>\n{listed}\n</tools>\n"
            f"To call one, answer with {CALL_OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            f"{CALL_CLOSE}")


def render_call(name: str, arguments: str) -> str:
    """A past call as the model writes one (for history in the fallback format)."""
    try:
        args: Any = json.loads(arguments)
    except ValueError:
        args = arguments
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': args})}\n{CALL_CLOSE}"


class _Splitter:
    """Text until the first `<tool_call>`, then calls: holds back what may be the start of the marker. A call
    of a function not in `offered` is dropped: under tool_choice auto a call after some text is the model's
    own writing, not the grammar's (a name no tool has, or none at all, would reach the client)."""

    def __init__(self, offered: frozenset[str] | None = None) -> None:
        self.offered = offered
        self.pending = ""
        self.in_calls = False
        self.calls: list[tuple[str, str]] = []

    def feed(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        self.pending += text
        if not self.in_calls:
            at = self.pending.find(CALL_OPEN)
            if at < 0:
                keep = _partial_suffix(self.pending, CALL_OPEN)
                out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
                return out, []
            out, self.pending, self.in_calls = self.pending[:at], self.pending[at:], True
            return out, self._take_calls()
        return "", self._take_calls()

    def _take_calls(self) -> list[tuple[str, str]]:
        found = []
        while (end := self.pending.find(CALL_CLOSE)) >= 0:
            block, self.pending = self.pending[:end], self.pending[end + len(CALL_CLOSE):]
            parsed = _parse_call(block.replace(CALL_OPEN, "", 1))
            if parsed is not None and self.offered is not None and parsed[0] not in self.offered:
                continue
            if parsed is not None and parsed not in self.calls:  # a repeat of the same call is dropped
                self.calls.append(parsed)
                found.append(parsed)
        return found

    def flush(self) -> str:
        out = "" if self.in_calls else self.pending
        self.pending = ""
        return out

    def cut_call(self) -> tuple[str, str] | None:
        """The call the answer was cut inside (max_tokens), as OpenAI gives one: its name and the arguments
        written so far, which do not parse; None when no call is open, its name is not written yet, or it
        was on its way to repeating a call already made (dropped, as whole repeats are)."""
        if not self.in_calls:
            return None
        found = _CUT_CALL.match(self.pending.replace(CALL_OPEN, "", 1))
        if found is None:
            return None
        try:
            name = json.loads(f'"{found["name"]}"')
        except ValueError:
            return None
        if self.offered is not None and name not in self.offered:
            return None
        written = found["arguments"]
        repeats = any(made == name and _compact(arguments).startswith(_compact(written))
                      for made, arguments in self.calls)
        return None if repeats else (name, written)


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text)


_CUT_CALL = re.compile(r'\s*\{\s*"name"\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?P<arguments>.*)\Z',
                       re.DOTALL)


def _partial_suffix(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _parse_call(block: str) -> tuple[str, str] | None:
    try:
        data = json.loads(block.strip())
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    return data["name"], json.dumps(data.get("arguments", {}))


async def tool_call_stream(chunks: AsyncIterator[TextChunk],
                           offered: frozenset[str] | None = None) -> AsyncIterator[TextChunk]:
    """Text chunks with the model's `<tool_call>` blocks turned into tool-call deltas, one per call; a
    stream whose calls are whole finishes with `tool_calls`, even cut by max_tokens inside a repeat of one
    (dropped: small models repeat a call until max_tokens). One cut inside a new call finishes with
    `length`, that call sent with the arguments written so far (as OpenAI does: the client sees what it
    paid for and why it does not parse). Calls of functions not in `offered` are dropped."""
    splitter = _Splitter(offered)
    async for chunk in chunks:
        text, calls = splitter.feed(chunk.text)
        finish, cut = chunk.finish_reason, None
        if finish == "length" and (cut := splitter.cut_call()) is not None:
            splitter.calls.append(cut)  # cut by max_tokens: sent as it is, and the finish says so
            calls.append(cut)
        if finish is not None:
            text += splitter.flush()
        deltas = tuple(ToolCallDelta(len(splitter.calls) - len(calls) + i, f"call_{uuid.uuid4().hex[:24]}", name,
                                     args) for i, (name, args) in enumerate(calls))
        if finish in ("stop", "length") and splitter.calls and cut is None:
            finish = "tool_calls"  # every call whole (what max_tokens cut, if anything, was a repeat)
        if text or deltas or finish is not None or chunk.usage is not None:
            yield TextChunk(text, finish, chunk.usage, deltas)
