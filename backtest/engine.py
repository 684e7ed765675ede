"""The backtest: the strategy's signal function over a whole replay, vectorized, with a simple book.

It runs ``sma_crossover`` -- the same function the live strategy runs on its windows -- over each
symbol's own series at once, and fills each intent at that symbol's next bar's open, so paper
trading and the backtest can be compared on the same bars (``steadyhand backtest``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from steadyhand.config import StrategySettings
from steadyhand.domain import Side, Signal
from steadyhand.strategies.sma import make_signal, sma_crossover, target_orders


@dataclass(frozen=True)
class Trade:
    ts: datetime  # fill time: the next bar's start
    symbol: str
    side: Side
    qty: int
    price: float  # the next bar's open
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

    def trades_frame(self) -> pd.DataFrame:
        columns = ["ts", "symbol", "side", "qty", "price", "intent_id"]
        rows = [(t.ts, t.symbol, str(t.side), t.qty, t.price, t.intent_id) for t in self.trades]
        return pd.DataFrame(rows, columns=columns)


BAR_COLUMNS = ("ts", "symbol", "open", "high", "low", "close", "volume")


def backtest(bars: pd.DataFrame, settings: StrategySettings, start_cash: float = 100_000.0) -> BacktestResult:
    """Run the strategy over long-format bars; fills at the next bar's open of that symbol."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {', '.join(missing)}")
    df = bars.loc[:, list(BAR_COLUMNS)].copy()
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    # Same rule as the live wrapper: a bar not newer than its symbol's previous one is ignored.
    df = df.sort_values(["symbol", "ts"], kind="stable").drop_duplicates(["symbol", "ts"], keep="first")
    df["k"] = df.groupby("symbol", sort=False).cumcount()  # the symbol's k-th bar
    closes = df.pivot(index="k", columns="symbol", values="close")
    opens = df.pivot(index="k", columns="symbol", values="open").to_numpy(dtype=np.float64)
    # Naive UTC datetime64 for vectorized lookups; made aware again only for the events used.
    df["ts_utc"] = df["ts"].dt.tz_localize(None)
    stamps = df.pivot(index="k", columns="symbol", values="ts_utc").to_numpy()
    counts = df.groupby("symbol", sort=False).size().reindex(closes.columns).to_numpy()
    symbols = list(closes.columns)
    close_arr = closes.to_numpy(dtype=np.float64)

    sig = sma_crossover(closes, settings.fast, settings.slow).to_numpy()
    ks, js = np.nonzero(sig)

    def aware(values: np.ndarray) -> list[datetime]:
        return list(pd.DatetimeIndex(values).tz_localize(UTC).to_pydatetime())

    sig_ts = aware(stamps[ks, js])
    has_next = ks + 1 < counts[js]
    next_ts = aware(stamps[np.where(has_next, ks + 1, ks), js])
    events = sorted(range(len(ks)), key=lambda e: (sig_ts[e], symbols[js[e]]))

    book = _Book(start_cash)
    signals: list[Signal] = []
    trades: list[Trade] = []
    for e in events:
        k, j = int(ks[e]), int(js[e])
        symbol, s = symbols[j], int(sig[k, j])
        orders = target_orders({symbol: s}, book.positions, settings.qty, settings.allow_short)
        if symbol not in orders:
            continue
        side, qty = orders[symbol]
        signal = make_signal(settings, symbol, sig_ts[e], s, side, qty, close_arr[k, j])
        signals.append(signal)
        if has_next[e]:  # no next bar: the order never fills
            price = float(opens[k + 1, j])
            book.fill(symbol, side.sign * qty, price)
            trades.append(Trade(next_ts[e], symbol, side, qty, price, signal.intent_id))

    trades.sort(key=lambda t: (t.ts, t.symbol))
    last_close = {symbols[j]: float(close_arr[counts[j] - 1, j]) for j in range(len(symbols))}
    equity = book.cash + sum(q * last_close[s] for s, q in book.positions.items())
    return BacktestResult(
        trades=tuple(trades),
        final_positions={s: q for s, q in book.positions.items() if q},
        realized_pnl=book.realized,
        bars=len(df),
        signals=tuple(signals),
        final_cash=book.cash,
        final_equity=equity,
    )


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
