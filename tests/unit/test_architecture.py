"""The import rule of docs/architecture.md, checked on the source: each package imports only what its row
allows, the package graph has no cycle, only the HTTP edge imports the web framework, and the stage list
in the doc is the one in the code."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from llmops.pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "llmops"
DOC = ROOT / "docs" / "architecture.md"
FRAMEWORK = ("fastapi", "starlette")
EDGE = {"api", "middleware", "http_edge", "app", "server"}


def package_of(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


def imports(path: Path) -> Iterator[str]:
    """Every absolute module name `path` imports (`from llmops import x` gives llmops.x)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "llmops":
                yield from (f"llmops.{a.name}" for a in node.names)
            else:
                yield node.module


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        own = package_of(path)
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "llmops" and len(parts) > 1 and parts[1] != own and not parts[1].startswith("__"):
                edges.setdefault(own, set()).add(parts[1])
    return edges


def rule() -> dict[str, set[str]]:
    section = DOC.read_text(encoding="utf-8").split("## Import rule", 1)[1]
    rows = re.findall(r"^\| ([a-z_]+) \|([^|]*)\|$", section, re.MULTILINE)
    return {name: {p.strip() for p in allowed.split(",") if p.strip()} for name, allowed in rows}


def test_each_package_imports_only_what_the_rule_allows() -> None:
    allowed = rule()
    edges = graph()
    unknown = sorted(set(edges) - set(allowed) - {"cli"} - {"__main__"})
    assert not unknown, f"packages missing from docs/architecture.md: {unknown}"
    broken = {pkg: sorted(targets - allowed.get(pkg, set()) - ({"cli"} if pkg == "__main__" else set()))
              for pkg, targets in edges.items()}
    assert {k: v for k, v in broken.items() if v} == {}


def test_no_package_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_only_the_http_edge_imports_the_web_framework() -> None:
    offenders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if package_of(p) not in EDGE
                       and any(name.split(".")[0] in FRAMEWORK for name in imports(p)))
    assert offenders == []


def test_the_doc_lists_the_stages_of_the_code() -> None:
    text = DOC.read_text(encoding="utf-8").split("## Packages", 1)[0]
    listed = re.findall(r"^\d+\. \*\*([a-z_]+)\*\*", text, re.MULTILINE)
    assert tuple(listed) == STAGES
