"""The reports' own cost and what issue 15 added to the order path.

- ``report execution`` / ``report parity`` on a synthetic journal of N orders (each with a quote and
  a fill) and a run of 5 symbols' journaled bars, read-only as the CLI reads it;
- the ack's journal write with and without the execution columns (a chunk of 100 acks, one FULL
  commit), and the sim's quote lookup that a sell now makes at submit (a buy made it already).

    python -m bench.bench_reports [--quick] [--orders N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.config import Settings  # noqa: E402
from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus, OrderType, Side, TimeInForce, TopOfBook  # noqa: E402
from steadyhand.orders.journal import OrderJournal  # noqa: E402
from steadyhand.state import runs, store  # noqa: E402

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ")
PRICE = Decimal("100.02")


def _ack(spec: OrderSpec, status: OrderStatus = OrderStatus.SUBMITTED, filled: int = 0) -> BrokerOrder:
    return BrokerOrder("b-" + spec.client_order_id, spec.client_order_id, spec.symbol, spec.side, spec.qty,
                       OrderType.MARKET, TimeInForce.DAY, None, None, status, filled, None, T0, T0,
                       quote=TopOfBook(spec.symbol, T0, 99.99, 100.01, "sim"))


def build(data_dir: Path, n_orders: int) -> None:
    """A run with its bars, and n_orders orders each acked with a quote and filled once."""
    db = store.open_store(data_dir)
    run_id = runs.open_run(db, "sim", ["sma_crossover"], store.iso(T0), 0)
    minutes = max(n_orders // len(SYMBOLS), 60)
    with store.transaction(db):
        db.conn.executemany(
            "INSERT INTO bars (run_id, symbol, ts, open, high, low, close, volume, kind, sent_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'live', ?)",
            [(run_id, s, store.iso(T0 + timedelta(minutes=m)), 100 + (m % 37) / 10, 101.0, 99.0,
              100 + ((m + 3) % 37) / 10, 1000, store.now_iso()) for m in range(minutes) for s in SYMBOLS])
    journal = OrderJournal(db)
    for start in range(0, n_orders, 100):
        specs = tuple(OrderSpec(f"sma-{SYMBOLS[i % 5]}-{i:07d}-B0", SYMBOLS[i % 5], Side.BUY if i % 2 else Side.SELL,
                                10, ref_price=100.0, bar_ts=T0 + timedelta(minutes=i // 5))
                      for i in range(start, min(start + 100, n_orders)))
        journal.insert_pending(specs, time.time())
        with journal.transaction():
            for spec in specs:
                journal.apply(_ack(spec), (time.time(), time.time(), "sim"))
                cid = spec.client_order_id
                journal.record_fills([Fill("f-" + cid, cid, "b-" + cid, spec.symbol, spec.side, spec.qty, PRICE, T0)])
                journal.apply(_ack(spec, OrderStatus.FILLED, spec.qty))
    db.close()


def time_reports(data_dir: Path, repeats: int) -> dict[str, float]:
    from steadyhand.reports.execution import execution_report
    from steadyhand.reports.parity import parity_report

    out: dict[str, list[float]] = {"execution": [], "parity": []}
    for _ in range(repeats):
        db = store.open_readonly(data_dir)
        assert db is not None
        t = time.perf_counter()
        execution_report(db)
        out["execution"].append(time.perf_counter() - t)
        t = time.perf_counter()
        parity_report(db, None, Settings())
        out["parity"].append(time.perf_counter() - t)
        db.close()
    return {k: statistics.median(v) * 1000 for k, v in out.items()}


def time_ack_journal(data_dir: Path, repeats: int) -> tuple[float, float]:
    """us per ack in a chunk of 100 (one FULL commit), without and with the execution columns."""
    db = store.open_store(data_dir)
    journal = OrderJournal(db)
    results: dict[bool, list[float]] = {False: [], True: []}
    for k in range(repeats):
        for with_times in (False, True):
            specs = tuple(OrderSpec(f"x{k}{with_times}-{i}", "AAPL", Side.BUY, 10, ref_price=100.0, bar_ts=T0)
                          for i in range(100))
            journal.insert_pending(specs, time.time())
            t = time.perf_counter()
            with journal.transaction():
                for spec in specs:
                    journal.apply(_ack(spec), (time.time(), time.time(), "sim") if with_times else None)
            results[with_times].append((time.perf_counter() - t) / 100 * 1e6)
    db.close()
    return statistics.median(results[False]), statistics.median(results[True])


def time_quote_lookup(n: int) -> tuple[float, float]:
    """us per sim quote lookup, and per BrokerOrder copy carrying it."""
    from steadyhand.sim.market import load_market

    settings = Settings()
    market = load_market(settings.sim, settings.symbols)
    t = time.perf_counter()
    for i in range(n):
        q = market.quote("AAPL", T0 + timedelta(seconds=600 + i % 3600))
    lookup = (time.perf_counter() - t) / n * 1e6
    order = _ack(OrderSpec("c", "AAPL", Side.BUY, 10))
    t = time.perf_counter()
    for _ in range(n):
        replace(order, quote=TopOfBook("AAPL", q.ts, q.bid, q.ask, "sim"))  # type: ignore[union-attr]
    return lookup, (time.perf_counter() - t) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--orders", type=int, default=0)
    args = p.parse_args(argv)
    n = args.orders or (200 if args.tiny else 2_000 if args.quick else 10_000)
    repeats = 2 if args.tiny else 3 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "var", n)
        ms = time_reports(Path(tmp) / "var", repeats)
        without, with_cols = time_ack_journal(Path(tmp) / "acks", 5 if args.tiny else 15)
    lookup, copy = time_quote_lookup(2_000 if args.tiny else 20_000)
    print(f"report execution, {n} orders: median {ms['execution']:.0f} ms; report parity, same run: "
          f"{ms['parity']:.0f} ms ({repeats} runs, read-only)")
    print(f"ack journal write, chunk of 100: {without:.0f} us/order without, {with_cols:.0f} us/order with the "
          f"execution columns")
    print(f"sim quote lookup at submit: {lookup:.0f} us (buys made it before; sells now too), "
          f"BrokerOrder copy with the quote: {copy:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
