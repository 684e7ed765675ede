"""IBKR adapter on the TWS face of the local exchange, over loopback, with the real ib_async client.

- ``submit_to_ack``: ``IbkrBroker.submit`` of a resting limit order -> its acknowledgement
  (openOrder + orderStatus Submitted) back, p50 and p99 over ``--orders`` submits, sent at
  ``--rate`` a second (default 20: under the 45 messages a second the client allows itself; at a
  higher rate the figure is ib_async's throttle, by design, not the path).
- ``reconnect_200_open``: with ``--open`` orders working, the face drops every socket; the time
  until the adapter has reconnected (its sweep of open / completed orders and executions done),
  read every open order back and had one new order acknowledged. This is the adapter's part of
  "reconnect -> reconciled and trading".
- ``reconnect_200_open_reconciled``: the same drop with the ``--open`` orders journaled (the OMS's
  write-ahead journal, real files), until the adapter has reconnected, the OMS's reconciliation
  (``orders/reconcile.py``, run by :class:`bench.journal_host.JournalHost` as the OMS runs it) has
  found all of them working and nothing to change, and a new order is acknowledged: "reconnect ->
  reconciled and trading" (issue 12, target <= 2 s).

    python -m bench.bench_ibkr [--quick | --tiny] [--orders N] [--open N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.brokers.ibkr.broker import IbkrBroker  # noqa: E402
from steadyhand.config import IbkrSettings, Settings, SimSettings  # noqa: E402
from steadyhand.domain import OrderSpec, OrderType, Side, market_hours  # noqa: E402
from steadyhand.sim.server.tws import TwsServer, TwsServerThread  # noqa: E402

from bench import common  # noqa: E402
from bench.journal_host import JournalHost  # noqa: E402


class _Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


def _resting(cid: str) -> OrderSpec:
    return OrderSpec(cid, "AAPL", Side.BUY, 1, type=OrderType.LIMIT, limit_price=Decimal("1.00"))


def run_once(n_orders: int, n_open: int, rate: float = 20.0) -> dict[str, Any]:
    opened = market_hours.previous_open(datetime.now(UTC) - timedelta(days=1))
    clock = _Clock(opened + timedelta(hours=1))
    with tempfile.TemporaryDirectory(prefix="bench-ibkr-") as tmp:
        face = TwsServerThread(TwsServer(Path(tmp), Settings(sim=SimSettings(latency_ms=20.0)), clock=clock)).start()
        broker = IbkrBroker(IbkrSettings(port=face.server.port, client_id=41, timeout_s=10.0), data_dir=tmp,
                            clock=clock, reconnect_min_s=0.05)
        host = JournalHost(Path(tmp) / "bot", broker, clock)
        try:
            acks = []
            start = time.perf_counter()
            for i in range(n_orders):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))  # the pace (this thread only)
                t0 = time.perf_counter()
                broker.submit(_resting(f"ack-{i}"))
                acks.append((time.perf_counter() - t0) * 1000)
            broker.cancel_all()
            common_open = [host.submit_journaled(_resting(f"open-{i}")) for i in range(n_open)]
            reconnect_s, seen = _drop_and_wait(face, broker, lambda: len(broker.open_orders()), host.submit_journaled)
            reconciled_s, report = _drop_and_wait(face, broker, host.reconcile, host.submit_journaled)
            assert report["orders_checked"] >= n_open and not report["lost_at_broker"], report
            return {"p50": common.percentile(acks, 50), "p99": common.percentile(acks, 99),
                    "reconnect_s": reconnect_s, "open_seen": seen, "open_placed": len(common_open),
                    "reconciled_s": reconciled_s, "reconcile_broker_calls": report["broker_calls"],
                    "reconcile_orders_checked": report["orders_checked"]}
        finally:
            host.close()
            broker.close()
            face.stop()


def _drop_and_wait(face: TwsServerThread, broker: IbkrBroker, then: Callable[[], Any],
                   submit: Callable[[OrderSpec], Any]) -> tuple[float, Any]:
    """Drop every socket; seconds until reconnected, ``then()`` done and a new order acknowledged."""
    generation = broker.generation
    t0 = time.perf_counter()
    face.run_coroutine(face.server.drop_connections)
    while broker.generation == generation or not broker.connected:
        time.sleep(0.001)  # measuring: a tight wait on the adapter's state, off its loop
    result = then()
    submit(_resting(f"after-reconnect-{generation}"))
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--orders", type=int)
    p.add_argument("--open", type=int)
    p.add_argument("--rate", type=float, default=20.0, help="submits a second in the ack figure")
    args = p.parse_args(argv)
    n_orders = args.orders or common.size(args, 300, 100, 20)
    n_open = args.open or common.size(args, 200, 200, 20)
    p50 = common.Figure("submit_to_ack_p50_ms", "ms")
    p99 = common.Figure("submit_to_ack_p99_ms", "ms")
    rec = common.Figure(f"reconnect_{n_open}_open_s", "s", target=2.0)
    reconciled = common.Figure(f"reconnect_{n_open}_open_reconciled_s", "s", target=2.0)
    runs = []
    for _ in range(common.repeats(args)):
        r = run_once(n_orders, n_open, args.rate)
        runs.append(r)
        p50.add(r["p50"])
        p99.add(r["p99"])
        rec.add(r["reconnect_s"])
        reconciled.add(r["reconciled_s"])
    result = common.report(f"IBKR adapter on the TWS face ({n_orders} submits, {n_open} open at the drop)",
                           [p50, p99, rec, reconciled], {"runs": runs, "machine": common.machine()})
    common.write_json(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
