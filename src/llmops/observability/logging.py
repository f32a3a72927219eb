"""Structured logs through structlog: JSON lines in containers (`log_format: json`), a readable console
format for `make serve`. Configured by `configure_logging`, called by the CLI, never at import.

One stream: uvicorn's and the libraries' loggers propagate to the root handler, so every line has the same
format; uvicorn's own access log is off (llmops.access writes one line per request instead). Every record
passes `redact_event` (observability/redaction.py) after its exception is rendered, so no secret leaves the
process. Exceptions are rendered as plain tracebacks, without local variables (they hold API keys and
prompts, and rendering them with rich stalled the event loop for seconds). Library warnings become one
short line each, each distinct warning once (a 25-line FutureWarning is one line); `log_step`
gives each long start-up step (model assembly, conversion, loading) a start and an end line with its
duration.

What a line costs matters: the access log writes one per request, and at the default level (info) it was
the largest part of the gateway's own CPU per request. So structlog's loggers (the access line among them)
render their line and hand it to the handler (`LineLogger`: no LogRecord, no second processor chain);
the console format is rendered by `ConsoleLine` (structlog's ConsoleRenderer's format at a fifth of its
cost); the fields no renderer here shows are not computed (the caller's frame, the thread, the process:
the logging module's documented switches); a line without a secret's leading words is searched once,
not put through the redaction patterns value by value; and INFO lines are written in batches
(`BatchedStderr`): one write per `observability.log_flush_ms`, where a write per line cost the server a
system call and a hand-over of the GIL each time. The access line skips structlog's dispatch (`AccessLog`),
the timestamp is formatted once a second, and JSON lines are written by pydantic-core. One access line took
46 us (JSON) and 67 us (console) before all of these; 5.5 and 9 us now."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic_core
import structlog

from llmops.errors import filter_messages
from llmops.observability.redaction import redact_event, redact_shapes, redact_text, register_secret

QUIET_LIBRARIES = ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "opentelemetry", "urllib3", "filelock",
                   "huggingface_hub", "diffusers", "transformers", "torch", "PIL", "asyncio", "multipart",
                   "python_multipart", "sentence_transformers")


MAX_BATCH_CHARS = 1 << 16  # a batch this large is written at once, whatever the time


class BatchedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, with INFO (and DEBUG) lines written together at most `flush_s` after the first of them: the
    access log is one line per request, and a write per line cost a system call and a GIL hand-over each.
    A WARNING or worse is written at once, with every line before it, in order. What is still held is
    written when the process exits normally (logging's own shutdown flushes every handler); a process
    killed outright loses at most `flush_s` of INFO lines. `flush_s` 0: every line at once."""

    def __init__(self, flush_s: float) -> None:
        super().__init__()
        self.flush_s = flush_s
        self._held: list[str] = []
        self._held_chars = 0
        self._due = threading.Event()
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        if self.flush_s <= 0:
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._take(line, record.levelno)

    def write_line(self, line: str, levelno: int) -> None:
        """A line already rendered (structlog's own loggers, `LineLogger`): no LogRecord is made for it."""
        with self.lock:  # type: ignore[union-attr]
            if self.flush_s <= 0:
                self._held.append(line + self.terminator)
                self._write_held()
            else:
                self._take(line, levelno)

    def _take(self, line: str, levelno: int) -> None:
        line += self.terminator
        self._held.append(line)
        self._held_chars += len(line)
        if levelno >= logging.WARNING or self._held_chars >= MAX_BATCH_CHARS:
            self._write_held()
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_when_due, name="llmops-log-writer", daemon=True)
            self._writer.start()
        if not self._due.is_set():  # set() takes the event's lock and wakes the writer: once per batch
            self._due.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_held()
            with contextlib.suppress(ValueError, OSError):  # the stream was closed under us (by its owner)
                super().flush()

    def _write_held(self) -> None:
        if not self._held:
            return
        text, self._held, self._held_chars = "".join(self._held), [], 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as logging's own handlers do: a closed or full stream must not raise into the app
            if logging.raiseExceptions:
                sys.stderr.write("llmops: could not write log lines\n")

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.flush_s)
            self._due.clear()
            self.flush()


_handler: BatchedStderr | None = None  # the one configure_logging installed last


class LineLogger:
    """structlog's last step for llmops' own loggers (the access line, start-up steps, warnings): the
    rendered line goes straight to the installed handler. The stdlib route made two LogRecords per line
    and ran a second processor chain in the formatter, a third of the access line's cost."""

    __slots__ = ("name",)

    def __init__(self, name: str = "llmops") -> None:
        self.name = name  # structlog.stdlib.add_logger_name reads it

    def debug(self, line: str) -> None:
        _write(line, logging.DEBUG)

    def info(self, line: str) -> None:
        _write(line, logging.INFO)

    def warning(self, line: str) -> None:
        _write(line, logging.WARNING)

    def error(self, line: str) -> None:
        _write(line, logging.ERROR)

    def critical(self, line: str) -> None:
        _write(line, logging.CRITICAL)

    msg = info  # structlog's level-less `msg`


def _write(line: str, levelno: int) -> None:
    if _handler is not None:
        _handler.write_line(line, levelno)


_QUOTED = frozenset(" \t=\r\n\"'")
_COLOURS = {"debug": "\x1b[34m", "info": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m",
            "critical": "\x1b[31;1m"}


class ConsoleLine:
    """The console format (`make serve`): `time [level] event [logger] key=value ...`, the keys sorted, a
    traceback on the lines after. structlog's ConsoleRenderer writes the same line in 20 us (a style and a
    padding step per field); this is a few. `colors`: the level coloured, for a terminal."""

    def __init__(self, colors: bool) -> None:
        self.colors = colors

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> str:
        get = event.get
        level, text, logger = str(get("level", "")), str(get("event", "")), get("logger")
        shown = f"[{level:<9}]"
        if self.colors:
            shown = f"{_COLOURS.get(level, '')}{shown}\x1b[0m"
        timestamp = get("timestamp", "")
        head = f"{timestamp} {shown} {text:<30}" if timestamp else f"{shown} {text:<30}"
        if logger:
            head = f"{head} [{logger}]"
        keys = sorted(event.keys() - _NOT_FIELDS)
        line = " ".join([head, *[f"{key}={_shown(event[key])}" for key in keys]]) if keys else head
        tail = [str(event[k]) for k in ("stack", "exception") if k in event]
        return "\n".join([line, *tail]) if tail else line


_NOT_FIELDS = frozenset({"timestamp", "level", "event", "logger", "stack", "exception", "exc_info"})


class _Timestamp:
    """structlog processor: `timestamp`, ISO 8601 in UTC to the microsecond (`2026-12-05T12:00:00.123456Z`),
    the date and time formatted once a second (structlog's TimeStamper formats a datetime per line: 1.7 us of
    an access line's 15). Runs after redaction: the time holds nothing to redact, and a value new on every
    line would defeat redaction's memory of the values it has seen."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second, self._prefix = -1, ""

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        event["timestamp"] = f"{self._prefix}.{nanoseconds // 1000:06d}Z"
        return event


def _json_line(event: Any, **_: Any) -> str:
    """JSONRenderer's serializer: pydantic-core's encoder (a fifth of json.dumps' time for an access line);
    what it cannot write (a lone surrogate) falls back to json.dumps. The values are plain by now:
    `redact_event` turned anything else into its redacted repr."""
    try:
        return pydantic_core.to_json(event, fallback=repr).decode()
    except (ValueError, TypeError):
        return json.dumps(event, default=repr)


def _shown(value: Any) -> str:
    if type(value) is str and _QUOTED.isdisjoint(value):
        return value
    return repr(value)


def _never_raising(renderer: Any) -> Any:
    """A line that cannot be rendered (a value whose repr raises) says so instead of raising into the
    request that logs it: structlog's loggers have no handler in between to catch it."""
    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        try:
            return renderer(logger, name, event)
        except Exception as exc:
            return renderer(logger, name, {"event": "log line not rendered", "logger": event.get("logger"),
                                           "level": event.get("level"), "timestamp": event.get("timestamp"),
                                           "error": type(exc).__name__})
    return render


def configure_logging(level: str, fmt: Literal["console", "json"], secrets: tuple[str | None, ...] = (),
                      flush_s: float = 0.0) -> None:
    """Every logger's lines through the same processors (redaction last before rendering) to one handler:
    structlog's rendered by structlog itself, the stdlib's and the libraries' by the handler's formatter.
    `secrets` are literals never to be logged;
    `flush_s`: INFO lines are written in batches at most this long after the first (BatchedStderr)."""
    for secret in secrets:
        register_secret(secret)
    # the error messages clients are sent: a server error's masked as the log lines are; a client error's, which
    # quotes the client, by the patterns alone (never compared with the secrets: that would confirm a guess)
    filter_messages(redact_text, redact_shapes)
    # No renderer here shows the caller's file and line, the thread or the process: don't compute them
    # for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_json_line) if fmt == "json"
                     else ConsoleLine(sys.stderr.isatty()))
    last = [structlog.processors.format_exc_info,  # plain traceback text, no locals
            redact_event, _Timestamp(), _never_raising(renderer)]
    global _handler, _access
    _handler = handler = BatchedStderr(flush_s)
    _access = (logging.getLevelName(level.upper()) <= logging.INFO, (redact_event, *last[2:]))
    # structlog's loggers render their line and hand it to the handler (LineLogger); the libraries' and the
    # stdlib loggers' records are formatted by the same processors (foreign_pre_chain, then `last`).
    structlog.configure(  # below `level`, a call is a no-op: no processors run for a line that is dropped
        processors=[*shared, *last],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=LineLogger, cache_logger_on_first_use=True)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
        foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")  # llmops.access logs one line per request instead
    access.handlers[:], access.propagate, access.disabled = [], False, True
    for name in QUIET_LIBRARIES:  # their INFO lines (one per internal HTTP call...) are noise here
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    warnings.showwarning = _log_warning
    # transformers and diffusers print through handlers of their own (not this stream): errors only
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # no progress bars: inside JSON lines they break the format, and in the console the pool's "loading model
    # ... done seconds=" lines already say what each load took
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class AccessLog:
    """The access line, one a request (middleware/observe.py): the same redaction, timestamp, renderer and
    handler as every other line, without structlog's per-call machinery (the bound logger's dispatch and
    context copy, and the processors that add what is fixed here: the level, the logger's name; an access
    line has no exception to format), a third of the line's cost. Nothing in llmops binds structlog
    context variables, so none are merged into it. Before `configure_logging` (an app built by a test), the
    line goes through structlog like any other."""

    __slots__ = ()

    def writes_info(self) -> bool:
        if _access is None:
            return bool(structlog.get_logger("llmops.access").bind().is_enabled_for(logging.INFO))
        return _access[0]

    def info(self, event: str, **fields: Any) -> None:
        if _access is None:
            structlog.get_logger("llmops.access").info(event, **fields)
            return
        enabled, chain = _access
        if not enabled:
            return
        line: Any = fields
        line["event"], line["level"], line["logger"] = event, "info", "llmops.access"
        for step in chain:
            line = step(None, "info", line)
        _write(line, logging.INFO)


# configure_logging's: whether INFO lines are written, and the access line's processors (the last of them renders)
_access: tuple[bool, tuple[Any, ...]] | None = None


def request_logger() -> AccessLog:
    return AccessLog()


@contextlib.contextmanager
def log_step(what: str, **fields: Any) -> Iterator[None]:
    """A line when a long start-up step begins and one when it ends, with its duration (or its failure)."""
    log = structlog.get_logger("llmops.startup")
    log.info(f"{what}...", **fields)
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        log.warning(f"{what} failed", error=type(exc).__name__, seconds=round(time.perf_counter() - started, 2),
                    **fields)
        raise
    log.info(f"{what} done", seconds=round(time.perf_counter() - started, 2), **fields)


_seen_warnings: set[tuple[str, str]] = set()


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """`warnings.showwarning` replacement: each distinct library warning once, as one short line."""
    text = str(message).strip()
    first = redact_text(text.splitlines()[0])[:300] if text else ""  # redacted whole: a cut secret would not match
    if (category.__name__, first) in _seen_warnings:
        return
    _seen_warnings.add((category.__name__, first))
    structlog.get_logger("llmops.warnings").warning("library warning", category=category.__name__, message=first,
                                                    where=f"{os.path.basename(filename)}:{lineno}")
