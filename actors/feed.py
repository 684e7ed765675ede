"""Feed: market data in, one ``Bars`` batch per tick out; bad bars never get past it.

On the sim, bars come from the market model (synthetic or replay) as simulated time crosses each
minute boundary; the tick is scheduled on the absolute wall-clock time at which that boundary
arrives (``SimClock.real_at``), so it does not drift. Rejected bars are journaled in ``bad_bars``
with their reason and counted; the counts and the last good bar time ride on heartbeat pongs.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import Bars, HistoryReply, HistoryRequest
from steadyhand.brokers import broker_entry
from steadyhand.data.bar_checks import BarValidator
from steadyhand.domain import Bar, market_hours
from steadyhand.sim.lockstep import LockstepFeed, is_lockstep
from steadyhand.sim.market import MarketModel, load_market
from steadyhand.sim.replay import ReplayMarket
from steadyhand.state import retention, runs, store
from steadyhand.strategies.specs import strategy_peers
from thespian.actors import ActorAddress

MINUTE = timedelta(minutes=1)
MAX_CATCH_UP_TICKS = 5  # after a long pause, send only the most recent bars (history covers the rest)
IDLE_RECHECK_S = 30.0  # wall seconds between looks at the clock while the market is closed
STREAM_DRAIN_S = 0.25  # wall seconds between looks at a broker's bar stream


def floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


class FeedActor(LockstepFeed, SteadyActor):
    def setup(self) -> None:
        settings = self.run.settings
        self.clock = self.run.clock
        self.market: MarketModel = load_market(settings.sim, settings.symbols)
        self.symbols = tuple(settings.symbols)
        self.live_source: Any = None  # a broker's bar stream (Alpaca, IBKR); None: the simulated market
        feed_source = broker_entry(settings.broker).feed_source
        if feed_source is not None:
            self.live_source = feed_source(settings)
            self.live_source.start()
        self.validator = BarValidator(self.symbols)
        self.db = store.connect(self.run.db_path, synchronous="NORMAL")
        self.run_id = runs.current_run_id(self.db)  # the supervisor opened this run's row before us
        self.next_minute: datetime | None = None  # start of the next bar to emit
        self.last_bar_at: datetime | None = None  # sim time the last good bar closed
        # A replay is read by row index (file order) straight from the market's columns: no Bar per row held.
        self.replay: ReplayMarket | None = self.market if isinstance(self.market, ReplayMarket) else None
        self.replay_index = 0
        self.handlers = {HistoryRequest: self.on_history}
        self.timers = {"tick": self.tick, "drain": self.drain}
        self.lockstep = self.replay is not None and is_lockstep(self.clock)  # bar by bar, sim/lockstep.py
        if self.lockstep:
            self.lockstep_setup()

    def on_first_wiring(self) -> None:
        days, bar_days = self.run.settings.retention.bad_bars_days, self.run.settings.retention.bars_days
        self.start_retention({"bad_bars": lambda now: retention.prune_bad_bars(self.db.conn, now, days),
                              "bars": lambda now: retention.prune_bars(self.db.conn, now, bar_days)})
        if self.live_source is not None:
            self.every("drain", STREAM_DRAIN_S)
            return
        if self.lockstep:
            self.lockstep_begin()
            return
        now = self.clock.now()
        self.next_minute = floor_minute(now)  # bars before now are history, asked for separately
        if self.replay is not None:
            self.replay_index = self.replay.first_closing_after(now)
        self.tick()

    # --- a broker's stream ---------------------------------------------------------------------

    def drain(self) -> None:
        """Bars the stream delivered since the last look, one batch per bar time."""
        by_minute: dict[datetime, list[Bar]] = {}
        for bar in self.live_source.drain():
            by_minute.setdefault(bar.ts, []).append(bar)
        for minute in sorted(by_minute):
            self._publish(minute, by_minute[minute])

    def on_peers_changed(self, names: set[str]) -> None:
        if self.lockstep:
            self.lockstep_peers_changed(names)

    def on_stop(self) -> None:
        if self.live_source is not None:
            self.live_source.close()

    # --- ticks ------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock.now()
        if self.replay is not None:
            self._tick_replay(self.replay, now)
        else:
            self._tick_synthetic(now)

    def _tick_synthetic(self, now: datetime) -> None:
        assert self.next_minute is not None
        minutes = []
        m = self.next_minute
        while m + MINUTE <= now:  # every bar that has closed by now
            minutes.append(m)
            m += MINUTE
        if len(minutes) > MAX_CATCH_UP_TICKS:
            minutes = minutes[-MAX_CATCH_UP_TICKS:]
        for minute in minutes:
            bars = [b for b in (self.market.bar(s, minute) for s in self.symbols) if b is not None]
            if bars:
                self._publish(minute, bars)
        if minutes:
            self.next_minute = minutes[-1] + MINUTE
        self._schedule_next(now)

    def _tick_replay(self, replay: ReplayMarket, now: datetime) -> None:
        stop = replay.first_closing_after(now, self.replay_index)  # rows before it have closed by now
        batch: list[Bar] = []
        batch_ts: datetime | None = None
        for bar in replay.bars(self.replay_index, stop):  # one batch per run of rows sharing a ts
            if batch_ts is not None and bar.ts != batch_ts:
                self._publish(batch_ts, batch)
                batch = []
            batch_ts = bar.ts
            batch.append(bar)
        self.replay_index = stop
        if batch and batch_ts is not None:
            self._publish(batch_ts, batch)
        if self.replay_index >= len(replay):
            return  # replay finished: nothing more will come
        next_close = replay.ts_at(self.replay_index) + MINUTE
        self.after(max(0.0, self.clock.real_at(next_close) - time.time()), "tick")

    def _schedule_next(self, now: datetime) -> None:
        assert self.next_minute is not None
        boundary = self.next_minute + MINUTE
        if not market_hours.is_open(self.next_minute):
            # Closed: jump to the next open, but look again now and then (the clock may be re-anchored).
            opens = market_hours.next_open(now)
            self.next_minute = max(self.next_minute, opens)
            boundary = self.next_minute + MINUTE
            wait = min(self.clock.real_at(boundary) - time.time(), IDLE_RECHECK_S)
        else:
            wait = self.clock.real_at(boundary) - time.time()
        self.after(max(0.0, wait), "tick")

    def _publish(self, minute: datetime, bars: list[Bar]) -> None:
        good, rejected = self.validator.validate(bars)
        if rejected:
            self._journal_rejected(rejected)
        if not good:
            return
        batch = Bars(ts=minute, bars=tuple(good))
        self.last_bar_at = minute + MINUTE
        for peer in (*strategy_peers(self.peers), "risk", "portfolio"):  # every strategy ([[strategies]])
            self.tell_peer(peer, batch)
        self._journal_bars(good, "live")  # after sending: the bar's way to an order does not wait for it

    def _journal_bars(self, bars: list[Bar], kind: str) -> None:
        """The bars this run acted on (``bars``; the parity report backtests them). One commit per
        batch on the NORMAL connection; a bar already journaled for this run is kept as it was."""
        if self.run_id is None or not bars:
            return
        sent_at = store.now_iso()
        with store.transaction(self.db):
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO bars (run_id, symbol, ts, open, high, low, close, volume, kind, sent_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.run_id, b.symbol, store.iso(b.ts), b.open, b.high, b.low, b.close, b.volume, kind, sent_at)
                 for b in bars])

    def _journal_rejected(self, rejected: list[tuple[Bar, str]]) -> None:
        clock_ts = store.iso(self.clock.now())  # the run clock's: what retention ages the rows by
        with store.transaction(self.db):
            self.db["bad_bars"].insert_all(
                {"recorded_at": store.now_iso(), "clock_ts": clock_ts, "symbol": bar.symbol,
                 "bar_ts": store.iso(bar.ts), "reason": reason, "raw": _raw(bar)}
                for bar, reason in rejected
            )
        for bar, reason in rejected:
            self.event("bar_rejected", level="warning", symbol=bar.symbol, bar_ts=bar.ts, reason=reason)

    # --- history ----------------------------------------------------------------------------

    def on_history(self, message: HistoryRequest, sender: ActorAddress) -> None:
        end = self.next_minute or floor_minute(self.clock.now())
        if self.live_source is not None:
            try:
                bars = self.live_source.history(self.symbols, end, message.count)
            except Exception as exc:  # e.g. 429: no warm-up this time, but no crash loop either
                self.event("history_failed", level="warning", error=repr(exc))
                bars = []  # the strategy's windows fill from live bars instead
        elif self.replay is not None:
            past = self.replay.bars_before(self.replay_index, end)
            validator = BarValidator(self.symbols)
            good, _ = validator.validate(past)
            per_symbol: dict[str, list[Bar]] = {}
            for bar in good:
                per_symbol.setdefault(bar.symbol, []).append(bar)
            bars = [b for s in per_symbol.values() for b in s[-message.count:]]
        else:
            bars = [b for s in self.symbols for b in self.market.history(s, end, message.count)]
        bars.sort(key=lambda b: b.ts)
        for bar in bars:  # later live bars must be newer than the history
            self.validator.seed(bar.symbol, bar.ts)
        self.send(sender, HistoryReply(tuple(bars)))
        self._journal_bars(bars, "history")  # the strategy's warm-up: the backtest needs it too

    def pong_info(self) -> dict[str, Any]:
        return {"last_bar_at": self.last_bar_at, "bad_bars": dict(self.validator.counts),
                "replay_done": self.replay is not None and self.replay_index >= len(self.replay)}


def _raw(bar: Bar) -> str:
    def num(x: float) -> Any:
        return x if isinstance(x, float) and math.isfinite(x) else str(x)

    return store.to_json({"open": num(bar.open), "high": num(bar.high), "low": num(bar.low),
                          "close": num(bar.close), "volume": bar.volume})
