"""The fate of every OpenAI request field: honoured (with how), or refused with a 400 naming it.

One table per endpoint (`images`: POST /v1/images/generations and the image jobs API's POST /v1/images/jobs,
which take the same body). A refused field is still accepted when it is null or empty (or false), as OpenAI's
own clients serialise unset options so; any other value gets 400 `unsupported_parameter` naming it. Fields
that are not in the table at all (vLLM-style extras such as `top_k` or `ignore_eos`) are refused the same
way. One refused field also takes the one value that asks for nothing more, as OpenAI accepts it:
completions' `best_of` equal to `n` (less than n is invalid, as OpenAI's). The request model declares it and
refuses its other values itself (protocol/completions.py), as `refused_field` sees only undeclared fields.
`tests/unit/test_fields.py` checks that every field of the openai SDK's request types is here and that the
README's table is `markdown_table()`'s output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Endpoint = Literal["chat", "completions", "embeddings", "images"]


@dataclass(frozen=True)
class Fate:
    honoured: bool
    note: str
    # a refused field's values that ask for what is served anyway, as null does: OpenAI's own defaults, which
    # its examples send (`quality="standard"` in the DALL-E quickstart)
    served: frozenset[str] = frozenset()

    def refuses(self, value: object) -> bool:
        return not (self.honoured or is_unset(value) or (isinstance(value, str) and value in self.served))


def _h(note: str) -> Fate:
    return Fate(True, note)


def _r(note: str = "not implemented", served: frozenset[str] = frozenset()) -> Fate:
    return Fate(False, note, served)


_SAMPLING: dict[str, Fate] = {
    "model": _h("a model or route name; 404 for an unknown one"),
    "max_tokens": _h("capped by the context left; default per model (`limits.default_max_tokens`)"),
    "temperature": _h("0..2; null: 1"),
    "top_p": _h("(0, 1]; null: 1"),
    "stop": _h("up to 4 sequences"),
    "seed": _h("choice i uses seed + i; a seed makes the request cacheable"),
    "presence_penalty": _h("-2..2; null: 0"),
    "frequency_penalty": _h("-2..2; null: 0"),
    "n": _h("up to `limits.max_n`; null: 1"),
    "stream": _h("server-sent events; null: false"),
    "stream_options": _h("`include_usage`"),
    "user": _h("sticky A/B routing and prompt experiments when no API key is sent"),
    "logit_bias": _r(),
}

CHAT: dict[str, Fate] = {
    **_SAMPLING,
    "messages": _h("system, developer, user, assistant (with tool_calls) and tool turns; text content parts; "
                   "at most 2048"),
    "max_completion_tokens": _h("as max_tokens (wins over it)"),
    "response_format": _h("text, json_object, json_schema (strict or not) through llama.cpp's JSON-schema "
                          "grammar; 400 on an engine without structured output"),
    "tools": _h("function tools through llama.cpp's template-driven tool calling; 400 on other engines"),
    "tool_choice": _h("auto, none, required, or one named function"),
    "parallel_tool_calls": _h("false: at most one call per answer"),
    "service_tier": _h("`flex`: batch priority in admission; others: the key's priority (or interactive)"),
    "logprobs": _h("each token's log probability, per choice and per streamed chunk (llama.cpp engines); 400 "
                   "with tools, with output guardrails on, or on engines that do not report them"),
    "top_logprobs": _h("0..20 likeliest alternatives per token; needs logprobs: true"),
    "audio": _r("text only"),
    "modalities": _r("text only"),
    "prediction": _r(),
    "functions": _r("deprecated by OpenAI: use tools"),
    "function_call": _r("deprecated by OpenAI: use tool_choice"),
    "metadata": _r("completions are not stored"),
    "store": _r("completions are not stored"),
    "reasoning_effort": _r("no reasoning models"),
    "verbosity": _r(),
    "web_search_options": _r(),
    "moderation": _r("use the guardrails (server configuration)"),
    "safety_identifier": _r("use `user` or API keys"),
    "prompt_cache_key": _r("the response cache is keyed on the request itself"),
    "prompt_cache_options": _r("the response cache is keyed on the request itself"),
    "prompt_cache_retention": _r("the response cache is keyed on the request itself"),
    "prompt": _h("this server's extension: a versioned prompt from the registry"),
}

COMPLETIONS: dict[str, Fate] = {
    **_SAMPLING,
    "prompt": _h("a string, or a list of up to 32 (each gets n choices: choice index = prompt index x n + j; "
                 "usage sums them); token-id prompts: 400"),
    "logprobs": _h("0..5: the legacy shape (tokens, token_logprobs, top_logprobs, text_offset counted from the "
                   "choice's start); as chat's logprobs otherwise"),
    "best_of": _r("not implemented; a value equal to n is accepted (a no-op), one below n is invalid"),
    "echo": _h("each choice's text starts with its prompt (streamed: its first chunk); max_tokens 0: the prompt "
               "alone; with logprobs, the prompt's tokens first (the first one's null) where the engine scores "
               "prompts (the fake engine), else 400"),
    "max_tokens": _h("capped by the context left; default per model (`limits.default_max_tokens`); 0 only with "
                     "echo (the prompt alone)"),
    "n": _h("up to `limits.max_n`, and prompts x n up to 32; null: 1"),
    "seed": _h("choice j of each prompt uses seed + j; a seed makes the request cacheable"),
    "suffix": _r(),
}

EMBEDDINGS: dict[str, Fate] = {
    "model": _h("an embeddings model; 404 for an unknown one"),
    "input": _h("a string, a list of strings, token ids or a list of token-id lists (the model's vocabulary); "
                "at most 2048 items"),
    "encoding_format": _h("float or base64 (little-endian float32)"),
    "dimensions": _h("only sizes the model allows (`dimensions_allowed`); 400 for others"),
    "user": _h("logged with the request"),
}

IMAGES: dict[str, Fate] = {
    "prompt": _h("up to the model's `limits.image.max_prompt_chars`"),
    "model": _h("an image model; null: the first configured; 404 for an unknown one"),
    "n": _h("up to `limits.max_n`; image i uses seed + i; null: 1"),
    "size": _h("\"WxH\" within the model's limits, multiples of 8; null: the model's default"),
    "response_format": _h("b64_json or url (signed, needs `images.store_dir`; jobs: b64_json only); null: b64_json"),
    "user": _h("accepted as OpenAI's end-user id; it changes nothing in the images"),
    "negative_prompt": _h("this server's extension; null: the model's default"),
    "num_inference_steps": _h("this server's extension: within the model's limits"),
    "guidance_scale": _h("this server's extension: within the model's limits"),
    "seed": _h("this server's extension: 0..2^63-1; a seed makes a b64_json request cacheable"),
    "quality": _r("except `auto` and `standard` (OpenAI's defaults, what is served): one quality, the model's "
                  "steps (`num_inference_steps`)", frozenset({"auto", "standard"})),
    "style": _r(),
    "background": _r("opaque PNG only"),
    "output_format": _r("PNG only"),
    "output_compression": _r("PNG only"),
    "moderation": _r("use the guardrails (server configuration)"),
    "safety_identifier": _r("use `user` or API keys"),
    "stream": _r("use the jobs API (`/v1/images/jobs`) for progress"),
    "partial_images": _r("use the jobs API (`/v1/images/jobs`) for progress"),
    "complexity": _r(),
    "frame_count": _r("still images only"),
    "frame_duration_ms": _r("still images only"),
    "svg": _r("PNG only"),
}

TABLES: dict[Endpoint, dict[str, Fate]] = {"chat": CHAT, "completions": COMPLETIONS, "embeddings": EMBEDDINGS,
                                           "images": IMAGES}


def is_unset(value: object) -> bool:
    """What OpenAI clients send for an option they leave alone."""
    return value is None or value is False or value == [] or value == {}


def refused_field(endpoint: Endpoint, given: dict[str, object]) -> str | None:
    """The first field of `given` (a request's raw fields) that is set and not honoured, if any."""
    table = TABLES[endpoint]
    for name, value in given.items():
        fate = table.get(name)
        if (not is_unset(value)) if fate is None else fate.refuses(value):
            return name
    return None


def markdown_table() -> str:
    """The README's field table (tests check that the README holds exactly this)."""
    rows = ["| Endpoint | Field | Fate |", "|---|---|---|"]
    for endpoint, table in TABLES.items():
        for name, fate in sorted(table.items()):
            verdict = "honoured" if fate.honoured else "**400**"
            rows.append(f"| {endpoint} | `{name}` | {verdict}: {fate.note} |")
    return "\n".join(rows)
