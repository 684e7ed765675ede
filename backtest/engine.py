"""The backtest: a Strategy's ``targets`` over a whole replay, called once, with a simple book.

``targets`` is called ONCE on the whole history (no look-ahead by construction of the calls: a
target after bar k is acted on from bar k+1, of that symbol's own series). The order for a target is
``target - position``; the fill model is deliberately simple, all or nothing, no slippage:

- market: the next bar's open;
- limit (buy at L): the first bar with ``low <= L``, at ``min(open, L)`` (sell: ``high >= L``, at
  ``max(open, L)``);
- stop (buy at S): the first bar with ``high >= S``, at ``max(open, S)`` (sell: ``low <= S``, at
  ``min(open, S)``);
- stop_limit: a stop that, once touched, works as a limit from that bar on;
- an order works until it fills, or until the symbol's next non-NaN target replaces it (the amend:
  new quantity and prices), or, for ``time_in_force = "day"``, until the UTC day of its first bar ends.

Market-only strategies (SMA) take a vectorized path: every order fills at the next open, so the
position before a target is the previous target. Targets that are not whole numbers are refused,
as risk refuses them live (``BacktestResult.refused``).
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from steadyhand.config import StrategySettings
from steadyhand.domain import OrderType, Side, Signal, TimeInForce
from steadyhand.strategies.base import BAR_COLUMNS, Strategy, check_targets
from steadyhand.strategies.sma import intent_id


@dataclass(frozen=True)
class Trade:
    ts: datetime  # fill time: the start of the bar it filled in
    symbol: str
    side: Side
    qty: int
    price: float
    intent_id: str


@dataclass(frozen=True)
class BacktestResult:
    trades: tuple[Trade, ...]
    final_positions: dict[str, int]
    realized_pnl: float
    bars: int
    signals: tuple[Signal, ...] = ()  # every intent, filled or not (last bar's have no fill)
    final_cash: float = 0.0
    final_equity: float = 0.0  # cash + positions at each symbol's last close
    refused: tuple[tuple[str, str, str], ...] = ()  # (symbol, bar ts, why): targets no order can carry
    strategy: str = ""

    def trades_frame(self) -> pd.DataFrame:
        columns = ["ts", "symbol", "side", "qty", "price", "intent_id"]
        rows = [(t.ts, t.symbol, str(t.side), t.qty, t.price, t.intent_id) for t in self.trades]
        return pd.DataFrame(rows, columns=columns)


def backtest(bars: pd.DataFrame, settings: StrategySettings, start_cash: float = 100_000.0) -> BacktestResult:
    """The shipped SMA crossover with ``[strategy]``'s old keys (kept for callers of the old API)."""
    from steadyhand.strategies.sma import SmaCross

    strategy = SmaCross(settings.fast, settings.slow, settings.qty, settings.allow_short)
    return run_backtest(bars, strategy, start_cash)


def prepare_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Long bars sorted by ``ts`` then ``symbol``; a bar not newer than its symbol's last is dropped."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {', '.join(missing)}")
    df = bars.loc[:, list(BAR_COLUMNS)].copy()
    df["ts"] = pd.to_datetime(df["ts"], utc=True).dt.as_unit("ns")  # one unit: ts_ns below counts ns
    # Sorting on integer codes, not on the strings: a year of minute bars is millions of rows.
    codes, _ = pd.factorize(df["symbol"].to_numpy(dtype=object), sort=True)
    ns = df["ts"].array.asi8
    by_symbol = np.lexsort((ns, codes))  # stable: file order among equal (symbol, ts)
    c, t = codes[by_symbol], ns[by_symbol]
    # Same rule as the live feed: a bar not newer than its symbol's previous one is ignored.
    first = np.r_[True, (c[1:] != c[:-1]) | (t[1:] != t[:-1])]
    kept = by_symbol[first]
    order = kept[np.lexsort((codes[kept], ns[kept]))]
    return df.iloc[order].reset_index(drop=True)


def _attach(df: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """The bars with the target columns of their (ts, symbol) row; NaN where the strategy gave none."""
    extra = [c for c in targets.columns if c not in BAR_COLUMNS]
    aligned = (len(targets) == len(df) and np.array_equal(targets["ts"].array.asi8, df["ts"].array.asi8)
               and np.array_equal(targets["symbol"].to_numpy(dtype=object), df["symbol"].to_numpy(dtype=object)))
    if aligned:  # the usual case: one row per bar, in the bars' order (no join of millions of rows)
        merged = df.copy()
        for column in extra:
            merged[column] = targets[column].to_numpy()
        return merged
    targets = targets.dropna(subset=["target"]).drop_duplicates(["symbol", "ts"], keep="last")
    return df.merge(targets.loc[:, ["ts", "symbol", *extra]], on=["ts", "symbol"], how="left", sort=False)


def run_backtest(bars: pd.DataFrame, strategy: Strategy, start_cash: float = 100_000.0) -> BacktestResult:
    """Run ``strategy`` over long-format bars (see the module docstring for the fill model)."""
    name = strategy.strategy_id()
    df = prepare_bars(bars)
    merged = _attach(df, check_targets(strategy.targets(df.copy()), name))
    codes, _ = pd.factorize(merged["symbol"].to_numpy(dtype=object), sort=True)
    merged = merged.iloc[np.lexsort((merged["ts"].array.asi8, codes))].reset_index(drop=True)  # by symbol, then ts
    fills: list[tuple[datetime, str, int, float]] = []  # (signal bar ts, symbol, signed qty, price)
    signals: list[Signal] = []
    trades: list[Trade] = []
    refused: list[tuple[str, str, str]] = []
    last_close: dict[str, float] = {}
    ts_ns = merged["ts"].array.asi8  # int64 ns UTC: datetimes are made only for the rows used
    bounds = np.flatnonzero(np.r_[True, merged["symbol"].to_numpy()[1:] != merged["symbol"].to_numpy()[:-1], True])
    with _no_gc():
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            series = merged.iloc[lo:hi]
            symbol = str(series["symbol"].iat[0])
            last_close[symbol] = float(series["close"].iat[-1])
            _run_symbol(name, symbol, series, ts_ns[lo:hi], fills, signals, trades, refused)
    # The book applies fills in time order across symbols: the same float sums whatever the layout.
    book = _Book(start_cash)
    for _, symbol, qty, price in sorted(fills, key=lambda f: (f[0], f[1])):
        book.fill(symbol, qty, price)
    signals.sort(key=lambda s: (s.bar_ts, s.symbol))
    trades.sort(key=lambda t: (t.ts, t.symbol))
    equity = book.cash + sum(q * last_close[s] for s, q in book.positions.items())
    return BacktestResult(
        trades=tuple(trades), final_positions={s: q for s, q in book.positions.items() if q},
        realized_pnl=book.realized, bars=len(df), signals=tuple(signals), final_cash=book.cash,
        final_equity=equity, refused=tuple(refused), strategy=name)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The per-order loop makes millions of small acyclic objects (signals, trades): the cyclic
    collector's passes over them cost ~30 % of a resting-order backtest and free nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Stamps:
    """A symbol's bar times (int64 ns UTC) as aware datetimes, converted on first use only."""

    def __init__(self, ns: np.ndarray) -> None:
        self.ns = ns
        self._cache: dict[int, datetime] = {}

    def __getitem__(self, i: int) -> datetime:
        got = self._cache.get(i)
        if got is None:
            got = self._cache[i] = pd.Timestamp(int(self.ns[i]), tz=UTC).to_pydatetime()
        return got

    def __len__(self) -> int:
        return len(self.ns)


def _run_symbol(name: str, symbol: str, series: pd.DataFrame, ts_ns: np.ndarray, fills: list, signals: list[Signal],
                trades: list[Trade], refused: list[tuple[str, str, str]]) -> None:
    """One symbol's targets, in time order, through its own bars."""
    target = series["target"].to_numpy(dtype=np.float64)
    events = np.flatnonzero(~np.isnan(target))
    if events.size == 0:
        return
    whole = np.isfinite(target[events]) & (target[events] == np.round(target[events]))
    stamps = _Stamps(ts_ns)
    for e in events[~whole]:
        refused.append((symbol, stamps[e].isoformat(), f"target {target[e]!r} is not a whole number of shares"))
    events = events[whole]
    if events.size == 0:
        return
    types = series["order_type"].to_numpy()
    if (types[events] == "market").all():
        _market_only(name, symbol, series, events, stamps, fills, signals, trades)
    else:
        _with_orders(name, symbol, series, events, stamps, fills, signals, trades)


def _signal(name: str, symbol: str, ts: datetime, qty: int, close: float, row: dict | None,
            reason: str) -> Signal:
    side = Side.BUY if qty > 0 else Side.SELL
    extra: dict[str, object] = {}
    if row is not None and row["order_type"] != "market":
        extra = {"order_type": OrderType(row["order_type"]),
                 "limit_price": None if math.isnan(row["limit_price"]) else float(row["limit_price"]),
                 "stop_price": None if math.isnan(row["stop_price"]) else float(row["stop_price"]),
                 "time_in_force": TimeInForce(row["time_in_force"])}
    return Signal(intent_id=intent_id(name, symbol, ts, side), strategy=name, symbol=symbol, side=side,
                  qty=abs(qty), bar_ts=ts, ref_price=float(close), reason=reason, **extra)  # type: ignore[arg-type]


def _market_only(name: str, symbol: str, series: pd.DataFrame, events: np.ndarray, stamps: _Stamps,
                 fills: list, signals: list[Signal], trades: list[Trade]) -> None:
    """Every order fills at the next open: the position before a target is the previous target."""
    tgt = series["target"].to_numpy(dtype=np.float64)[events].astype(np.int64)
    prev = np.r_[0, tgt[:-1]]
    delta = tgt - prev
    opens = series["open"].to_numpy(dtype=np.float64)
    closes = series["close"].to_numpy(dtype=np.float64)
    reasons = series["reason"].to_numpy()
    n = len(series)
    acted = events[delta != 0]
    at, after = _aware(stamps.ns[acted]), _aware(stamps.ns[np.minimum(acted + 1, n - 1)])
    for i, (e, d) in enumerate(zip(acted.tolist(), delta[delta != 0].tolist(), strict=True)):
        signal = _signal(name, symbol, at[i], d, closes[e], None, _text(reasons[e]))
        signals.append(signal)
        if e + 1 < n:  # no next bar: the order never fills
            fills.append((at[i], symbol, d, float(opens[e + 1])))
            trades.append(Trade(after[i], symbol, signal.side, abs(d), float(opens[e + 1]), signal.intent_id))


def _aware(ns: np.ndarray) -> list[datetime]:
    """int64 ns UTC as aware datetimes, in one vectorized conversion."""
    return list(pd.DatetimeIndex(ns, tz=UTC).to_pydatetime()) if len(ns) else []


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class _Working:
    """The strategy's resting order for one symbol in the backtest (amended in place, as live)."""

    signal: Signal
    qty: int  # signed
    kind: str
    limit: float
    stop: float
    day_only: bool
    day: int  # the UTC day of its first bar: a DAY order ends with it
    triggered: bool


def _with_orders(name: str, symbol: str, series: pd.DataFrame, events: np.ndarray, stamps: _Stamps,
                 fills: list, signals: list[Signal], trades: list[Trade]) -> None:
    """Orders that may rest, as the live strategy handles them (``strategies/live.py``): a target
    while our order works amends it (same intent id) or, when nothing more is wanted, the side
    flips or a market order is wanted, cancels it; the next target then places a new order."""
    o, h, lo_, c = (series[k].to_numpy(dtype=np.float64).tolist() for k in ("open", "high", "low", "close"))
    tgt = series["target"].to_numpy(dtype=np.float64).tolist()
    kinds, tifs, reasons = (series[k].tolist() for k in ("order_type", "time_in_force", "reason"))
    limits, stops = (series[k].to_numpy(dtype=np.float64).tolist() for k in ("limit_price", "stop_price"))
    days = (stamps.ns // 86_400_000_000_000).tolist()  # UTC day numbers: a DAY order's lifetime
    n = len(series)
    position, working, last = 0, None, -1
    for e in events.tolist():
        if working is not None:  # did it fill (or expire) on the bars since it was placed or amended?
            fill = _first_fill(working, o, h, lo_, last + 1, e, days)
            if fill is not None:
                j, price = fill
                if price == price:  # NaN: expired unfilled
                    position += working.qty
                    fills.append((working.signal.bar_ts, symbol, working.qty, price))
                    trades.append(Trade(stamps[j], symbol, working.signal.side, abs(working.qty), price,
                                        working.signal.intent_id))
                working = None
        last = e
        want = int(tgt[e]) - position
        kind = kinds[e]
        if working is not None:
            if want == 0 or (want > 0) != (working.qty > 0) or kind == "market":
                working = None  # cancelled; a later target places the new order
            else:
                working.qty, working.kind, working.limit, working.stop = want, kind, limits[e], stops[e]
                working.triggered = kind == "limit"
            continue
        if want == 0:
            continue
        row = {"order_type": kind, "limit_price": limits[e], "stop_price": stops[e], "time_in_force": tifs[e]}
        signal = _signal(name, symbol, stamps[e], want, c[e], row, _text(reasons[e]))  # type: ignore[arg-type]
        signals.append(signal)
        working = _Working(signal, want, kind, limits[e], stops[e], tifs[e] == "day",
                           days[e + 1] if e + 1 < n else -1, kind in ("market", "limit"))
    if working is not None:
        fill = _first_fill(working, o, h, lo_, last + 1, n - 1, days)
        if fill is not None and fill[1] == fill[1]:
            j, price = fill
            fills.append((working.signal.bar_ts, symbol, working.qty, price))
            trades.append(Trade(stamps[j], symbol, working.signal.side, abs(working.qty), price,
                                working.signal.intent_id))


def _first_fill(w: _Working, o: list[float], h: list[float], lo: list[float], start: int, end: int,
                days: list[int]) -> tuple[int, float] | None:
    """(bar index, price) of the order's fill on bars ``start..end``; (bar, NaN) when it expired; None."""
    buy = w.qty > 0
    for j in range(start, min(end, len(o) - 1) + 1):
        if w.day_only and days[j] != w.day:
            return j, math.nan  # expired at the end of its day
        if w.kind == "market":
            return j, o[j]
        first = o[j]
        if not w.triggered:
            if not (h[j] >= w.stop if buy else lo[j] <= w.stop):
                continue
            w.triggered = True
            first = max(o[j], w.stop) if buy else min(o[j], w.stop)
            if w.kind == "stop":
                return j, first
        if buy and lo[j] <= w.limit:
            return j, min(first, w.limit)
        if not buy and h[j] >= w.limit:
            return j, max(first, w.limit)
    return None


@dataclass
class _Book:
    """Simulated positions with average-cost realized P&L."""

    cash: float
    positions: dict[str, int] = field(default_factory=dict)
    avg_cost: dict[str, float] = field(default_factory=dict)
    realized: float = 0.0

    def fill(self, symbol: str, signed_qty: int, price: float) -> None:
        pos = self.positions.get(symbol, 0)
        avg = self.avg_cost.get(symbol, 0.0)
        self.cash -= signed_qty * price
        if pos == 0 or (pos > 0) == (signed_qty > 0):  # opening or adding
            new = pos + signed_qty
            avg = (avg * abs(pos) + price * abs(signed_qty)) / abs(new)
        else:  # closing, possibly through zero
            closed = min(abs(signed_qty), abs(pos))
            self.realized += closed * (price - avg) * math.copysign(1, pos)
            new = pos + signed_qty
            if new == 0:
                avg = 0.0
            elif (new > 0) != (pos > 0):  # reversed: the remainder opened at this price
                avg = price
        self.positions[symbol] = new
        self.avg_cost[symbol] = avg
