"""Per-call time of SmaCrossover.on_bars with 5,000 symbols (target: well under 100 ms).

    /tmp/venv/bin/python bench/bench_strategy.py [symbols] [ticks]
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from steadyhand.config import StrategySettings
from steadyhand.domain import Bar
from steadyhand.strategies.sma import SmaCrossover


def main(n_symbols: int = 5_000, ticks: int = 200) -> None:
    settings = StrategySettings(fast=5, slow=20, qty=10)
    symbols = [f"S{i:04d}" for i in range(n_symbols)]
    rng = np.random.default_rng(1)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, (settings.slow + 1 + ticks, n_symbols)), axis=0))
    t0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)

    def tick(k: int) -> list[Bar]:
        ts = t0 + timedelta(minutes=k)
        return [Bar(s, ts, p, p, p, p, 100) for s, p in zip(symbols, prices[k].tolist(), strict=True)]

    strategy = SmaCrossover(settings, symbols)
    strategy.warm_up(b for k in range(settings.slow + 1) for b in tick(k))
    batches = [tick(settings.slow + 1 + k) for k in range(ticks)]  # built outside the timing
    positions: dict[str, int] = {}
    times, n_signals = [], 0
    for batch in batches:
        start = time.perf_counter()
        signals = strategy.on_bars(batch, positions)
        times.append(time.perf_counter() - start)
        n_signals += len(signals)
        for s in signals:
            positions[s.symbol] = positions.get(s.symbol, 0) + s.side.sign * s.qty
    ms = sorted(t * 1000 for t in times)
    print(
        f"on_bars, {n_symbols} symbols x {ticks} ticks: median {statistics.median(ms):.2f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.2f} ms, max {ms[-1]:.2f} ms, {n_signals} signals"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
