"""Structured logs through structlog: JSON lines in containers (`log_format: json`), a readable console
format for `make serve`. Configured by `configure_logging`, called by the CLI, never at import.

One stream: uvicorn's and the libraries' loggers propagate to the root handler, so every line has the same
format; uvicorn's own access log is off (llmops.access writes one line per request instead). Every record
passes `redact_event` (observability/redaction.py) after its exception is rendered, so no secret leaves the
process. Exceptions are rendered as plain tracebacks, without local variables (they hold API keys and
prompts, and rendering them with rich stalled the event loop for seconds). Library warnings become one
short line each, each distinct warning once (a 25-line FutureWarning is one line); `log_step`
gives each long start-up step (model assembly, conversion, loading) a start and an end line with its
duration."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import structlog

from llmops.observability.redaction import redact_event, register_secret

QUIET_LIBRARIES = ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub", "diffusers", "transformers",
                   "torch", "PIL", "asyncio", "multipart", "python_multipart", "sentence_transformers")


def configure_logging(level: str, fmt: Literal["console", "json"], secrets: tuple[str | None, ...] = ()) -> None:
    """Route every logger through one structlog formatter. `secrets` are literals never to be logged."""
    for secret in secrets:
        register_secret(secret)
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
    handler = logging.StreamHandler()
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
