"""Shared by the IBKR tests: the TWS face in a thread on a pinned clock, and async waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from crashkit import ManualClock, last_session
from steadyhand import procs
from steadyhand.config import Settings, SimSettings
from steadyhand.sim.server.tws import TwsServer, TwsServerThread

T = TypeVar("T")


def session_clock(minutes_after_open: int = 60) -> ManualClock:
    """A manual clock inside a full past XNYS session (the same on any date, any time of day)."""
    opened, _ = last_session()
    return ManualClock(opened + timedelta(minutes=minutes_after_open))


def face_settings(**sim: Any) -> Settings:
    return Settings(sim=SimSettings(**{"partial_fill_probability": 0.0, "latency_ms": 20.0, **sim}))


@contextmanager
def tws_face(data_dir: Path, clock: Any, *, version: int = 178, settings: Settings | None = None,
             accounts: tuple[str, ...] = ("DU1234567",)) -> Iterator[TwsServerThread]:
    """The TWS face on 127.0.0.1 (port 0); proven closed afterwards."""
    server = TwsServer(data_dir, settings or face_settings(), clock=clock, server_version=version,
                       accounts=accounts)
    thread = TwsServerThread(server).start()
    try:
        yield thread
    finally:
        port = server.port
        thread.stop()
        assert not procs.port_listening(port)


async def until(predicate: Callable[[], T], timeout_s: float = 10.0, what: str = "condition") -> T:
    """Await ``predicate()`` being truthy (the ib_async loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
