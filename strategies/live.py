"""The live side of the plug-in API: trailing windows, the newest target per symbol, order intents.

:class:`LiveStrategy` is the strategy actor's state (``actors/strategy.py`` is a thin shell over
it). Per symbol it keeps the last ``warmup`` bars (numpy arrays, shifted in place as SMA's wrapper
does); on each tick it builds the long ``bars`` frame of those windows, calls the strategy's
``latest`` (``targets`` unless it has a fast path) and acts on the rows of the symbols that got a
bar this tick:

- the order is ``target - (position + pending)``: pending is what the OMS reports still working
  (``OpenOrders``, forwarded by risk) plus what this actor sent since that report, so a target
  repeated on every bar does not order twice;
- a limit/stop target while the strategy's own order for that symbol is working amends it
  (``ReplaceOrder``) or, when nothing more is wanted, cancels it (``CancelOrder``);
- a target that is not a whole, finite number is still sent as an intent, so risk refuses it and
  journals why (``risk.checks.signal_problem``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pandas as pd
from steadyhand.domain import Bar, OrderType, Side, Signal, TimeInForce
from steadyhand.strategies.base import Strategy, check_targets
from steadyhand.strategies.sma import SmaCross, intent_id

_NS = 1_000_000_000


@dataclass(frozen=True)
class Amend:
    """Replace (``qty > 0``: the new total, filled part included) or cancel (``qty == 0``) the
    strategy's working order ``client_order_id``."""

    client_order_id: str
    qty: int
    limit_price: float | None
    stop_price: float | None
    reason: str


class Row(NamedTuple):
    """One target row of the strategy's result (after ``check_targets``)."""

    target: float
    order_type: str
    limit_price: float
    stop_price: float
    time_in_force: str
    reason: str


@dataclass
class TickResult:
    signals: list[Signal] = field(default_factory=list)
    amends: list[Amend] = field(default_factory=list)


class LiveStrategy:
    """A loaded Strategy fed one tick at a time (see the module docstring)."""

    def __init__(self, strategy: Strategy, symbols: Sequence[str], name: str = "") -> None:
        self.strategy = strategy
        self.name = name or strategy.strategy_id()  # [[strategies]] name: its order ids' prefix
        self.symbols: tuple[str, ...] = tuple(sorted(dict.fromkeys(symbols)))  # sorted: frames sort by symbol
        for symbol in self.symbols:  # fail at start, not on the first intent
            intent_id(self.name, symbol, datetime(2000, 1, 1, tzinfo=UTC), Side.BUY)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.window = max(int(strategy.warmup), 1)
        shape = (len(self.symbols), self.window)
        self._values = np.full((5, *shape), np.nan)  # open, high, low, close, volume
        self._ts = np.zeros(shape, dtype=np.int64)
        self._count = np.zeros(len(self.symbols), dtype=np.int64)
        self._last_ns = np.full(len(self.symbols), np.iinfo(np.int64).min)
        self.pending: dict[str, int] = {}  # the OMS's last OpenOrders report (signed qty still to fill)
        self.sent: dict[str, int] = {}  # signed qty sent since that report
        self.working: dict[str, Signal] = {}  # the strategy's own limit/stop order per symbol
        self.cancelling: set[str] = set()  # cancel sent: no new order until the OMS reports none pending
        self.ignored_unknown = 0
        self.ignored_old = 0
        self._sma = _shipped_sma(strategy, self.window)  # its rows straight from the arrays, when set

    # -- feeding -------------------------------------------------------------------------------

    def warm_up(self, bars: Iterable[Bar]) -> None:
        """Fill the windows from history (any order); emits nothing."""
        self._append_all(sorted(bars, key=lambda b: b.ts))

    def on_open_orders(self, pending: Mapping[str, int]) -> None:
        """The OMS's view of what still works; an order of ours no longer pending has ended."""
        self.pending = {s: q for s, q in pending.items() if q}
        self.sent = {}
        for symbol in [s for s in self.working if not self.pending.get(s)]:
            del self.working[symbol]
        self.cancelling = {s for s in self.cancelling if self.pending.get(s)}

    def on_positions_moved(self, symbols: Iterable[str]) -> None:
        """Positions that moved have taken fills: what was pending or sent for them is stale until the
        OMS's next report (which may still be on its way through risk), so it no longer counts."""
        for symbol in symbols:
            self.pending.pop(symbol, None)
            self.sent.pop(symbol, None)

    def on_bars(self, bars: Sequence[Bar], positions: Mapping[str, int]) -> TickResult:
        """Intents for this tick's bars (the newest target of each symbol that got a bar)."""
        fresh = self._append_all(bars)
        result = TickResult()
        if not fresh:
            return result
        if self._sma is not None:
            self._sma_tick(self._sma, fresh, positions, result)
            return result
        rows = check_targets(self.strategy.latest(self.frame()), self.name)
        # Only rows with an opinion, at a bar of this tick; the last row of a symbol wins.
        rows = rows[rows["target"].notna().to_numpy()]
        # Plain Python rows (a pandas row lookup per symbol costs more than the strategy).
        cols = [rows[c].tolist() for c in ("target", "order_type", "limit_price", "stop_price", "time_in_force",
                                           "reason")]
        at = {symbol: (ns, row) for symbol, ns, *row in zip(rows["symbol"].tolist(), rows["ts"].array.asi8.tolist(),
                                                            *cols, strict=True)}
        for bar in fresh:
            hit = at.get(bar.symbol)
            if hit is None or hit[0] != _ns(bar.ts):
                continue
            self._act(bar, Row(*hit[1]), int(positions.get(bar.symbol, 0)), result)
        return result

    def _sma_tick(self, sma: SmaCross, fresh: list[Bar], positions: Mapping[str, int], result: TickResult) -> None:
        """The shipped SMA's rows read off the windows (what ``latest(frame())`` gives, without the
        frame or ``check_targets``: a pandas frame per tick cost more than the rest of the tick)."""
        sig = sma.window_signals(self._values[3])  # [3]: the closes
        for bar in fresh:
            if s := int(sig[self._index[bar.symbol]]):
                target, reason = sma.cross_target(s > 0)
                row = Row(target, "market", math.nan, math.nan, "day", reason)
                self._act(bar, row, int(positions.get(bar.symbol, 0)), result)

    # -- deciding ------------------------------------------------------------------------------

    def _act(self, bar: Bar, row: Row, position: int, result: TickResult) -> None:
        symbol, target = bar.symbol, float(row.target)
        kind = OrderType(row.order_type)
        limit = None if math.isnan(row.limit_price) else float(row.limit_price)
        stop = None if math.isnan(row.stop_price) else float(row.stop_price)
        reason = row.reason or f"{self.name} target {target:g}"
        working = self.working.get(symbol)
        if working is not None:  # our resting order: amend or cancel it rather than add another
            want = target - position
            if want == 0 or (want > 0) != (working.side is Side.BUY) or kind is OrderType.MARKET:
                result.amends.append(Amend(working.intent_id, 0, None, None, f"{reason}: cancel"))
                del self.working[symbol]
                self.cancelling.add(symbol)
                return  # a later bar places the new order, once the OMS reports the cancel
            # ReplaceOrder's qty is the new total, what already filled included.
            filled = max(working.qty - abs(self.pending.get(symbol, working.side.sign * working.qty)), 0)
            total = filled + abs(want)
            if total != working.qty or limit != working.limit_price or stop != working.stop_price:
                amended = replace(working, qty=int(total) if total == int(total) else total, limit_price=limit,
                                  stop_price=stop)
                result.amends.append(Amend(working.intent_id, amended.qty, limit, stop, reason))
                self.working[symbol] = amended
            return
        if symbol in self.cancelling:
            return  # risk would deny a second open order for the symbol while the cancel is on its way
        delta = target - (position + self.pending.get(symbol, 0) + self.sent.get(symbol, 0))
        if delta == 0:
            return
        side = Side.BUY if delta > 0 else Side.SELL
        qty = abs(delta)
        signal = Signal(intent_id=intent_id(self.name, symbol, bar.ts, side), strategy=self.name, symbol=symbol,
                        side=side, qty=int(qty) if qty == int(qty) else qty,  # a fraction: risk refuses it
                        bar_ts=bar.ts, ref_price=float(bar.close), reason=reason, order_type=kind,
                        limit_price=limit, stop_price=stop, time_in_force=TimeInForce(row.time_in_force))
        result.signals.append(signal)
        if isinstance(signal.qty, int):
            self.sent[symbol] = self.sent.get(symbol, 0) + side.sign * signal.qty
        if kind is not OrderType.MARKET:
            self.working[symbol] = signal

    # -- windows -------------------------------------------------------------------------------

    def _append_all(self, bars: Iterable[Bar]) -> list[Bar]:
        """Shift the new bars into the windows, one vectorized shift per tick; returns the bars taken."""
        taken: list[Bar] = []
        for group in _by_ts(bars):
            ns = _ns(group[0].ts)
            rows: list[int] = []
            seen: set[int] = set()
            for bar in group:
                i = self._index.get(bar.symbol)
                if i is None:
                    self.ignored_unknown += 1
                elif ns <= self._last_ns[i] or i in seen:  # replayed history or a duplicate: count once
                    self.ignored_old += 1
                else:
                    rows.append(i)
                    seen.add(i)
                    taken.append(bar)
            if not rows:
                continue
            idx = np.asarray(rows, dtype=np.intp)
            new = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in taken[-len(rows):]],
                           dtype=np.float64).T
            self._last_ns[idx] = ns
            self._values[:, idx, :-1] = self._values[:, idx, 1:]
            self._values[:, idx, -1] = new
            self._ts[idx, :-1] = self._ts[idx, 1:]
            self._ts[idx, -1] = ns
            self._count[idx] = np.minimum(self._count[idx] + 1, self.window)
        return taken

    def frame(self) -> pd.DataFrame:
        """The windows as the long ``bars`` frame of the contract, sorted by ``ts`` then ``symbol``."""
        filled = np.arange(self.window)[None, :] >= (self.window - self._count)[:, None]
        sym, col = np.nonzero(filled)
        ts = self._ts[sym, col]
        order = np.lexsort((sym, ts))
        sym, col, ts = sym[order], col[order], ts[order]
        v = self._values[:, sym, col]
        return pd.DataFrame({"ts": pd.DatetimeIndex(ts, tz=UTC), "symbol": np.asarray(self.symbols, dtype=object)[sym],
                             "open": v[0], "high": v[1], "low": v[2], "close": v[3], "volume": v[4]})


def _ns(ts: datetime) -> int:
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    return int(pd.Timestamp(ts).value)


def _by_ts(bars: Iterable[Bar]) -> list[list[Bar]]:
    """Bars grouped by ts, ascending (one group per tick; usually exactly one)."""
    batch = list(bars)
    if not batch:
        return []
    first = batch[0].ts
    if all(bar.ts == first for bar in batch):  # the usual tick: one group
        return [batch]
    groups: dict[datetime, list[Bar]] = {}
    for bar in batch:
        groups.setdefault(bar.ts, []).append(bar)
    return [groups[ts] for ts in sorted(groups)]


def _shipped_sma(strategy: Strategy, window: int) -> SmaCross | None:
    """``strategy`` if it is the shipped SmaCross (or a subclass that changes neither ``latest`` nor
    ``targets``) with windows of exactly ``slow + 1``: the fast path's condition. Else None."""
    cls = type(strategy)
    if not isinstance(strategy, SmaCross) or cls.latest is not SmaCross.latest or cls.targets is not SmaCross.targets:
        return None
    return strategy if window == strategy.slow + 1 else None
