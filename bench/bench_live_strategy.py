"""The strategy stage alone: ``LiveStrategy`` with the shipped ``SmaCross`` (5/20), time per tick.

What the strategy actor does per tick of bars, without Thespian: append the bars to the windows,
work out the crossings, turn them into signals. Run the same script under two checkouts' venvs
to compare them side by side (issue 16).

    python -m bench.bench_live_strategy [--ticks-100 400] [--ticks-5000 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.domain import Bar  # noqa: E402
from steadyhand.strategies.live import LiveStrategy  # noqa: E402
from steadyhand.strategies.sma import SmaCross  # noqa: E402

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def per_tick(n_symbols: int, ticks: int) -> dict[str, float]:
    """p50 / mean ms per ``on_bars`` over ``ticks`` ticks of a seeded walk, and the signals made."""
    symbols = [f"S{i:04d}" for i in range(n_symbols)]
    prices = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.002, (21 + ticks, n_symbols)), axis=0))

    def bars(k: int) -> list[Bar]:
        ts = T0 + timedelta(minutes=k)
        return [Bar(s, ts, p, p, p, p, 100) for s, p in zip(symbols, prices[k].tolist(), strict=True)]

    live = LiveStrategy(SmaCross(5, 20, 10), symbols)
    live.warm_up([b for k in range(21) for b in bars(k)])
    times: list[float] = []
    signals = 0
    for tick in [bars(k) for k in range(21, 21 + ticks)]:
        started = time.perf_counter()
        result = live.on_bars(tick, {})
        times.append(time.perf_counter() - started)
        signals += len(result.signals)
        live.on_open_orders({})  # every order "ended": the next cross may trade again
    return {"p50_ms": statistics.median(times) * 1e3, "mean_ms": statistics.mean(times) * 1e3, "signals": signals}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks-100", type=int, default=400)
    p.add_argument("--ticks-5000", type=int, default=60)
    args = p.parse_args()
    for n, ticks in ((100, args.ticks_100), (5000, args.ticks_5000)):
        r = per_tick(n, ticks)
        print(f"{n:>5} symbols  p50 {r['p50_ms']:.2f} ms  mean {r['mean_ms']:.2f} ms  signals {r['signals']}")


if __name__ == "__main__":
    main()
