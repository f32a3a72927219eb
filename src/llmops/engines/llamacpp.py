"""GGUF models on llama.cpp, in-process, through xllamacpp's prebuilt wheels (nothing compiles).

llama.cpp's server runs inside this process with continuous batching over `n_parallel` slots; each request
is one blocking `handle_completions` call on a worker thread, streaming through a callback whose return
value stops generation (that is how a client leaving frees its slot within one decode step).

xllamacpp's Server also opens its own HTTP listener. It binds loopback, on a random port, and gets a random
key that only this process knows, so it is no way around this API's auth and limits; this engine uses it
for chat templating, and for tokenization only when a prompt might not fit: xllamacpp exposes no
in-process tokenizer, so a prompt that surely fits (its UTF-8 bytes, plus a margin for the special tokens
the tokenizer adds, leave room for the answer) goes to llama.cpp as text, which tokenizes it in its own
thread; only prompts near the context limit are counted exactly over the loopback listener first.

Tokens reach the event loop in batches (engines/threads.ThreadStream): when the loop is behind, every
token that piled up becomes one chunk, so the per-chunk work downstream is paid once per batch; a request
that does not stream is woken only at the end (llama.cpp still streams to this process, so a cancel or a
deadline stops generation within one token).

Structured output and tool calls are llama.cpp grammars (engines/constrained.py): a `response_format` is
compiled from its JSON schema, tools are rendered into the prompt by the chat template and the model's
calls constrained to the offered functions and their argument schemas. llama.cpp compiles a grammar when a
slot takes the request and, where llguidance refuses it, logs the reason and generates without it (a 200
that no schema constrained); so each grammar is first checked by llguidance itself, in a worker thread,
before the request is templated or given to llama.cpp, and one it refuses is a 400 naming the parameter.
Some of llguidance's limits are met only mid-answer, where llama.cpp again logs "llg error" and goes on
unconstrained: so the answer's text is followed by llguidance in the same grammar (a GrammarFollower, on
the worker thread, as each chunk arrives) and the first chunk that leaves it, or where llguidance gives
up, is not sent: generation stops and the request fails with a 400 naming the parameter (a final error
event when some of the answer was streamed already). An answer that stops (not cut by max_tokens) before
the grammar is complete fails so too, unless stop strings were sent (a stop string ends it anywhere).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llmops.engines.base import (
    EngineHealth,
    Message,
    SamplingParams,
    TextCapabilities,
    TextChunk,
    TextRequest,
    TokenLogprob,
    TokenUsage,
)
from llmops.engines.chat_format import chatml_tools_template
from llmops.engines.constrained import (
    CALL_OPEN,
    RESPONSE_FORMAT,
    GrammarCompiler,
    GrammarFollower,
    check_grammars,
    constraints,
    load_compiler,
    offered_names,
    tool_call_stream,
    tools_preamble,
)
from llmops.engines.gguf_meta import read_metadata
from llmops.engines.registry import require
from llmops.engines.textgen import (
    PreparedPrompt,
    prepare_fallback,
    resolve_max_tokens,
    strip_leading_space,
    token_logprobs,
)
from llmops.engines.threads import LoopWaker, ThreadStream, available_cores, run_worker
from llmops.engines.weights import EMBEDDED_GEMMA, resolve_weights
from llmops.errors import ContextLengthExceeded, EngineError, InvalidRequest, LLMOpsError, UnsupportedParameter

log = logging.getLogger("llmops.engines.llamacpp")

# Texts of the tokens chat models end a turn with (llama.cpp's end-of-generation set is found by such texts
# too); those this model's tokenizer has as one special token, with its GGUF eos, end a text answer under
# tool_choice auto (engines/constrained.py)
TURN_END_TEXTS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>",
                  "<|end_of_text|>", "<|return|>", "<|call|>", "</s>", "<eos>")

# The tokenizer adds a few tokens of its own (BOS, a space prefix) to at most one token per UTF-8 byte.
TOKENIZER_MARGIN = 8
# llama.cpp's seeds are 32-bit, and its LLAMA_DEFAULT_SEED (0xFFFFFFFF) means "draw a random one": a request's
# seed is mapped onto the others (seed_for_llama)
LLAMA_RANDOM_SEED = 2**32 - 1
MIN_TOKENS_PER_MESSAGE = 2  # a chat turn's markers and role take at least this many in any template


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(EMBEDDED_GEMMA, description="GGUF path, or pypi:<package> shipping one")
    context_length: int = Field(4096, ge=64, description="tokens per request (per slot)")
    n_parallel: int = Field(4, ge=1, le=256, description="slots decoded together (continuous batching)")
    queue_ahead: int | None = Field(None, ge=0, le=256, description="requests admitted beyond the slots, "
                                    "templated and waiting in llama.cpp's own queue so a finished slot refills "
                                    "at once; default: n_parallel")
    n_threads: int | None = Field(None, ge=1, description="decode threads; default: the cores available")
    n_threads_batch: int | None = Field(None, ge=1, description="prompt threads; default: n_threads")
    cpu_poll: int = Field(50, ge=0, le=100, description="llama.cpp threads' busy-wait level (0: sleep, "
                          "leaving CPU to the HTTP side on small machines; 50: llama.cpp's default)")
    log_verbosity: int = Field(1, ge=0, le=5, description="llama.cpp's own log level to stderr: 1 errors (default "
                               "here: its load-time token warnings about the shipped GGUFs are noise), 2 also "
                               "warnings, 3 also per-request info (llama.cpp's default)")
    n_batch: int = Field(2048, ge=32)
    n_ubatch: int = Field(512, ge=32)
    n_gpu_layers: int | None = Field(None, ge=-1, description="layers offloaded to a GPU build; default: llama.cpp's")
    chat_template: Literal["auto", "model", "fallback", "chatml-tools"] = Field(
        "auto", description="auto: the GGUF's template if it has one, else the project's fallback format; "
        "chatml-tools: a ChatML template that shows tools and tool turns (for ChatML models such as SmolLM2)")


def _wire_message(m: Message) -> dict[str, Any]:
    """A history message as llama.cpp's chat templating takes it (OpenAI's shape)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": _json_arguments(c.arguments)}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _json_arguments(arguments: str) -> str:
    """A past call's `arguments` as JSON text, which llama.cpp's templating parses (and fails the whole request
    on when it cannot). OpenAI takes any string there, and models write what does not parse (an empty one for
    a function without parameters, a cut-off object): empty is `{}`, other text that is not a JSON object
    (strict JSON: no NaN or Infinity, which llama.cpp's parser refuses) is kept as a JSON string, so the
    model sees what it wrote."""
    if not arguments.strip():
        return "{}"
    try:
        parsed = json.loads(arguments, parse_constant=_no_constant)
        json.dumps(parsed, ensure_ascii=False).encode()  # a lone surrogate escape: not UTF-8, refused there
    except ValueError:  # UnicodeEncodeError is one
        return json.dumps(arguments)
    return arguments if isinstance(parsed, dict) else json.dumps(arguments)


def seed_for_llama(seed: int) -> int:
    """The llama.cpp seed for a request's seed (OpenAI's: any 64-bit integer, negative ones too; choice i of n
    uses seed + i, which may pass 2^63): its remainder modulo 2^32 - 1, so a seed in 0..2^32-2 is itself,
    every seed is one of those, and no seed is LLAMA_RANDOM_SEED, which llama.cpp answers with a random one
    (seed -1, 2^32 - 1 or 2^33 - 1 gave answers that differed though the cache stores seeded ones as
    deterministic). Consecutive seeds stay distinct, so n choices get n seeds."""
    return seed % LLAMA_RANDOM_SEED


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ABOUT_GRAMMAR = ("grammar", "schema")  # words of llama.cpp's errors about a request's grammar or json_schema


def _map_error(err: dict[str, Any], constrained_by: str | None = None) -> LLMOpsError:
    """llama.cpp's error as ours. `constrained_by`: the parameter the request's grammar came from, named by
    an error about the grammar (a 400 whatever llama.cpp calls it: the grammar is the client's)."""
    message = str(err.get("message", "llama.cpp error"))
    if err.get("type") == "exceed_context_size_error":
        return ContextLengthExceeded(message, param="messages")
    if constrained_by is not None and any(word in message.lower() for word in _ABOUT_GRAMMAR):
        return InvalidRequest(f"llama.cpp refuses the grammar of {constrained_by}: {message}", param=constrained_by)
    if err.get("code") == 400 or err.get("type") == "invalid_request_error":
        return InvalidRequest(message)
    return EngineError(f"llama.cpp: {message}")


GRAMMAR_GAVE_UP = "llmops_grammar_gave_up"  # the key of the item a follower pushes in the chunk it refused


def _gave_up(reason: str, constrained_by: str | None) -> InvalidRequest:
    """The error for an answer that left its grammar mid-way (llguidance's `reason`)."""
    subject = "response_format's schema" if constrained_by == RESPONSE_FORMAT else "the tools' schemas"
    return InvalidRequest(f"llama.cpp's grammar engine (llguidance) gave up on {subject} mid-answer ({reason}); the "
                          "answer no longer matched it; simplify the schema (for example fewer anyOf branches)",
                          param=constrained_by)


class _Followed:
    """The worker's callback: each llama.cpp chunk's text is given to the follower before the chunk is pushed.
    The chunk whose text leaves the grammar (or where llguidance gives up) is not pushed: an item saying why
    is, and generation stops; so does a finish "stop" before the grammar is complete, unless `stops` (stop
    strings were sent: one ends the answer anywhere). A finish "length" is the answer cut: incomplete is
    expected. Called on the worker thread that runs handle_completions."""

    def __init__(self, push: Callable[[dict[str, Any]], bool], follower: GrammarFollower | None,
                 stops: bool) -> None:
        self._push = push
        self._follower = follower
        self._stops = stops
        self._failed = False

    def __call__(self, raw: dict[str, Any]) -> bool:
        if self._failed:
            return True
        if self._follower is not None and (reason := self._problem(raw, self._follower)) is not None:
            self._failed = True
            self._push({GRAMMAR_GAVE_UP: reason})
            return True
        return self._push(raw)

    def _problem(self, raw: dict[str, Any], follower: GrammarFollower) -> str | None:
        for choice in raw.get("choices", ()):
            if (reason := follower.feed(choice.get("text") or "")) is not None:
                return reason
            if choice.get("finish_reason") == "stop" and not self._stops and not follower.complete():
                return "the answer stopped before the grammar was complete"
        return None


def _grammar_compiler(xllamacpp: Any) -> tuple[bool, GrammarCompiler | None]:
    """Whether this llama.cpp compiles grammars with llguidance (xllamacpp's wheels do: its json_schema
    grammars are `%llguidance` ones), and llguidance's check in the same library."""
    to_grammar = getattr(xllamacpp, "json_schema_to_grammar", None)
    try:
        llguidance = to_grammar is not None and str(to_grammar({"type": "object"})).startswith("%llguidance")
    except Exception:  # an xllamacpp whose function takes something else: no llguidance assumed
        llguidance = False
    if not llguidance:
        return False, None
    extension = sys.modules.get(f"{xllamacpp.__name__}.xllamacpp")
    compiler = load_compiler(getattr(extension, "__file__", None))
    if compiler is None:
        log.warning("llguidance's grammar check was not found in xllamacpp: a JSON schema llguidance refuses is "
                    "answered without constraint (llama.cpp logs 'llg error')")
    return True, compiler


def _constrained_by(request: TextRequest) -> str | None:
    if request.tools is not None:
        return "tools"
    return RESPONSE_FORMAT if request.structured is not None else None


class LlamaCppEngine:
    Options = LlamaCppOptions
    capabilities = TextCapabilities(structured_output=True, tools=True, logprobs=True)

    def __init__(self, model_name: str, options: LlamaCppOptions) -> None:
        self.model_name = model_name
        self.options = options
        self.context_length = options.context_length
        # admission lets this many run: the slots, plus requests already prepared and queued inside llama.cpp
        # (otherwise a slot idles while the next request is templated, a loopback call competing with decode)
        ahead = options.n_parallel if options.queue_ahead is None else options.queue_ahead
        self.capacity = options.n_parallel + ahead
        self.threads = options.n_threads or available_cores()
        self._state: Literal["loading", "ready", "failed", "closed"] = "loading"
        self._server: Any = None
        self._key = secrets.token_urlsafe(32)
        self._http: httpx.AsyncClient | None = None
        self._executor = ThreadPoolExecutor(self.capacity + 2, thread_name_prefix=f"llamacpp-{model_name}")
        self._waker: LoopWaker | None = None  # shared by the streams: one loop wake-up per burst of tokens
        self._use_model_template = False
        self._llguidance = True  # what xllamacpp's wheels are built with; settled at start
        self._compiler: GrammarCompiler | None = None
        self._turn_ends: tuple[int, ...] = ()  # the tokens it ends a turn with; found at start

    # lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        xllamacpp = require("xllamacpp", "llamacpp")
        try:
            path = await asyncio.to_thread(resolve_weights, self.options.model)
            meta = await asyncio.to_thread(read_metadata, path)
            has_template = "tokenizer.chat_template" in meta
            self._use_model_template = self.options.chat_template in ("model", "chatml-tools") or (
                self.options.chat_template == "auto" and has_template)
            params = self._params(xllamacpp, str(path))
            self._llguidance, self._compiler = _grammar_compiler(xllamacpp)
            self._server = await asyncio.to_thread(xllamacpp.Server, params)
        except BaseException:
            self._state = "failed"
            raise
        self._http = httpx.AsyncClient(base_url=self._server.listening_address, timeout=30.0,
                                       headers={"Authorization": f"Bearer {self._key}"})
        eos = meta.get("tokenizer.ggml.eos_token_id")
        self._turn_ends = await self._turn_end_tokens(eos if isinstance(eos, int) else None)
        self._state = "ready"

    async def _turn_end_tokens(self, eos: int | None) -> tuple[int, ...]:
        """The tokens this model may end its turn with: its GGUF eos, and each of TURN_END_TEXTS that its
        tokenizer reads as one token. None found: tool_choice auto goes unconstrained."""
        found = {eos} if eos is not None else set()
        try:
            for text in TURN_END_TEXTS:
                tokens = (await self._post("/tokenize", {"content": text, "add_special": False,
                                                         "parse_special": True}))["tokens"]
                if len(tokens) == 1 and isinstance(tokens[0], int):
                    found.add(tokens[0])
        except (LLMOpsError, httpx.HTTPError, KeyError, ValueError) as exc:
            log.warning("could not read the model's end-of-turn tokens (%s): tool_choice auto is answered "
                        "unconstrained", exc)
            return ()
        return tuple(sorted(found))

    def _params(self, xllamacpp: Any, path: str) -> Any:
        o = self.options
        p = xllamacpp.CommonParams()
        p.model.path = path
        p.n_parallel = o.n_parallel
        p.n_ctx = o.context_length * o.n_parallel  # llama.cpp splits n_ctx across the slots
        p.cont_batching = True
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = o.n_threads_batch or self.threads
        p.cpuparams.poll = p.cpuparams_batch.poll = o.cpu_poll
        p.verbosity = o.log_verbosity
        p.n_batch, p.n_ubatch = o.n_batch, o.n_ubatch
        if o.chat_template == "chatml-tools":
            p.chat_template = chatml_tools_template()
        if o.n_gpu_layers is not None:
            p.n_gpu_layers = o.n_gpu_layers
        p.hostnames, p.port, p.api_keys = ["127.0.0.1"], 0, [self._key]
        p.endpoint_metrics = p.endpoint_props = p.endpoint_slots = False
        return p

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        holder = [self._server]
        self._server = None
        await asyncio.to_thread(holder.clear)  # the destructor joins llama.cpp's loop: not on the event loop
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._state = "closed"

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, {
            "slots": self.options.n_parallel, "threads": self.threads, "context_length": self.context_length,
            "chat_template": self._template_name()})

    def _template_name(self) -> str:
        if not self._use_model_template:
            return "fallback"
        return "chatml-tools" if self.options.chat_template == "chatml-tools" else "model"

    @property
    def internal_address(self) -> str | None:
        """llama.cpp's own listener (loopback, random port, random key): for tests and debugging."""
        return str(self._server.listening_address) if self._server is not None else None

    # generation ------------------------------------------------------------------------------------
    async def _prompt(self, text: str, sampling: SamplingParams) -> tuple[list[int] | str, int]:
        """What to send as the prompt, and its token count for the budget: the text itself with an upper
        bound of its count when that bound leaves room for the answer (the budget then comes out the same
        as with the exact count), else the exact tokens."""
        bound = len(text.encode()) + TOKENIZER_MARGIN
        if bound + (sampling.max_tokens or sampling.default_max_tokens) <= self.context_length:
            return text, bound
        tokens = await self.tokenize(text)
        return tokens, len(tokens)

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._post("/tokenize", {"content": text, "add_special": True}))["tokens"])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._http is None:
            raise EngineError("the llama.cpp engine is not started")
        response = await self._http.post(path, json=body)
        data: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise _map_error(data.get("error", {}))
        return data

    async def _prepare(self, request: TextRequest) -> PreparedPrompt:
        if request.messages is not None and len(request.messages) * MIN_TOKENS_PER_MESSAGE > self.context_length:
            # refused before templating them: 16,000 one-letter messages held the model for 29 s there
            raise ContextLengthExceeded(f"{len(request.messages)} messages cannot fit this model's context of "
                                        f"{self.context_length} tokens", param="messages")
        if request.messages is None or not self._use_model_template:
            return prepare_fallback(request)
        messages = [_wire_message(m) for m in request.messages]
        body: dict[str, Any] = {"messages": messages}
        if request.tools is not None:
            body["tools"] = list(request.tools.functions)
        prompt = str((await self._post("/apply-template", body))["prompt"])
        if request.tools is not None and CALL_OPEN not in prompt:  # the template has no place for tools
            body["messages"] = [{"role": "system", "content": tools_preamble(request.tools)}, *messages]
            prompt = str((await self._post("/apply-template", body))["prompt"])
        return PreparedPrompt(prompt, request.sampling.stop, False)

    async def _constraints(self, request: TextRequest) -> tuple[dict[str, Any], str | None]:
        """The request's grammar fields, each grammar checked by llguidance first (400 naming the parameter
        it came from): in a worker thread, since building and checking a large schema's grammar takes
        milliseconds to a second, and before llama.cpp, whose slot would otherwise compile it, fail and
        generate unconstrained. With them, the grammar the answer is followed with (None: not followed,
        where nothing constrains it or there is no llguidance to follow it with)."""
        if request.tools is None and request.structured is None:
            return {}, None
        if request.tools is not None and not self._llguidance:  # llama.cpp would abort the process on it
            raise UnsupportedParameter("this llama.cpp build has no llguidance, which tool calls' grammars need; "
                                       "'tools' is not supported here", param="tools")
        compiler, limit, turn_ends = self._compiler, self.context_length, self._turn_ends

        def build() -> tuple[dict[str, Any], str | None]:
            found = constraints(request, limit, turn_ends)
            if compiler is None:
                return found.fields, None
            check_grammars(found.checks, compiler.problem)  # found only in a build with llguidance
            return found.fields, found.follow

        return await asyncio.get_running_loop().run_in_executor(self._executor, build)

    async def generate(self, request: TextRequest) -> AsyncIterator[TextChunk]:
        fields, follow = await self._constraints(request)  # a schema it refuses is refused first
        prepared = await self._prepare(request)
        s = request.sampling
        prompt, counted = await self._prompt(prepared.text, s)
        budget = resolve_max_tokens(s.max_tokens, counted, self.context_length, s.default_max_tokens)
        if budget == 0:  # the prompt alone (echo): llama.cpp reads max_tokens 0 as unset, and would generate
            count = counted if isinstance(prompt, list) else len(await self.tokenize(prepared.text))
            yield TextChunk("", finish_reason="length", usage=TokenUsage(count, 0))
            return
        body: dict[str, Any] = {
            "prompt": prompt, "max_tokens": budget, "temperature": s.temperature, "top_p": s.top_p,
            "stop": list(prepared.stops), "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty, "stream": True,
            "stream_options": {"include_usage": True}, "cache_prompt": True,
        }
        if s.seed is not None:
            body["seed"] = seed_for_llama(s.seed)
        if s.logprobs is not None:  # llama.cpp's n_probs: 0 would send no probabilities at all
            body["logprobs"] = max(1, s.logprobs)
        body.update(fields)
        chunks = self._stream(body, counted if isinstance(prompt, list) else 0, eager=request.stream,
                              constrained_by=_constrained_by(request), follow=follow, top=s.logprobs)
        if prepared.fallback_chat:
            chunks = strip_leading_space(chunks)
        if request.tools is not None:
            chunks = tool_call_stream(chunks, offered_names(request.tools))
        async for chunk in chunks:
            yield chunk

    async def _stream(self, body: dict[str, Any], prompt_tokens: int, *, eager: bool = True,
                      constrained_by: str | None = None, follow: str | None = None,
                      top: int | None = None) -> AsyncIterator[TextChunk]:
        """The text as it comes, one chunk per batch of tokens that reached the loop together; then the
        finish and usage (the prompt's count as llama.cpp reports it, else `prompt_tokens`).
        `constrained_by`: the parameter the body's grammar came from, which an error about it names;
        `follow`: the grammar the text is followed with, on the worker thread (the chunk that leaves it is
        not sent: the stream fails there); `top`: the body asks for logprobs, with this many alternatives."""
        server = self._server
        if server is None:
            raise EngineError("the llama.cpp engine is not started")
        loop = asyncio.get_running_loop()
        self._waker = waker = LoopWaker.on(self._waker, loop)
        stream: ThreadStream[dict[str, Any]] = ThreadStream(loop, eager=eager, waker=waker)
        compiler, stops = self._compiler, bool(body.get("stop"))

        def work() -> None:
            if compiler is None or follow is None:  # nothing to follow: no call of ours per token
                server.handle_completions(body, stream.push)
                return
            with compiler.follower(follow) as follower:
                server.handle_completions(body, _Followed(stream.push, follower, stops))

        run_worker(stream, work, self._executor.submit)
        finish: Literal["stop", "length"] = "stop"
        completion_tokens = 0
        async for batch in stream.batches():
            texts: list[str] = []
            probs: list[TokenLogprob] = []
            for raw in batch:
                if "error" in raw or GRAMMAR_GAVE_UP in raw:
                    if texts:
                        yield TextChunk("".join(texts))
                    if GRAMMAR_GAVE_UP in raw:
                        raise _gave_up(str(raw[GRAMMAR_GAVE_UP]), constrained_by)
                    raise _map_error(raw["error"], constrained_by)
                if usage := raw.get("usage"):
                    completion_tokens = int(usage["completion_tokens"])
                    prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
                for choice in raw.get("choices", ()):
                    if choice.get("finish_reason") in ("stop", "length"):
                        finish = choice["finish_reason"]
                    if text := choice.get("text"):
                        texts.append(text)
                    if top is not None and (found := choice.get("logprobs")):
                        probs.extend(token_logprobs(found, top))
            if texts or probs:
                yield TextChunk("".join(texts), logprobs=tuple(probs))
        yield TextChunk("", finish_reason=finish, usage=TokenUsage(prompt_tokens, completion_tokens))
