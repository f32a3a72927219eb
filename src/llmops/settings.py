"""One typed settings tree.

Precedence, highest first: CLI flags (passed to `load_settings` as overrides) > `LLMOPS_*` environment
variables (nested fields with `__`, e.g. `LLMOPS_LIMITS__MAX_BODY_BYTES`) > the YAML config file >
the defaults below. Nothing is read at import time: `load_settings` reads the file and the environment
when it is called.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llmops.engines.weights import EMBEDDED_GEMMA, EMBEDDED_SMOLLM2
from llmops.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageLimits(_Strict):
    """Per-model image request limits; the defaults are the guide's /generate contract."""

    max_prompt_chars: int = Field(500, ge=1)
    default_negative_prompt: str = "blurry, low quality, distorted"
    min_size: int = Field(256, ge=8, description="smallest width or height, pixels")
    max_size: int = Field(768, ge=8, description="largest width or height, pixels")
    default_size: int = Field(512, ge=8)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(50, ge=1)
    default_steps: int = Field(30, ge=1)
    min_guidance: float = Field(1.0, ge=0)
    max_guidance: float = Field(20.0, ge=0)
    default_guidance: float = 7.5
    max_batch_size: int = Field(4, ge=1, description="same-shape requests coalesced into one pipeline call")
    batch_timeout_s: float = Field(0.05, ge=0, description="how long the first request waits for companions")


ImageFormat = Literal["PNG", "JPEG", "WEBP", "GIF", "BMP"]


class ClassifyLimits(_Strict):
    """Per-model image classification limits: what an uploaded image may be, and how requests batch."""

    max_image_bytes: int = Field(4_000_000, ge=1, description="largest encoded image (limits.max_body_bytes "
                                 "caps the whole request too)")
    max_pixels: int = Field(16_000_000, ge=1, description="largest decoded width x height; checked from the "
                            "header, before decoding (decompression bombs)")
    formats: list[ImageFormat] = Field(
        default_factory=lambda: list[ImageFormat](["PNG", "JPEG", "WEBP", "GIF", "BMP"]),
        description="image formats accepted (GIF: the first frame)")
    max_images: int = Field(64, ge=1, description="images (or tensor rows) in one request")
    default_top_k: int = Field(5, ge=1, description="labels returned per image when the request sets none")
    max_batch_size: int = Field(32, ge=1, description="images classified together in one model call, "
                                "across requests")
    batch_timeout_s: float = Field(0.005, ge=0, description="how long the first request waits for companions")


class ModelLimits(_Strict):
    """Per-model request limits."""

    default_max_tokens: int = Field(256, ge=1, description="max_tokens when the request gives none")
    max_n: int = Field(4, ge=1, le=16, description="largest `n` (choices or images per request) accepted")
    max_running: int | None = Field(None, ge=1, description="requests the engine works on at once; "
                                    "default: the engine's own capacity (llama.cpp: n_parallel slots + queue_ahead)")
    max_queued: int = Field(64, ge=0, description="requests waiting for a slot; beyond it, 503 at once")
    default_deadline_s: float = Field(60.0, gt=0, description="deadline when the request sets none")
    max_deadline_s: float = Field(300.0, gt=0, description="cap on a request's own X-Request-Timeout")
    image: ImageLimits = Field(default_factory=ImageLimits)
    classify: ClassifyLimits = Field(default_factory=ClassifyLimits)


class Pricing(_Strict):
    """What a request on this model costs, recorded against its key. Tokens are priced per 1K; images per
    image, plus GPU time at `gpu_usd_per_hour` (the engine seconds of the image's batch, shared by its images),
    as the guide's cost section reasons from a GPU's hourly price."""

    prompt_usd_per_1k: float = Field(0.0, ge=0)
    completion_usd_per_1k: float = Field(0.0, ge=0)
    image_usd: float = Field(0.0, ge=0, description="per image generated, or classified")
    gpu_usd_per_hour: float = Field(0.0, ge=0)


class ModelConfig(_Strict):
    """One served model: a name clients use, what it does, and which engine runs it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$", description="the API model id")
    kind: Literal["chat", "image", "embeddings", "classify"] = "chat"
    engine: str = Field(description="engine name from the registry: llamacpp, transformers, fake, ...")
    options: dict[str, Any] = Field(default_factory=dict, description="engine options; see each engine")
    limits: ModelLimits = Field(default_factory=ModelLimits)
    pricing: Pricing = Field(default_factory=Pricing)

    @model_validator(mode="after")
    def _compile_follows_image_limits(self) -> ModelConfig:
        """A compiled diffusers model warms up the batch sizes and size its image limits will send it."""
        if self.engine == "diffusers" and self.options.get("compile"):
            image = self.limits.image
            self.options.setdefault("compile_batch_sizes", list(range(1, image.max_batch_size + 1)))
            self.options.setdefault("compile_size", image.default_size)
        return self


def default_models() -> list[ModelConfig]:
    """The embedded defaults: SmolLM2-135M-Instruct (GGUF Q4_1, its own ChatML template extended to show
    tools) as the chat model; Gemma 3 270M (base, GGUF Q4_K_M) for completions and as a second model; the
    tiny Stable Diffusion pipeline with seeded random weights (it draws noise; it has no safety checker to
    run); all-MiniLM-L6-v2 for embeddings; and the tiny ResNet trained on scikit-learn's digits at first use
    (its held-out accuracy in its llmops.json)."""
    return [
        ModelConfig(name="smollm2-135m-instruct", engine="llamacpp",
                    options={"model": EMBEDDED_SMOLLM2, "chat_template": "chatml-tools"}),
        ModelConfig(name="gemma-3-270m", engine="llamacpp", options={"model": EMBEDDED_GEMMA}),
        ModelConfig(name="tiny-sd", kind="image", engine="diffusers",
                    options={"model": "builtin:tiny-sd", "safety_checker": False}),
        ModelConfig(name="all-minilm-l6-v2", kind="embeddings", engine="sentence-transformers"),
        ModelConfig(name="tiny-resnet", kind="classify", engine="classifier", options={"model": "builtin:tiny-resnet"}),
    ]


class ImageSettings(_Strict):
    url_ttl_s: float = Field(3600, gt=0, le=7 * 86400, description="how long a signed image URL "
                             "(response_format=url) can be fetched without a key")
    url_secret: SecretStr | None = Field(None, description="HMAC secret signing image URLs; env "
                                         "LLMOPS_IMAGES__URL_SECRET. Unset: generated at start (with "
                                         "state.backend redis, shared by the replicas through Redis)")
    store_dir: str | None = Field(None, description="folder for response_format=url images; unset: url refused")
    job_ttl_s: float = Field(3600, gt=0, description="how long finished image jobs are kept")
    max_kept_jobs: int = Field(1000, ge=1, description="at most this many finished image jobs are kept (the "
                               "oldest go first); only jobs created through /v1/images/jobs are kept at all")
    max_queued: int | None = Field(None, ge=0, description="deprecated: set the image model's limits.max_queued "
                                   "(image jobs wait in the model's one admission queue); when set, it is the "
                                   "default of every image model's limits.max_queued")


class ServerLimits(_Strict):
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")


class HttpSettings(_Strict):
    """The HTTP server's own limits (uvicorn, on h11 or httptools; the same behaviour on both: see
    llmops/http_protocol.py). An idle or half-sent connection is closed, never kept forever."""

    implementation: Literal["auto", "h11", "httptools"] = Field("auto", description="HTTP/1.1 parser; auto: "
                                                               "httptools when installed, else h11")
    max_header_bytes: int = Field(16_384, ge=1024, description="request line + headers; larger: 431, closed")
    max_headers: int = Field(100, ge=8, description="header fields per request; more: 431")
    keep_alive_timeout_s: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this")
    head_timeout_s: float = Field(10.0, gt=0, description="a connection must send a whole request head "
                                  "within this of its first byte (or of opening); else closed")
    body_idle_timeout_s: float = Field(30.0, gt=0, description="a request body that stops arriving for this "
                                       "long closes the connection")
    body_timeout_s: float = Field(120.0, gt=0, description="a request body still not complete this long after "
                                  "it began closes the connection (however it trickles in)")
    max_connections: int = Field(1000, ge=1, description="open connections; beyond it new ones are closed "
                                 "at once (keep it below the process's file limit, ulimit -n)")
    max_connections_per_client: int | None = Field(
        256, ge=1, description="open connections from one client address; beyond it its new ones are closed at "
        "once, so one client cannot take every connection (probes included). Loopback and "
        "rate_limits.trusted_proxies (a proxy carries many clients) are exempt. Unset: no limit")
    limit_concurrency: int | None = Field(None, ge=1, description="uvicorn's limit on connections + requests "
                                          "in progress; beyond it plain 503. Unset: none")
    backlog: int = Field(2048, ge=1, description="the listening socket's accept queue")


class ObservabilitySettings(_Strict):
    log_format: Literal["console", "json"] = Field("console", description="json in containers")
    log_content: bool = Field(False, description="log prompts and outputs (off: never logged)")
    log_flush_ms: float = Field(100.0, ge=0, le=10_000, description="INFO lines (the access log: one per request) "
                                "are written together at most this long after the first; warnings and errors at "
                                "once; 0: every line at once. A process killed outright loses at most this much "
                                "of them; a normal exit writes them all")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset: tracing off")
    service_name: str = "llmops"


class AuthSettings(_Strict):
    """API keys. With no key in the store, a server on loopback is open (the embedded default); once a key
    has been created every request needs one (revoking them all does not reopen it, nor does a store that
    loses its keys: a process that has seen a key stays keyed). A server bound elsewhere refuses to start
    without keys unless `insecure_no_auth` (`--insecure-no-auth`) says so, and never serves without one.

    `require_keys` makes a loopback server keyed from its start too: a replica behind a sidecar proxy, bound
    to 127.0.0.1, that starts while its shared Redis is empty (flushed, or restarted without persistence)
    would otherwise see no key and serve anyone. With it and no key in the store, every request but the
    probes (and the open pages: console, docs, /metrics unless `metrics_require_key`) gets 401 until a key
    exists; the admin API still works, to create one.

    Wrong admin keys are throttled per client address (middleware/auth_throttle.py): `max_failures` of them
    within `failure_window_s` and that address's /admin requests get 429 with Retry-After, their keys
    unchecked, for `failure_window_s` (API keys, 256 random bits, are not throttled). The address is the
    rate limiter's. Without `rate_limits.trusted_proxies` an internal address (which may be a proxy every
    client shares) is never locked out, only logged; behind a proxy, list it there."""

    admin_key: SecretStr | None = Field(None, description="guards /admin; env LLMOPS_AUTH__ADMIN_KEY. "
                                        "Unset: the admin API is disabled")
    metrics_require_key: bool = Field(False, description="/metrics needs an API key too")
    key_refresh_s: float = Field(1.0, ge=0, description="how often the server re-reads whether any key exists, "
                                 "and each key it has verified (keys created or revoked by the CLI or another "
                                 "replica take effect this soon; revoked through this server's admin API, at "
                                 "once; tests use 0)")
    require_keys: bool = Field(False, description="every request needs a key from the start, even with no key "
                               "in the store (then all but the probes and open pages get 401 until one is "
                               "created): for a replica on loopback behind a sidecar, whose shared store may "
                               "come back empty. False: keyed once a key exists, or from the start when bound "
                               "beyond loopback")
    max_failures: int = Field(20, ge=0, description="wrong admin keys one client address may present within "
                              "failure_window_s; then its /admin requests get 429 with Retry-After, their "
                              "keys unchecked, until that window passes. Counted per process. 0: no limit")
    failure_window_s: float = Field(60.0, gt=0, le=86_400, description="the window of max_failures, and how "
                                    "long an address that reached it is refused")

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, key: SecretStr | None) -> SecretStr | None:
        problem = admin_key_problem(key.get_secret_value()) if key is not None else None
        if problem:
            raise ValueError(f"the admin key {problem}: the server refuses to start with it. Unset "
                             "LLMOPS_AUTH__ADMIN_KEY to disable the admin API, or set a random one, e.g. "
                             "`openssl rand -hex 32`")
        return key


ADMIN_KEY_MIN_CHARS = 16
# Words of the values people leave in templates ("replace me", "<your admin key here>", "${ADMIN_KEY}")
PLACEHOLDER_WORDS = ("replace", "changeme", "change-me", "change_me", "placeholder", "example", "your", "xxxx",
                     "password", "${", "<", ">")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")  # tokens libraries read themselves
OTEL_HEADER_ENV = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def allowed_host_entry(entry: str) -> str:
    """An `allowed_hosts` entry as the Host check compares it: lower case, without a trailing dot, an IPv6
    address in brackets; `*`, or `*.` before a domain for its subdomains. A port, a path or a scheme is
    refused (the check strips the request's port: any port of an allowed name is allowed)."""
    host = entry.strip().lower().rstrip(".")
    if host == "*":
        return host
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if address is not None:
        return f"[{address}]" if address.version == 6 else str(address)
    name = host[2:] if host.startswith("*.") else host
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", name):
        raise ValueError(f"allowed_hosts entries are host names, *.domain, IP addresses or *, without a port "
                         f"or scheme; not {entry!r}")
    return host


def url_secrets(url: str) -> list[str]:
    """A URL's user name and password, the Basic credentials an HTTP client makes of them (which a server
    may echo), and its query's values: what a log line or an error quoting the URL must not show."""
    try:
        parts = urlsplit(url)
        user, password = parts.username or "", parts.password or ""
    except ValueError:  # not a URL at all: nothing to take from it
        return []
    basic = base64.b64encode(f"{user}:{password}".encode()).decode() if user or password else ""
    return [v for v in (user, password, basic, *(value for _, value in parse_qsl(parts.query))) if v]


def admin_key_matches(key: SecretStr | None, given: str) -> bool:
    """Whether `given` is the admin key, compared in constant time; never while the admin API is disabled
    (no key, or an empty one, which the settings refuse anyway)."""
    if key is None or not key.get_secret_value():
        return False
    return hmac.compare_digest(given.encode(), key.get_secret_value().encode())


def admin_key_problem(key: str) -> str | None:
    """Why `key` must not guard the admin API (empty, short, repetitive or a documented placeholder), or None."""
    if not key.strip():
        return "is empty (an empty key would let anyone in)"
    if len(key) < ADMIN_KEY_MIN_CHARS:
        return f"is shorter than {ADMIN_KEY_MIN_CHARS} characters"
    if len(set(key)) < 6:
        return "uses fewer than 6 distinct characters"
    if any(c.isspace() for c in key):
        return "holds whitespace (an HTTP header trims it, so the key could not be sent as it is set)"
    lowered = key.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "is a placeholder value (like deploy/k8s's replace-me-before-deploying)"
    return None


class StateSettings(_Strict):
    """Where keys, limit counters and spend live. sqlite: keys and spend in a file (they survive restarts),
    counters in the process: the embedded default, one process. redis: all of it shared by every replica.
    memory: nothing survives (tests)."""

    backend: Literal["sqlite", "redis", "memory"] = "sqlite"
    sqlite_path: str = Field("~/.local/share/llmops/llmops.db", description="the SQLite file (backend sqlite)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="backend redis; env LLMOPS_STATE__REDIS_URL")
    redis_prefix: str = Field("llmops:", description="prefix of every Redis key this server writes")
    redis_timeout_s: float = Field(0.25, gt=0, le=10, description="per Redis call; then the on_error policy")
    on_error: Literal["open", "closed"] = Field("open", description="Redis unreachable: open skips limits and "
                                                "spend accounting (logged, counted); closed answers 503")


class SpendSettings(_Strict):
    max_usd_per_hour: float | None = Field(None, gt=0, description="global circuit breaker: while the last "
                                           "hour's spend (all keys) is above this, new requests get 503")
    refresh_s: float = Field(1.0, ge=0, description="how often each key's and the hour's spend is re-read from "
                             "the store (other replicas' spend shows within this; tests use 0)")


class SemanticCacheSettings(_Strict):
    """Opt-in: chat requests close enough in meaning to one answered before (cosine similarity of their
    normalised texts' embeddings at or above `threshold`) get its answer, within the same model, prompt
    version and request options, when the two texts also agree on what embeddings are blind to (numbers,
    negations, code, names, one word swapped: pipeline/cache_guard.py). In the process, or in Redis with the
    redis state backend. Measured on labelled paraphrase and near-miss pairs in bench/semantic_cache.py:
    pick the threshold from its table (0.85: with the guard no near miss is served at any threshold measured,
    0.8-0.95, and 0.85 keeps a margin of 0.13 over the most similar near miss the guard lets through, 0.72;
    0.8 would answer 2 more of its 50 paraphrases with a margin of 0.08)."""

    enabled: bool = False
    model: str = Field("all-minilm-l6-v2", description="the embeddings model (kind: embeddings) it uses")
    threshold: float = Field(0.85, gt=0, le=1, description="cosine similarity that counts as the same request "
                             "(the guard must agree too)")
    max_entries: int = Field(1024, ge=1, description="entries per namespace (model, prompt version, options)")


class CacheSettings(_Strict):
    """Exact-match response cache for deterministic requests (temperature 0, or a seed given), chat,
    completions and images. In the process (LRU) with the sqlite/memory state backends; in Redis, shared by
    replicas, with the redis backend. A request opts out with `Cache-Control: no-cache` (or no-store).

    Off by default: clients of an OpenAI-compatible server expect the model to run (a benchmark or an
    evaluation that repeats a prompt would otherwise measure the cache), and the default global scope tells
    a caller that someone asked the same before. Turn it on where repeated deterministic requests are
    expected; every response says what happened in `X-Cache`."""

    enabled: bool = Field(False, description="serve repeated deterministic requests from the cache")
    max_entries: int = Field(1024, ge=1, description="LRU size (in-process cache)")
    ttl_s: float = Field(3600, gt=0, description="how long an answer is served from the cache")
    max_entry_bytes: int = Field(4_000_000, ge=1024, description="larger answers are not cached")
    scope: Literal["global", "key"] = Field("global", description="global: one cache for every caller (an "
                                            "identical request gets the stored answer); key: each API key has "
                                            "its own entries, so no caller can learn what another asked")
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)


Stage = Literal["input", "output"]
PiiEntity = Literal["email", "phone", "card", "iban", "ssn"]


class GuardrailRule(_Strict):
    """One guardrail: a detector, the hook points it runs at, and what a finding does. `block` refuses
    (400 content_filter; mid-stream: a final error event), `redact` replaces what was found (PII),
    `flag` lets it through and counts it (metric + log line)."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    detector: Literal["injection", "pii", "blocklist", "regex"]
    stages: list[Stage] = Field(default_factory=lambda: list[Stage](["input"]), min_length=1)
    action: Literal["block", "redact", "flag"] = "block"
    entities: list[PiiEntity] = Field(default_factory=lambda: list[PiiEntity](
        ["email", "phone", "card", "iban", "ssn"]))
    terms: list[str] = Field(default_factory=list, description="blocklist: words or phrases, case-insensitive")
    patterns: list[str] = Field(default_factory=list, description="regex: Python regular expressions")
    classifier: str | None = Field(None, description="injection: 'module:factory' of a classifier whose "
                                   "score(text) >= threshold also counts as a finding")
    threshold: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _coherent(self) -> GuardrailRule:
        if self.action == "redact" and self.detector == "injection":
            raise ValueError("an injection rule can block or flag, not redact")
        if self.detector == "blocklist" and not self.terms:
            raise ValueError("a blocklist rule needs terms")
        if self.detector == "regex":
            if not self.patterns:
                raise ValueError("a regex rule needs patterns")
            for pattern in self.patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
        return self


class GuardrailSettings(_Strict):
    max_input_chars: int | None = Field(None, ge=1, description="longer inputs get 400 content_filter")
    max_input_tokens: int | None = Field(None, ge=1, description="the same, in estimated tokens (4 chars each)")
    rules: list[GuardrailRule] = Field(default_factory=list)


class Variant(_Strict):
    model: str
    weight: float = Field(1.0, gt=0)


class Shadow(_Strict):
    model: str = Field(description="a candidate that gets a copy of the traffic; its answers are logged only")
    sample: float = Field(1.0, gt=0, le=1, description="share of requests mirrored")


ScorerKind = Literal["exact", "contains", "regex", "json_valid", "json_schema", "numeric", "embedding", "judge"]


class EvalScorer(_Strict):
    """One scorer of `llmops eval` (per dataset) or of a route's live traffic. Scores are in [0, 1]; a scorer
    that does not apply to a row (no reference to compare with) gives no score rather than a zero."""

    kind: ScorerKind
    name: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,64}$", description="label in reports and metrics "
                             "(default: the kind)")
    ignore_case: bool = Field(True, description="exact/contains: compare case-insensitively, whitespace collapsed")
    reference: str | None = Field(None, description="used when a row has none (live traffic has none)")
    pattern: str | None = Field(None, description="regex: the pattern (default: the row's "
                         "metadata.pattern)")
    json_schema: dict[str, Any] | None = Field(None, description="json_schema: the schema (default: the row's "
                                               "metadata.schema)")
    json_in_text: bool = Field(False, description="json_valid/json_schema: accept the first JSON object or array "
                               "found in the answer's text (default: the whole answer must be JSON, a ``` fence "
                               "allowed)")
    rel_tol: float = Field(0.01, ge=0, description="numeric: relative tolerance")
    abs_tol: float = Field(0.0, ge=0, description="numeric: absolute tolerance")
    model: str | None = Field(None, description="embedding/judge: the model to ask")
    base_url: str | None = Field(None, description="embedding/judge: an OpenAI-compatible /v1 URL (default: the "
                                 "eval's server)")
    api_key_env: str | None = Field(None, description="environment variable holding the endpoint's API key")
    rubric: str | None = Field(None, description="judge: what a good answer is (default: correct, complete, "
                               "concise)")

    @model_validator(mode="after")
    def _usable(self) -> EvalScorer:
        if self.kind in ("embedding", "judge") and not self.model:
            raise ValueError(f"a {self.kind} scorer needs a model")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from exc
        return self

    def label(self) -> str:
        return self.name or self.kind


class OnlineEval(_Strict):
    """Score a sample of a route's answers (variants and shadow) in the background: llmops_eval_score."""

    sample: float = Field(0.1, gt=0, le=1, description="share of answers scored")
    window: int = Field(100, ge=1, description="the gauge is the mean of the last `window` scores")
    scorers: list[EvalScorer] = Field(min_length=1)

    @model_validator(mode="after")
    def _endpoints(self) -> OnlineEval:
        for scorer in self.scorers:
            if scorer.kind in ("embedding", "judge") and not scorer.base_url:
                raise ValueError(f"online scorer {scorer.label()} needs a base_url (the server's own /v1 works)")
        return self


class RouteConfig(_Strict):
    """A model name clients use that is an alias over weighted variants (A/B), with fallbacks and a shadow."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    variants: list[Variant] = Field(min_length=1)
    sticky: Literal["key", "user", "none"] = Field("key", description="key: one variant per API key (or per "
                                                   "`user` without a key); user: per `user`; none: per request")
    fallbacks: list[str] = Field(default_factory=list, description="tried in order when the chosen variant "
                                 "fails or is overloaded before answering")
    shadow: Shadow | None = None
    online_eval: OnlineEval | None = Field(None, description="score live answers (llmops_eval_score)")


class PromptVariant(_Strict):
    version: str
    weight: float = Field(1.0, gt=0)


class PromptSettings(_Strict):
    dir: str | None = Field(None, description="folder of versioned prompts: <id>/<version>.yaml, and "
                            "published.json written by `llmops prompts publish`")
    experiments: dict[str, list[PromptVariant]] = Field(default_factory=dict, description="prompt id -> "
                                                        "weighted versions, for requests that name no version; "
                                                        "sticky per API key (or `user`)")


class RateLimitSettings(_Strict):
    anonymous_rpm: int | None = Field(None, ge=1, description="requests/min per client IP without a key; unset: off")
    trusted_proxies: list[str] = Field(default_factory=list, description="networks (CIDR) whose X-Forwarded-For "
                                       "is believed; from anyone else the header is ignored")


class ProcessSettings(_Strict):
    """What the server sets for its whole process when it starts (not an app built in another program)."""

    gil_switch_interval_ms: float = Field(1.0, ge=0.05, le=100, description="how long a thread waits for the "
                                          "GIL before it asks the event loop's thread to hand it over (Python's "
                                          "default, 5 ms, let a busy event loop keep the spend writer and store "
                                          "reads waiting for up to a second: llmops/gil.py)")


class ShutdownSettings(_Strict):
    drain_timeout_s: float = Field(30.0, ge=0, description="after SIGTERM, how long admitted work may finish")
    result_pickup_s: float = Field(10.0, ge=0, le=600, description="once admitted work has finished, how long "
                                   "clients may still read the results of image jobs that finished during the "
                                   "drain (they exist in this process only), within drain_timeout_s; the "
                                   "process exits once all are read")


class WebSettings(_Strict):
    """What browsers see: the console at /console, the API docs at /docs and /redoc (local assets, no key
    needed, the schema only), and CORS for other origins (off unless `cors_origins` lists some)."""

    console: bool = Field(True, description="serve the web console at /console (and redirect / to it)")
    docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the API from "
                                    "a browser (e.g. https://app.example.com); empty: CORS off")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        bad = [o for o in origins if not re.match(r"^https?://[^/\s]+$", o)]
        if bad:
            raise ValueError(f"origins are scheme://host[:port] with no path; not {', '.join(bad)}")
        return origins


class Settings(BaseSettings):
    """Everything the server reads. Field descriptions are the help text of `llmops config check`."""

    model_config = SettingsConfigDict(env_prefix="LLMOPS_", env_nested_delimiter="__", extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0: any free port)")
    allowed_hosts: list[str] | None = Field(
        None, description="Host headers this server answers (the name, port stripped; env LLMOPS_ALLOWED_HOSTS as "
        "a JSON list): others get 403, the probes excepted (DNS rebinding protection). Entries: a name "
        "(api.example.com), *.example.com for its subdomains, an IP address, or * for any. Unset (automatic): "
        "bound to loopback, only loopback names (localhost, *.localhost, 127.x.x.x, [::1]); bound elsewhere "
        "(0.0.0.0 in containers), any. A list replaces the automatic one: behind a proxy that keeps the "
        "client's Host on a loopback bind, list the public name, and localhost if it is still used")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: list[ModelConfig] = Field(default_factory=default_models, min_length=1)
    limits: ServerLimits = Field(default_factory=ServerLimits)
    http: HttpSettings = Field(default_factory=HttpSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    spend: SpendSettings = Field(default_factory=SpendSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    routes: list[RouteConfig] = Field(default_factory=list)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    insecure_no_auth: bool = Field(False, description="allow a non-loopback bind with no API keys")

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this configuration holds or names, as literals never to be logged nor echoed in an
        error: the admin key, the image URL secret, the values of the environment variables an upstream
        engine or an eval scorer takes its key from (and of the usual token variables), the credentials
        and query values of the Redis, OTLP and upstream URLs, and the OTLP exporter's header values."""
        values = [s.get_secret_value() for s in (self.auth.admin_key, self.images.url_secret) if s is not None]
        names = {str(m.options.get("api_key_env") or "") for m in self.models}
        names |= {s.api_key_env or "" for r in self.routes if r.online_eval for s in r.online_eval.scorers}
        values += [os.environ.get(n, "") for n in (*sorted(names - {""}), *SECRET_ENV)]
        urls = [self.state.redis_url, self.observability.otlp_endpoint,
                *(str(m.options.get("base_url") or "") for m in self.models)]
        values += [part for url in urls if url for part in url_secrets(url)]
        for name in OTEL_HEADER_ENV:
            values += [v for _, _, v in (h.partition("=") for h in os.environ.get(name, "").split(","))]
        return tuple(v.strip() for v in values if v and v.strip())

    def exposed(self) -> bool:
        """Bound beyond loopback without the operator's `insecure_no_auth`: such a server is never open. It
        refuses to start without keys (server.check_exposure), and should its keys vanish while it runs
        (a Redis flushed or restarted empty), it refuses every request rather than serve them."""
        return not self.loopback_bind() and not self.insecure_no_auth

    def loopback_bind(self) -> bool:
        """Whether the server binds a loopback address only (127.0.0.0/8, ::1, localhost)."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.") or self.host == "[::1]"

    def keys_required(self) -> bool:
        """Whether every request needs a key from the start, with or without keys in the store: when
        `auth.require_keys` says so, or when exposed (bound beyond loopback)."""
        return self.auth.require_keys or self.exposed()

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str] | None) -> list[str] | None:
        return None if hosts is None else [allowed_host_entry(h) for h in hosts]

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return models

    @model_validator(mode="after")
    def _routes_name_models(self) -> Settings:
        models = {m.name for m in self.models}
        for i, route in enumerate(self.routes):
            if route.name in models:
                raise ValueError(f"routes[{i}].name {route.name!r} is also a model name")
            named = [v.model for v in route.variants] + route.fallbacks + ([route.shadow.model] if route.shadow else [])
            unknown = sorted(set(named) - models)
            if unknown:
                raise ValueError(f"routes[{i}] ({route.name}) names models that are not configured: "
                                 f"{', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _legacy_image_queue(self) -> Settings:
        """`images.max_queued` (deprecated) is the default of each image model's `limits.max_queued`."""
        legacy = self.images.max_queued
        if legacy is not None:
            for m in self.models:
                if m.kind == "image" and "max_queued" not in m.limits.model_fields_set:
                    m.limits.max_queued = legacy
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, the YAML file, the environment and `overrides` (CLI flags)."""
    data = _read_yaml(Path(config_file)) if config_file else {}
    cli = {k: v for k, v in overrides.items() if v is not None}

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, data))

    try:
        loaded = _Loaded(**cli)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc
    return loaded
