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
the largest part of the gateway's own CPU per request. So the fields no renderer here shows are not
computed (the caller's frame, the thread, the process: the logging module's documented switches), a
value without a secret's leading words is not put through the redaction patterns, and INFO lines are
written in batches (`BatchedStderr`): one write per `observability.log_flush_ms`, where a write per line
cost the server a system call and a hand-over of the GIL each time."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import structlog

from llmops.observability.redaction import redact_event, register_secret

QUIET_LIBRARIES = ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub", "diffusers", "transformers",
                   "torch", "PIL", "asyncio", "multipart", "python_multipart", "sentence_transformers")


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
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._held.append(line)
        self._held_chars += len(line)
        if record.levelno >= logging.WARNING or self._held_chars >= MAX_BATCH_CHARS:
            self._write_held()
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_when_due, name="llmops-log-writer", daemon=True)
            self._writer.start()
        self._due.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_held()
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


def configure_logging(level: str, fmt: Literal["console", "json"], secrets: tuple[str | None, ...] = (),
                      flush_s: float = 0.0) -> None:
    """Route every logger through one structlog formatter. `secrets` are literals never to be logged;
    `flush_s`: INFO lines are written in batches at most this long after the first (BatchedStderr)."""
    for secret in secrets:
        register_secret(secret)
    # No renderer here shows the caller's file and line, the thread or the process: don't compute them
    # for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(  # below `level`, a call is a no-op: no processors run for a line that is dropped
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=True)
    handler = BatchedStderr(flush_s)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # plain traceback text, no locals
                    redact_event, renderer],
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


def request_logger() -> Any:
    return structlog.get_logger("llmops.access")


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
    first = text.splitlines()[0][:300] if text else ""
    if (category.__name__, first) in _seen_warnings:
        return
    _seen_warnings.add((category.__name__, first))
    structlog.get_logger("llmops.warnings").warning("library warning", category=category.__name__, message=first,
                                                    where=f"{os.path.basename(filename)}:{lineno}")
