"""IBKR adapter on the TWS face of the local exchange, over loopback, with the real ib_async client.

- ``submit_to_ack``: ``IbkrBroker.submit`` of a resting limit order -> its acknowledgement
  (openOrder + orderStatus Submitted) back, p50 and p99 over ``--orders`` submits, sent at
  ``--rate`` a second (default 20: under the 45 messages a second the client allows itself; at a
  higher rate the figure is ib_async's throttle, by design, not the path).
- ``reconnect_200_open``: with ``--open`` orders working, the face drops every socket; the time
  until the adapter has reconnected (its sweep of open / completed orders and executions done),
  read every open order back and had one new order acknowledged. This is the adapter's part of
  "reconnect -> reconciled and trading"; the OMS's reconciliation on top is not in this figure.

    python -m bench.bench_ibkr [--quick | --tiny] [--orders N] [--open N]
"""

from __future__ import annotations

import sys
import tempfile
import time
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
        try:
            acks = []
            start = time.perf_counter()
            for i in range(n_orders):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))  # the pace (this thread only)
                t0 = time.perf_counter()
                broker.submit(_resting(f"ack-{i}"))
                acks.append((time.perf_counter() - t0) * 1000)
            broker.cancel_all()
            common_open = [broker.submit(_resting(f"open-{i}")) for i in range(n_open)]
            generation = broker.generation
            t0 = time.perf_counter()
            face.run_coroutine(face.server.drop_connections)
            while broker.generation == generation or not broker.connected:
                time.sleep(0.001)  # measuring: a tight wait on the adapter's state, off its loop
            seen = len(broker.open_orders())
            broker.submit(_resting("after-reconnect"))
            reconnect_s = time.perf_counter() - t0
            return {"p50": common.percentile(acks, 50), "p99": common.percentile(acks, 99),
                    "reconnect_s": reconnect_s, "open_seen": seen, "open_placed": len(common_open)}
        finally:
            broker.close()
            face.stop()


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
    runs = []
    for _ in range(common.repeats(args)):
        r = run_once(n_orders, n_open, args.rate)
        runs.append(r)
        p50.add(r["p50"])
        p99.add(r["p99"])
        rec.add(r["reconnect_s"])
    result = common.report(f"IBKR adapter on the TWS face ({n_orders} submits, {n_open} open at the drop)",
                           [p50, p99, rec], {"runs": runs, "machine": common.machine()})
    common.write_json(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
