"""The server's housekeeping loop (uvicorn's main_loop) ticks every TICK_S instead of every 0.1 s, keeps
uvicorn's once-a-second work (on_tick's counter in tenths: the Date header) on whole seconds, and wakes at
once when the server is to exit rather than at its next tick."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from fastapi import FastAPI

from llmops import server as server_module
from llmops.server import DrainingServer


def _server(ticks: list[int], ticked: asyncio.Event) -> DrainingServer:
    app = FastAPI()
    srv = DrainingServer(uvicorn.Config(app), app)

    async def on_tick(counter: int) -> bool:
        ticks.append(counter)
        ticked.set()
        return srv.should_exit

    srv.on_tick = on_tick  # type: ignore[method-assign]
    return srv


def test_the_counter_still_reaches_each_whole_second() -> None:
    """on_tick refreshes the Date header when its counter (tenths of a second) divides by 10: each tick
    adds TICK_S in tenths, which must divide a second for every second to be reached."""
    step = round(server_module.TICK_S * server_module.TICKS_PER_UVICORN_SECOND)
    assert step >= 1
    assert server_module.TICKS_PER_UVICORN_SECOND % step == 0
    assert step / server_module.TICKS_PER_UVICORN_SECOND == pytest.approx(server_module.TICK_S)


def test_an_exit_wakes_the_loop_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "TICK_S", 3600.0)  # the next tick would be an hour away
    ticks: list[int] = []

    async def run() -> None:
        ticked = asyncio.Event()
        srv = _server(ticks, ticked)
        task = asyncio.create_task(srv.main_loop())
        await asyncio.wait_for(ticked.wait(), 30)
        srv._exit()
        await asyncio.wait_for(task, 30)  # fails (TimeoutError) if only the hour's tick could end it

    asyncio.run(run())
    assert len(ticks) == 2  # the first tick, then the one the exit woke
