"""Shared by the IBKR tests: the TWS face in a thread on a pinned clock, and async waiting."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from crashkit import ManualClock, last_session
from harness import REPO, poll, start_args
from steadyhand.config import Settings, SimSettings
from steadyhand.runtime import procs
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


@contextmanager
def tws_process(data_dir: Path, speed: str) -> Iterator[dict[str, Any]]:
    """The TWS face as its own process on ``data_dir`` (the "Gateway" that outlives the bot), at the
    bot's ``speed`` (one clock anchored in exchange.db); stopped and proven gone."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / "face.toml"
    config.write_text(f"[sim]\nspeed = {speed}\n")
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand.sim.server.tws", "--port", "0",
                             "--data-dir", str(data_dir), "--config", str(config), *start_args()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    info_file = data_dir / "tws.json"
    try:
        poll(lambda: info_file.exists() or proc.poll() is not None, timeout=30, what="the TWS face to serve")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield json.loads(info_file.read_text())
    finally:
        port = json.loads(info_file.read_text())["port"] if info_file.exists() else None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert port is None or not procs.port_listening(port)


def ibkr_config(port: int, client_id: int = 21, extra: str = "") -> str:
    return f'broker = "ibkr"\n{extra}\n[ibkr]\nport = {port}\nclient_id = {client_id}\ntimeout_s = 4.0\n'


class IbkrPrep:
    """What a bot trading through IBKR and killed mid-flight leaves behind, made through the TWS face
    (in this process, on a manual clock) with the bot's own client id and data dir (its ``ibkr.db``),
    plus the journal rows: :class:`crashkit.Prep` for ``broker = "ibkr"``."""

    def __init__(self, data_dir: Path, at: Any, client_id: int = 21) -> None:
        from crashkit import Prep
        from steadyhand.brokers.ibkr.broker import IbkrBroker
        from steadyhand.config import IbkrSettings

        self.book = Prep(data_dir, at)  # journal helpers, and the book for orders "of another client"
        self.clock = self.book.clock
        self._face = tws_face(data_dir, self.clock)
        thread = self._face.__enter__()
        self.broker = IbkrBroker(IbkrSettings(port=thread.server.port, client_id=client_id, timeout_s=5.0),
                                 data_dir=data_dir, clock=self.clock)

    def at(self, t: Any) -> IbkrPrep:
        self.book.at(t)
        return self

    def order(self, cid: str, symbol: str, *, journal: str = "acked", **kw: Any) -> Any:
        """As :meth:`crashkit.Prep.order`; "none" places it as another client would (order id 0)."""
        from crashkit import FAR
        from steadyhand.domain import OrderSpec, OrderType, Side, TimeInForce

        limit = kw.get("limit", FAR)
        spec = OrderSpec(cid, symbol, kw.get("side", Side.BUY), kw.get("qty", 1),
                         type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                         time_in_force=kw.get("tif", TimeInForce.GTC), limit_price=limit)
        if journal == "none":
            return self.book.ex.submit(spec)
        self.book.journal(spec)
        if journal == "only":
            return None
        order = self.broker.submit(spec)
        if journal == "acked":
            self.book.ack(order)
        return order

    def close(self, anchor_at: Any, speed: float) -> None:
        self.broker.close()
        self._face.__exit__(None, None, None)
        self.book.anchor(anchor_at, speed)
        self.book.close()
