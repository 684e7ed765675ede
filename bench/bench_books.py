"""Sub-books' cost (portfolio/books.py): rebuilding them from a fills journal, and the per-notice work.

    python -m bench.bench_books [--fills 100000] [--strategies 4] [--symbols 100]

- rebuild: ``Books.rebuild`` over the whole journal (what a data dir from before the sub-books pays
  once at its first start, and what the tests compare the persisted books with);
- per notice: what the portfolio adds to each fills notice besides the net: ``quantities`` (the
  snapshot for risk and the strategy actors) and ``differences`` (the books-sum-to-net check).
Figures are median (min, max) of 5 runs; nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.portfolio.books import Books  # noqa: E402


def _fills(n: int, strategies: int, symbols: int) -> list[tuple[str, str, str, int, str]]:
    rng = random.Random(7)
    names = [f"s{i}" for i in range(strategies)]
    syms = [f"S{i}" for i in range(symbols)]
    return [(f"{rng.choice(names)}-x-{i}", rng.choice(syms), rng.choice(("buy", "sell")), rng.randint(1, 50),
             f"{rng.uniform(50, 150):.2f}") for i in range(n)]


def _timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fills", type=int, default=100_000)
    p.add_argument("--strategies", type=int, default=4)
    p.add_argument("--symbols", type=int, default=100)
    args = p.parse_args(argv)
    fills = _fills(args.fills, args.strategies, args.symbols)
    med, lo, hi = _timed(lambda: Books.rebuild(fills))
    print(f"rebuild {args.fills} fills ({args.strategies} strategies x {args.symbols} symbols): "
          f"{med:.3f} s ({lo:.3f}, {hi:.3f}) = {med / args.fills * 1e6:.1f} us/fill")
    books = Books.rebuild(fills)
    net = books.net()
    med, lo, hi = _timed(lambda: [books.quantities() for _ in range(100)])
    print(f"quantities(): {med * 1e4:.0f} us ({lo * 1e4:.0f}, {hi * 1e4:.0f})")
    med, lo, hi = _timed(lambda: [books.differences(net) for _ in range(100)])
    print(f"differences(net): {med * 1e4:.0f} us ({lo * 1e4:.0f}, {hi * 1e4:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
