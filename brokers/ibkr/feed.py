"""Bars from TWS / IB Gateway for the feed actor (``broker = "ibkr"``).

The feed runs in its own process, so it has its own API connection, with client id
``[ibkr] client_id + 1`` (the OMS has ``client_id``). Per symbol:

- ``bar_size = "1 min"``: ``reqHistoricalData(..., keepUpToDate=True)``. The last bar of that list
  is the one still forming; when an update starts a new bar (``hasNewBar``) the one before it is
  finished, and that is the bar the feed gets.
- ``bar_size = "5 secs"``: ``reqRealTimeBars`` (each 5-second bar arrives finished).

After a reconnect (and on 1101, "data lost") every subscription is made again; the history it
brings is the backfill: finished bars newer than the last one delivered are delivered too, so a
gap in the connection is not a gap in the bars. ``[ibkr] market_data_type`` is sent first (3:
delayed data for an account without a subscription). The feed's bar validation applies as always.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ib_async import IB
from steadyhand.brokers.ibkr import wire
from steadyhand.brokers.ibkr.broker import RECONNECT_MAX_S
from steadyhand.brokers.ibkr.loop import IbLoop
from steadyhand.config import IbkrSettings, Settings
from steadyhand.domain import Bar
from steadyhand.runtime.logs import module_logger

log = module_logger("steadyhand.brokers.ibkr.feed")
MAX_BUFFER = 10_000
WARM_DURATION = "7200 S"  # history brought by each subscription (covers a reconnect gap of ~2 h)


def _bar(symbol: str, b: Any) -> Bar:
    ts = getattr(b, "date", None) or b.time  # BarData has a date; a RealTimeBar its time
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    first = b.open_ if hasattr(b, "open_") else b.open  # RealTimeBar spells it open_
    return Bar(symbol, ts.astimezone(UTC), float(first), float(b.high), float(b.low), float(b.close),
               int(b.volume))


class IbkrBarSource:
    """The feed actor's ``live_source`` on IB (``start`` / ``drain`` / ``history`` / ``close``)."""

    def __init__(self, settings: IbkrSettings, symbols: Sequence[str], *, client_id: int | None = None,
                 reconnect_min_s: float = 1.0) -> None:
        self.settings = settings
        self.symbols = tuple(symbols)
        self.client_id = settings.client_id + 1 if client_id is None else client_id
        self.reconnect_min_s = reconnect_min_s
        self._bars: deque[Bar] = deque(maxlen=MAX_BUFFER)
        self._last: dict[str, datetime] = {}  # symbol -> start of the last bar delivered
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closing = False
        self._resubscribe = False
        self.loop: IbLoop | None = None
        self.ib: IB | None = None
        self._subs: list[Any] = []  # this connection's bar subscriptions (cancelled before new ones)

    @classmethod
    def from_settings(cls, settings: Settings) -> IbkrBarSource:
        return cls(settings.ibkr, settings.symbols)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self.loop = IbLoop("ibkr-feed")
        self.ib = self.loop.run(self._make_ib, 10)
        self.loop.call_soon(lambda: asyncio.ensure_future(self._supervise()))

    async def _make_ib(self) -> IB:
        ib = IB()
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._connected.clear
        return ib

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        if code == 1101:  # restored, but market data subscriptions are gone
            self._resubscribe = True
        elif code in wire.PACING_CODES or code == 326:
            log.warning("ibkr feed: %s %s", code, message)

    async def _supervise(self) -> None:
        assert self.ib is not None
        delay = self.reconnect_min_s
        while not self._closing:
            if self.ib.isConnected() and not self._resubscribe:
                await asyncio.sleep(0.1)
                continue
            try:
                if not self.ib.isConnected():
                    self._subs.clear()  # gone with the connection
                    self.ib.wrapper.reset()
                    s = self.settings
                    await self.ib.connectAsync(s.host, s.port, clientId=self.client_id, timeout=s.timeout_s,
                                               readonly=True, account=s.account)
                    self.ib.reqMarketDataType(s.market_data_type)
                self._resubscribe = False
                await self._subscribe()
                self._connected.set()
                delay = self.reconnect_min_s
            except Exception as exc:  # noqa: BLE001 - retried with backoff
                log.warning("ibkr feed: not connected (%r); retrying in %.1f s", exc, delay)
                self.ib.disconnect()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def _subscribe(self) -> None:
        assert self.ib is not None
        for old in self._subs:  # 1101: the Gateway dropped them; say so before asking again
            if hasattr(old, "barSize"):
                self.ib.cancelRealTimeBars(old)
            else:
                self.ib.cancelHistoricalData(old)
        self._subs.clear()
        for symbol in self.symbols:
            contract = wire.contract(symbol)
            if self.settings.bar_size == "5 secs":
                rt = self.ib.reqRealTimeBars(contract, 5, "TRADES", True)
                self._subs.append(rt)
                rt.updateEvent += lambda bars, new, s=symbol: self._take(s, [bars[-1]]) if new else None
                continue
            bars = await self.ib.reqHistoricalDataAsync(contract, "", WARM_DURATION, "1 min", "TRADES", True,
                                                        formatDate=2, keepUpToDate=True,
                                                        timeout=self.settings.timeout_s * 4)
            self._subs.append(bars)
            finished = list(bars)[:-1]  # the last one is still forming
            if symbol in self._last:  # a reconnect: the gap is backfilled
                self._take(symbol, finished)
            elif finished:
                self._last[symbol] = _bar(symbol, finished[-1]).ts  # history is asked for separately
            bars.updateEvent += lambda b, new, s=symbol: self._take(s, [b[-2]]) if new and len(b) > 1 else None

    def _take(self, symbol: str, items: list[Any]) -> None:
        with self._lock:
            for item in items:
                bar = _bar(symbol, item)
                if bar.ts > self._last.get(symbol, datetime.min.replace(tzinfo=UTC)):
                    self._last[symbol] = bar.ts
                    self._bars.append(bar)

    def drain(self) -> list[Bar]:
        with self._lock:
            out = list(self._bars)
            self._bars.clear()
        return out

    def history(self, symbols: Sequence[str], end: datetime, count: int) -> list[Bar]:
        """The last ``count`` finished 1-minute bars per symbol before ``end``."""
        assert self.loop is not None and self.ib is not None
        ib = self.ib

        async def fetch() -> list[Bar]:
            out: list[Bar] = []
            for symbol in symbols:
                got = await ib.reqHistoricalDataAsync(wire.contract(symbol), end, f"{max(count, 1) * 60} S",
                                                      "1 min", "TRADES", True, formatDate=2,
                                                      timeout=self.settings.timeout_s * 4)
                bars = [_bar(symbol, b) for b in got]
                out += [b for b in bars if b.ts + timedelta(minutes=1) <= end][-count:]
            return out

        if not self._connected.wait(self.settings.timeout_s * 2):
            raise ConnectionError("ibkr feed: not connected")
        return self.loop.run(fetch, self.settings.timeout_s * 4 * max(1, len(symbols)))

    def close(self) -> None:
        self._closing = True
        if self.loop is not None and self.ib is not None:
            ib = self.ib

            async def bye() -> None:
                ib.disconnect()

            try:
                self.loop.run(bye, 5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.loop.stop()
