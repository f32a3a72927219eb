"""Eval datasets: JSONL rows, one per line, and the spec (YAML) that names a dataset and its scorers.

A row: {"id": "f001", "input": "What is the capital of France?", "reference": "Paris"}; or "messages" (chat
messages) instead of "input"; "variables" for prompt-version targets; "metadata" (any mapping; "schema" there
is the json_schema scorer's schema). A malformed row is reported with its line number and skipped, or fails the
load, as the spec's `on_error` says."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmops.errors import ConfigError
from llmops.settings import EvalScorer

log = logging.getLogger("llmops.eval")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    input: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    variables: dict[str, Any] | None = None
    reference: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_input(self) -> Row:
        if self.input is None and self.messages is None and self.variables is None:
            raise ValueError("a row needs input, messages or variables")
        if self.input is not None and self.messages is not None:
            raise ValueError("give input or messages, not both")
        return self

    def chat(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.input}] if self.input is not None else []

    def prompt_variables(self) -> dict[str, Any]:
        return self.variables if self.variables is not None else {"input": self.input or ""}


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class EvalSpec(BaseModel):
    """evals/<name>.yaml: the dataset (and its held-out split), the scorers, the sampling."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    dataset: str = Field(description="JSONL, relative to the spec's folder")
    heldout: str | None = Field(None, description="the held-out split, never used while tuning prompts")
    scorers: list[EvalScorer] = Field(min_length=1)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = 0
    on_error: Literal["skip", "fail"] = Field("skip", description="a malformed row: skip it (reported) or fail")
    folder: Path = Field(Path("."), exclude=True)

    def path(self, split: Literal["dev", "heldout"]) -> Path:
        name = self.dataset if split == "dev" else self.heldout
        if name is None:
            raise ConfigError("this eval spec has no held-out split")
        return self.folder / name


def load_spec(path: Path) -> EvalSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return EvalSpec.model_validate({**data, "folder": path.parent})
    except OSError as exc:
        raise ConfigError(f"cannot read eval spec {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"eval spec {path} is invalid: {exc}") from exc


def parse_rows(lines: list[str]) -> tuple[list[Row], list[RowError]]:
    rows: list[Row] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("//"):
            continue
        try:
            row = Row.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, f"not JSON: {exc.msg} (column {exc.colno})"))
            continue
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            errors.append(RowError(number, problems))
            continue
        if row.id in seen:
            errors.append(RowError(number, f"id {row.id!r} repeats an earlier row"))
            continue
        seen.add(row.id)
        rows.append(row)
    return rows, errors


def load_rows(path: Path, on_error: Literal["skip", "fail"],
              limit: int | None = None) -> tuple[list[Row], list[RowError]]:
    """The usable rows and the malformed ones (line numbers); with on_error=fail, malformed rows raise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc.strerror}") from exc
    rows, errors = parse_rows(lines)
    if errors and on_error == "fail":
        raise ConfigError(f"dataset {path} has {len(errors)} malformed row(s):\n" +
                          "\n".join(f"  {path}:{e}" for e in errors))
    for error in errors:
        log.warning("%s:%s (skipped)", path, error)
    if not rows:
        raise ConfigError(f"dataset {path} has no usable rows")
    return (rows[:limit] if limit else rows), errors
