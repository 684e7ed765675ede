"""The strategy plug-in API: live per-tick cost, and the backtest side by side with backtrader.

    python bench/bench_plugin.py live [--symbols 500] [--ticks 60]
    python bench/bench_plugin.py backtest [--symbols 100] [--days 252] [--bt-days 10] [--skip-backtrader]

``live``: ``LiveStrategy.on_bars`` (the strategy actor's whole tick: the trailing windows as a
long frame, the strategy's ``latest``, the intents) for each shipped strategy, 500 symbols, after
warm-up; median and p99 ms per tick (target <= 10 ms).

``backtest``: ``run_backtest`` (``targets`` once on the whole history) over a year of minute bars
for 100 symbols, each shipped strategy; backtrader 1.9.78 runs the same rule (SMA market orders,
Bollinger limit orders re-placed every bar, Donchian stop orders re-placed every bar) on the first
``--bt-days`` days of the same data, because a year takes it most of an hour per strategy; bars/s
is compared (both engines are linear in bars: backtrader's per-bar loop, ours vectorized).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from steadyhand.domain import Bar, market_hours
from steadyhand.strategies.loader import SHIPPED, resolve_class

FIRST_DAY = datetime(2025, 11, 17, tzinfo=UTC)


def session_minutes(days: int) -> list[datetime]:
    minutes: list[datetime] = []
    for o, c in market_hours.sessions_between(FIRST_DAY, FIRST_DAY + timedelta(days=int(days * 1.6) + 10))[:days]:
        minutes.extend(o + timedelta(minutes=k) for k in range(int((c - o).total_seconds() // 60)))
    return minutes


def make_closes(ticks: int, n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.0015, (ticks, n)), axis=0)), 4)


def ohlc(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    opens = np.vstack([closes[:1], closes[:-1]])
    spread = np.abs(closes - opens) * 0.5 + closes * 0.0005
    return opens, np.maximum(opens, closes) + spread, np.minimum(opens, closes) - spread


def always(bars: pd.DataFrame) -> pd.DataFrame:
    """The "external" strategy's user function: a model that always wants 10 shares of everything."""
    return pd.DataFrame({"ts": bars["ts"], "symbol": bars["symbol"], "target": 10.0})


def strategies() -> dict[str, Any]:
    out = {name: resolve_class(spec)() for name, spec in SHIPPED.items() if name != "external"}
    out["external"] = resolve_class("external")(function=f"{Path(__file__).resolve()}:always")
    return out


# --- live ---------------------------------------------------------------------------------------


def _tick_bars(names: list[str], closes: np.ndarray, k: int) -> list[Bar]:
    opens, highs, lows = ohlc(closes[max(k - 1, 0) : k + 1])
    ts = datetime(2026, 11, 20, 14, 30, tzinfo=UTC) + timedelta(minutes=k)
    return [Bar(s, ts, float(opens[-1, j]), float(highs[-1, j]), float(lows[-1, j]), float(closes[k, j]), 1000)
            for j, s in enumerate(names)]


def bench_live(n_symbols: int, ticks: int) -> None:
    """Per tick: the strategy's ``latest`` alone, and the actor's whole tick (windows, latest, intents),
    with an OMS stand-in: market orders fill at once, resting orders stay pending until amended away.
    CPU time (``process_time``) as well as wall time: the machine these run on is shared."""
    from steadyhand.domain import OrderType
    from steadyhand.strategies.live import LiveStrategy

    names = [f"S{i:04d}" for i in range(n_symbols)]
    for name, strategy in strategies().items():
        warm = strategy.warmup
        closes = make_closes(warm + ticks, n_symbols)
        live = LiveStrategy(strategy, names)
        live.warm_up(b for k in range(warm) for b in _tick_bars(names, closes, k))
        batches = [_tick_bars(names, closes, warm + k) for k in range(ticks)]
        whole, alone, cpu, intents = [], [], [], 0
        positions: dict[str, int] = {}
        pending: dict[str, int] = {}
        for batch in batches:
            started, started_cpu = time.perf_counter(), time.process_time()
            result = live.on_bars(batch, positions)
            whole.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)  # CPU: less at the mercy of a loaded machine
            frame = live.frame()
            started = time.process_time()
            strategy.latest(frame)
            alone.append((time.process_time() - started) * 1000)
            intents += len(result.signals) + len(result.amends)
            for sig in result.signals:
                if sig.order_type is OrderType.MARKET:
                    positions[sig.symbol] = positions.get(sig.symbol, 0) + sig.side.sign * int(sig.qty)
                else:
                    pending[sig.symbol] = sig.side.sign * int(sig.qty)
            for amend in result.amends:
                if amend.qty == 0:
                    pending.pop(amend.client_order_id.split("-")[1], None)  # the id names the symbol
            live.on_open_orders(pending)
        print(f"live {name:<10} {n_symbols} symbols x {ticks} ticks (window {warm}): latest() CPU {_stats(alone)};"
              f" whole tick CPU {_stats(cpu)}, wall {_stats(whole)}; {intents} intents/amends", flush=True)


def _stats(values: list[float]) -> str:
    ms = sorted(values)
    return f"median {statistics.median(ms):.2f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.2f} ms"


# --- backtest -----------------------------------------------------------------------------------


def frame_of(minutes: list[datetime], names: list[str], closes: np.ndarray) -> pd.DataFrame:
    opens, highs, lows = ohlc(closes)
    return pd.DataFrame({"ts": pd.DatetimeIndex(minutes).repeat(len(names)), "symbol": names * len(minutes),
                         "open": opens.ravel(), "high": highs.ravel(), "low": lows.ravel(), "close": closes.ravel(),
                         "volume": 1000})


def run_ours(frame: pd.DataFrame, strategy: Any) -> dict[str, Any]:
    from steadyhand.backtest.engine import run_backtest

    started = time.perf_counter()
    result = run_backtest(frame, strategy)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "bars_per_s": len(frame) / elapsed, "trades": len(result.trades)}


def run_backtrader(rule: str, minutes: list[datetime], names: list[str], closes: np.ndarray) -> dict[str, Any]:
    import backtrader as bt

    class Rule(bt.Strategy):
        def __init__(self) -> None:
            self.ind = {}
            for d in self.datas:
                if rule == "sma":
                    self.ind[d] = bt.ind.CrossOver(bt.ind.SMA(d.close, period=5), bt.ind.SMA(d.close, period=20))
                elif rule == "bollinger":
                    self.ind[d] = bt.ind.BollingerBands(d.close, period=20, devfactor=2.0)
                else:
                    self.ind[d] = (bt.ind.Highest(d.high, period=20), bt.ind.Lowest(d.low, period=20))
            self.working: dict[Any, Any] = {}
            self.trades = 0

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                self.trades += 1

        def next(self) -> None:
            for d in self.datas:
                pos = self.getposition(d).size
                if rule == "sma":
                    c = self.ind[d][0]
                    if c > 0 and pos < 10:
                        self.buy(data=d, size=10 - pos)
                    elif c < 0 and pos > 0:
                        self.sell(data=d, size=pos)
                    continue
                old = self.working.pop(d, None)
                if old is not None and old.alive():
                    self.cancel(old)
                if rule == "bollinger":
                    bb = self.ind[d]
                    below = d.close[0] <= bb.mid[0]
                    price, kind = (bb.bot[0], bt.Order.Limit) if below else (bb.top[0], bt.Order.Limit)
                else:
                    hh, ll = self.ind[d]
                    below = d.close[0] < (hh[0] + ll[0]) / 2
                    price, kind = (ll[0], bt.Order.Stop) if below else (hh[0], bt.Order.Stop)
                if not below and pos < 10 and rule == "breakout":
                    self.working[d] = self.buy(data=d, size=10 - pos, price=price, exectype=kind)
                elif below and pos < 10 and rule == "bollinger":
                    self.working[d] = self.buy(data=d, size=10 - pos, price=price, exectype=kind)
                elif pos > 0 and ((rule == "bollinger" and not below) or (rule == "breakout" and below)):
                    self.working[d] = self.sell(data=d, size=pos, price=price, exectype=kind)

    opens, highs, lows = ohlc(closes)
    index = pd.DatetimeIndex([m.replace(tzinfo=None) for m in minutes])
    cerebro = bt.Cerebro(stdstats=False)
    for j, s in enumerate(names):
        df = pd.DataFrame({"open": opens[:, j], "high": highs[:, j], "low": lows[:, j], "close": closes[:, j],
                           "volume": 1000.0}, index=index)
        cerebro.adddata(bt.feeds.PandasData(dataname=df), name=s)
    cerebro.addstrategy(Rule)
    cerebro.broker.setcash(1e12)
    started = time.perf_counter()
    strategy = cerebro.run()[0]
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "bars_per_s": closes.size / elapsed, "trades": strategy.trades}


def bench_backtest(n_symbols: int, days: int, bt_days: int, skip_bt: bool) -> None:
    names = [f"S{i:04d}" for i in range(n_symbols)]
    minutes = session_minutes(days)
    closes = make_closes(len(minutes), n_symbols)
    frame = frame_of(minutes, names, closes)
    bt_minutes = session_minutes(bt_days)
    for name, strategy in strategies().items():
        ours = run_ours(frame, strategy)
        line = (f"backtest {name:<10} {len(frame):,} bars ({days} days x {n_symbols}): {ours['seconds']:.1f} s, "
                f"{ours['bars_per_s']:,.0f} bars/s, {ours['trades']:,} trades")
        if name in ("sma", "bollinger", "breakout") and not skip_bt:
            theirs = run_backtrader(name, bt_minutes, names, closes[: len(bt_minutes)])
            small = run_ours(frame_of(bt_minutes, names, closes[: len(bt_minutes)]), strategy)
            line += (f" | backtrader {bt_days} days: {theirs['bars_per_s']:,.0f} bars/s, {theirs['trades']:,} fills;"
                     f" ours on those days {small['bars_per_s']:,.0f} bars/s ({small['trades']:,} fills) ->"
                     f" {ours['bars_per_s'] / theirs['bars_per_s']:.0f} x (year vs its bars/s),"
                     f" {small['bars_per_s'] / theirs['bars_per_s']:.0f} x (same days)")
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("live", "backtest"))
    p.add_argument("--symbols", type=int)
    p.add_argument("--ticks", type=int, default=60)
    p.add_argument("--days", type=int, default=252)
    p.add_argument("--bt-days", type=int, default=10)
    p.add_argument("--skip-backtrader", action="store_true")
    args = p.parse_args(argv)
    if args.what == "live":
        bench_live(args.symbols or 500, args.ticks)
    else:
        bench_backtest(args.symbols or 100, args.days, args.bt_days, args.skip_backtrader)


if __name__ == "__main__":
    main()
