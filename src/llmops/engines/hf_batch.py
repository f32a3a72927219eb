"""Dynamic padded batching for transformers' `generate`: requests that arrive together and sample alike
decode as one left-padded batch, each still streaming its own text, with its own stop sequences, token
budget and cancellation. A request with a seed runs alone, so the same seed always gives the same text
(batched decoding is not token-identical to single-sequence decoding)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from llmops.engines.base import SamplingParams
from llmops.engines.batching import gather_batch
from llmops.engines.hf_stream import TextAccumulator, penalty_processor
from llmops.engines.threads import ThreadStream


@dataclass
class Row:
    ids: list[int]
    sampling: SamplingParams
    budget: int
    acc: TextAccumulator
    stream: ThreadStream[str]
    finished: bool = False

    def key(self) -> tuple[object, ...]:
        s = self.sampling
        if s.seed is not None:
            return ("solo", id(self))
        if s.temperature == 0:
            return ("greedy", s.presence_penalty, s.frequency_penalty)
        return ("sample", s.temperature, s.top_p, s.presence_penalty, s.frequency_penalty)

    def done(self) -> bool:
        return (self.finished or self.acc.stopped or self.acc.cancelled or self.stream.cancelled.is_set()
                or self.acc.tokens >= self.budget)


class BatchStreamer:
    """transformers' streamer protocol over a batch: the prompt once, then one token per row per step."""

    def __init__(self, rows: list[Row], eos: set[int]) -> None:
        self.rows, self.eos = rows, eos
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row.done():
                continue
            if int(token) in self.eos:
                row.finished = True
            else:
                row.acc.add([int(token)])

    def end(self) -> None:
        for row in self.rows:
            row.acc.flush()


def run_batch(model: Any, tok: Any, rows: list[Row], lock: threading.Lock) -> None:
    """Decode `rows` together on the calling thread (an executor worker)."""
    import torch
    import transformers

    width = max(len(r.ids) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in rows])
    mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows])
    s = rows[0].sampling
    kwargs: dict[str, Any] = {"max_new_tokens": max(r.budget for r in rows), "do_sample": s.temperature > 0}
    if s.temperature > 0:
        kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
    processors = transformers.LogitsProcessorList()
    if s.presence_penalty or s.frequency_penalty:
        processors.append(penalty_processor(width, s.presence_penalty, s.frequency_penalty))

    def should_stop(input_ids: Any, scores: Any, **_: Any) -> Any:
        return torch.tensor([r.done() for r in rows], dtype=torch.bool, device=input_ids.device)

    eos = tok.eos_token_id if isinstance(tok.eos_token_id, list) else [tok.eos_token_id]
    with lock, torch.inference_mode():
        if all(r.done() for r in rows):
            return
        if s.seed is not None:
            torch.manual_seed(s.seed)
        model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                       streamer=BatchStreamer(rows, {int(e) for e in eos if e is not None}),
                       logits_processor=processors, stopping_criteria=transformers.StoppingCriteriaList([should_stop]),
                       pad_token_id=pad, **kwargs)


@dataclass
class Batcher:
    """Collects rows into batches: the first row waits up to `timeout_s` for companions that sample alike."""

    run: Callable[[list[Row]], None]
    executor: Executor
    max_batch_size: int
    timeout_s: float
    _pending: list[Row] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None
    batch_sizes: list[int] = field(default_factory=list)

    def submit(self, row: Row) -> None:
        self._pending.append(row)
        self._wakeup.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="llmops-hf-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._take()
            self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
            try:
                await loop.run_in_executor(self.executor, self.run, batch)
            except Exception as exc:
                for row in batch:
                    row.stream.finish(exc)
            else:
                for row in batch:
                    row.stream.finish()

    async def _take(self) -> list[Row]:
        first = self._pending.pop(0)
        limit = 1 if first.key()[0] == "solo" else self.max_batch_size
        return await gather_batch(first, self._pending, lambda r: r.key() == first.key(), limit, self.timeout_s,
                                  self._wakeup)
