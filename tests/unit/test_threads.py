"""ThreadStream: items from a worker thread reach the event loop in batches, in order, with errors and
cancellation carried across; streams sharing a LoopWaker wake the loop once for a burst."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from llmops.engines.threads import LoopWaker, ThreadStream, run_worker


def _start(work: object) -> threading.Thread:
    thread = threading.Thread(target=work)  # type: ignore[arg-type]
    thread.start()
    return thread


async def test_items_pushed_while_the_reader_is_busy_arrive_as_one_batch() -> None:
    stream: ThreadStream[int] = ThreadStream(asyncio.get_running_loop())
    for i in range(5):  # nobody is reading yet: no wake-ups, just a pile
        stream.push(i)
    stream.finish()
    assert [b async for b in stream.batches()] == [[0, 1, 2, 3, 4]]


async def test_a_waiting_reader_is_woken_for_each_item_it_waits_for() -> None:
    stream: ThreadStream[int] = ThreadStream(asyncio.get_running_loop())
    step = threading.Event()

    def work() -> None:
        for i in range(3):
            step.wait()
            step.clear()
            stream.push(i)
        stream.finish()

    thread = _start(work)
    got = []
    batches = stream.batches()
    for _ in range(3):
        step.set()
        got.append(await anext(batches))
    assert got == [[0], [1], [2]]
    assert [b async for b in batches] == []
    thread.join()


@contextlib.contextmanager
def wakeups(loop: asyncio.AbstractEventLoop) -> Iterator[list[object]]:
    """The callbacks worker threads hand the loop (`call_soon_threadsafe`: each a wake-up) while inside."""
    woken: list[object] = []
    original = loop.call_soon_threadsafe

    def counting(callback: object, *args: object) -> object:
        woken.append(callback)
        return original(callback, *args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        yield woken
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]


async def test_not_eager_wakes_the_reader_only_at_the_end() -> None:
    loop = asyncio.get_running_loop()
    stream: ThreadStream[str] = ThreadStream(loop, eager=False)
    with wakeups(loop) as woken:
        run_worker(stream, lambda: [stream.push(w) for w in "abcdef"] and None,
                   lambda fn: _start(fn))
        assert [b async for b in stream.items()] == list("abcdef")
    assert len(woken) <= 1  # one wake-up (at finish) at most, however many items


async def test_an_error_after_items_delivers_them_then_raises() -> None:
    stream: ThreadStream[int] = ThreadStream(asyncio.get_running_loop())
    stream.push(1)
    stream.push(2)
    stream.finish(RuntimeError("boom"))
    batches = stream.batches()
    assert await anext(batches) == [1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        await anext(batches)


async def test_a_reader_leaving_early_tells_the_worker_to_stop() -> None:
    stream: ThreadStream[int] = ThreadStream(asyncio.get_running_loop())
    stopped = threading.Event()

    def work() -> None:
        i = 0
        while not stream.push(i):
            i += 1
        stopped.set()

    run_worker(stream, work, lambda fn: _start(fn))
    items = stream.items()
    await anext(items)
    await items.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(stopped.wait, 30)
    assert stream.cancelled.is_set()


async def test_streams_sharing_a_waker_wake_the_loop_once_for_a_burst() -> None:
    """16 streams whose readers wait, each pushed an item by its own thread while the loop is busy (as
    llama.cpp's slots all produce a token in the same decode step): one wake-up releases all 16."""
    loop = asyncio.get_running_loop()
    waker = LoopWaker(loop)
    streams: list[ThreadStream[int]] = [ThreadStream(loop, waker=waker) for _ in range(16)]
    batches = [s.batches() for s in streams]
    reads = [asyncio.ensure_future(anext(b)) for b in batches]
    await asyncio.sleep(0)  # every reader is now waiting on its stream
    with wakeups(loop) as woken:
        threads = [_start(lambda i=i: streams[i].push(i)) for i in range(16)]  # the loop is busy: this task
        for thread in threads:
            thread.join()
        assert [await r for r in reads] == [[i] for i in range(16)]
    assert len(woken) == 1
    for stream, batch in zip(streams, batches, strict=True):  # and it goes on working: one item each again
        threading.Thread(target=lambda s=stream: (s.push(99), s.finish())).start()
        assert [b async for b in batch] == [[99]]


def test_a_waker_is_kept_for_its_loop_and_replaced_for_another() -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        waker = LoopWaker.on(None, first)
        assert LoopWaker.on(waker, first) is waker
        assert LoopWaker.on(waker, second).loop is second
    finally:
        first.close()
        second.close()
