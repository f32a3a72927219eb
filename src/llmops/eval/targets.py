"""What an eval asks: a model, a route's variant or a prompt version on a running llmops server (its pipeline
does the work: routing, templates, guardrails, accounting), or any external OpenAI-compatible endpoint. Every
call goes over HTTP with the official openai client.

On the command line a target is `key=value` pairs: `name=smol,model=smollm2-135m`, `model=gemma,prompt=qa@2`,
`name=b,route=chat,model=gemma-3-270m` (a route's variant: the variant's model, labelled with its route), or
`name=ext,model=gpt-4o-mini,base_url=https://api.openai.com/v1,api_key_env=OPENAI_API_KEY`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, cast

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.engines.upstream import credentials_conflict
from llmops.errors import ConfigError
from llmops.eval.dataset import EvalSpec, Row

NOT_NEEDED = "not-needed-on-localhost"


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}$")
    model: str
    base_url: str | None = Field(None, description="default: the eval's --server")
    api_key_env: str | None = None
    prompt: str | None = Field(None, description="a versioned prompt, `id` or `id@version`")
    route: str | None = Field(None, description="the route whose variant `model` is (a label)")
    prompt_usd_per_1k: float | None = Field(None, ge=0)
    completion_usd_per_1k: float | None = Field(None, ge=0)

    def prompt_ref(self, row: Row) -> dict[str, Any] | None:
        if self.prompt is None:
            return None
        prompt_id, _, version = self.prompt.partition("@")
        return {"id": prompt_id, "version": version or None, "variables": row.prompt_variables()}


def parse_target(text: str) -> Target:
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"target {text!r}: expected key=value pairs separated by commas, got {part!r}")
        fields[key.strip()] = value.strip()
    if "model" in fields and "name" not in fields:
        fields["name"] = fields["model"] + (f"@{fields['prompt']}" if "prompt" in fields else "")
    try:
        return Target.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"target {text!r} is invalid: {exc}") from exc


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    served_by: str | None  # X-LLMOps-Variant
    prompt_version: str | None  # X-LLMOps-Prompt-Version


class TargetError(Exception):
    """The target failed this row: counted as an error in the report, never scored."""


def client_for(base_url: str, api_key_env: str | None, timeout_s: float = 120.0) -> openai.AsyncOpenAI:
    problem = credentials_conflict(base_url, api_key_env)
    if problem:
        raise ConfigError(problem)
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if api_key_env and not key:
        raise ConfigError(f"environment variable {api_key_env} (the API key) is not set")
    return openai.AsyncOpenAI(base_url=base_url, api_key=key or NOT_NEEDED, timeout=timeout_s, max_retries=2)


async def ask(client: openai.AsyncOpenAI, target: Target, row: Row, spec: EvalSpec) -> Answer:
    ref = target.prompt_ref(row)
    messages = [] if ref is not None and row.messages is None else row.chat()
    if not messages and ref is None:
        raise TargetError("the row has only variables; this target has no prompt to render them")
    extra: dict[str, Any] = {"prompt": ref} if ref is not None else {}
    started = time.perf_counter()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=target.model, messages=cast(Any, messages), max_tokens=spec.max_tokens,
            temperature=spec.temperature, seed=spec.seed, extra_body=extra or None)
        reply = raw.parse()
    except openai.APIStatusError as exc:
        raise TargetError(f"HTTP {exc.status_code}: {_message(exc)}") from exc
    except openai.APIError as exc:
        raise TargetError(f"{type(exc).__name__}: {exc.message}") from exc
    latency = time.perf_counter() - started
    if not reply.choices:
        raise TargetError("the answer has no choices")
    usage = reply.usage
    return Answer(reply.choices[0].message.content or "", latency, usage.prompt_tokens if usage else 0,
                  usage.completion_tokens if usage else 0, reply.choices[0].finish_reason,
                  raw.headers.get("x-llmops-variant"), raw.headers.get("x-llmops-prompt-version"))


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    return exc.message
