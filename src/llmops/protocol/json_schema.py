"""What a request's JSON schema (a `response_format` or a tool's `parameters`) must be before it is compiled
into a grammar: the checks a grammar compiler would fail on, or spend seconds of a shared model on, made
here in one bounded walk so the request gets a 400 naming the problem instead of a stalled model, a 500, or
an answer the schema never constrained (llama.cpp logs a schema its compiler refuses and generates without
it). The walk is iterative: no schema, however deep, can exhaust the stack.

Checked: nesting depth and size; properties per object; `type` names; `$ref`s are local (`#/...`) and
resolve, and none is the whole schema; `pattern`s compile; numbers are finite and integers within 64 bits;
`multipleOf` is positive and not vanishingly small; counts (`minItems`, `maxLength`...) are non-negative
integers. How large a count may be depends on the model's context, which only the engine knows
(engines/constrained.bounded); what else the engine's compiler refuses (conflicting `allOf`s, keywords it does
not implement) is its own check's to say (engines/constrained.GrammarCompiler), on the schema these bounds
keep cheap to check."""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 64  # nested objects and arrays in one schema
MAX_NODES = 50_000  # objects, arrays and values in one schema (a walk of this many is ~25 ms)
# properties one object may list: llguidance's compile time grows with their square (1,000 optional ones: 47 ms
# to check; 8,000: 1.7 s to check and 5.8 s of llama.cpp's decode loop to compile, every stream stalled)
MAX_PROPERTIES = 1_000
JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains",
          "maxContains")
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
INT64 = 2**63 - 1
SMALLEST_MULTIPLE = 1e-12
_BROKEN = ("missing )", "unbalanced parenthesis", "unterminated character set", "nothing to repeat",
           "multiple repeat")


SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
DATA_KEYS = frozenset({"enum", "const", "default", "examples"})  # JSON values, whatever their shape
SCHEMA, MAP, DATA = 0, 1, 2  # what a value in the walk is: a schema, a map of names to schemas, plain JSON


def schema_problem(schema: Any) -> str | None:
    """Why `schema` cannot be compiled into a grammar, or None."""
    if not isinstance(schema, dict):
        return "a JSON schema must be an object"
    stack: list[tuple[Any, int, int]] = [(schema, SCHEMA, 0)]
    nodes = 0
    while stack:
        node, role, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"the schema is too large (more than {MAX_NODES} values)"
        if depth > MAX_DEPTH:
            return f"the schema nests deeper than {MAX_DEPTH} levels"
        if not isinstance(node, dict | list):
            problem = _value_problem(node)
        elif role == SCHEMA and isinstance(node, dict):
            problem = _keyword_problem(node, schema)
        else:
            problem = None
        if problem is not None:
            return problem
        stack.extend(_children(node, role, depth + 1))
    return None


def _children(node: Any, role: int, depth: int) -> list[tuple[Any, int, int]]:
    """The values inside `node`, each with its role: a property named "type" is a schema, not a keyword."""
    if isinstance(node, list):
        return [(v, role if role != MAP else DATA, depth) for v in node]
    if not isinstance(node, dict):
        return []
    if role == MAP:
        return [(v, SCHEMA, depth) for v in node.values()]
    if role == DATA:
        return [(v, DATA, depth) for v in node.values()]
    out = []
    for key, value in node.items():
        if key in DATA_KEYS:
            out.append((value, DATA, depth))
        elif key in SCHEMA_MAPS:
            out.append((value, MAP, depth))
        elif key in SCHEMA_LISTS or isinstance(value, dict):
            out.append((value, SCHEMA, depth))
        else:
            out.append((value, DATA, depth))
    return out


def _value_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > INT64:
        return "the schema holds an integer beyond 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return "the schema holds a number that is not finite"
    return None


def _keyword_problem(node: dict[str, Any], root: dict[str, Any]) -> str | None:
    for check in (_type_problem, _count_problem, _number_problem, _properties_problem):
        problem = check(node)
        if problem is not None:
            return problem
    if "pattern" in node:
        problem = _pattern_problem(node["pattern"])
        if problem is not None:
            return problem
    if "$ref" in node:
        return _ref_problem(node["$ref"], root)
    return None


def _type_problem(node: dict[str, Any]) -> str | None:
    if "type" not in node:
        return None
    kind = node["type"]
    names = kind if isinstance(kind, list) else [kind]
    if not names or not all(isinstance(n, str) and n in JSON_TYPES for n in names):
        return f"'type' must name JSON types ({', '.join(sorted(JSON_TYPES))})"
    return None


def _properties_problem(node: dict[str, Any]) -> str | None:
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        return f"an object lists {len(properties)} properties; at most {MAX_PROPERTIES} can be compiled into a grammar"
    return None


def _count_problem(node: dict[str, Any]) -> str | None:
    for name in COUNTS:
        if name in node:
            value = node[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"'{name}' must be a non-negative integer"
    return None


def _number_problem(node: dict[str, Any]) -> str | None:
    for name in BOUNDS:
        if name in node and (isinstance(node[name], bool) or not isinstance(node[name], int | float)):
            return f"'{name}' must be a number"
    if "multipleOf" in node:
        value = node["multipleOf"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= SMALLEST_MULTIPLE:
            return f"'multipleOf' must be a number of at least {SMALLEST_MULTIPLE:g}"
    return None


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return "'pattern' must be a string"
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        # Python's syntax is not the schema's (ECMA 262, which knows \p{L} and more): only a pattern that is
        # broken in any syntax is refused here, the rest is the grammar compiler's to judge
        if any(word in str(exc) for word in _BROKEN):
            return f"'pattern' is not a regular expression: {exc}"
    return None


def _ref_problem(ref: Any, root: dict[str, Any]) -> str | None:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return "'$ref' must point inside the schema ('#/$defs/name'): the whole schema, or another document, " \
               "cannot be referred to"
    target: Any = root
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            return f"'$ref' {ref[:100]!r} points to nothing in the schema"
    return None if isinstance(target, dict | bool) else f"'$ref' {ref[:100]!r} does not point to a schema"
