"""Replace round trip on each broker, over loopback: ``Broker.replace`` of a resting limit order ->
the broker's answer back, p50 and p99 over ``--replaces`` replaces sent at ``--rate`` a second
(default 20, under ib_async's 45 messages a second), alternating the limit between two prices that
never fill.

- ``sim``: ``SimExchange.replace`` in process (one write transaction on ``exchange.db``: the new order
  and the old one ``replaced``).
- ``alpaca``: the Alpaca adapter (alpaca-py) -> ``exchange serve``'s Alpaca face in a thread of this
  process: a ``GET`` of the order (for its filled qty) and the ``PATCH``; each replace makes a new order.
- ``tws``: the IBKR adapter (ib_async) -> the TWS face in a thread: ``placeOrder`` again with the
  same order id, until the face's openOrder / orderStatus answer.

    python -m bench.bench_replace [--quick | --tiny] [--replaces N] [--rate R]
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
from steadyhand.brokers.alpaca.broker import AlpacaBroker  # noqa: E402
from steadyhand.brokers.ibkr.broker import IbkrBroker  # noqa: E402
from steadyhand.config import AlpacaSettings, IbkrSettings, Settings, SimSettings  # noqa: E402
from steadyhand.domain import OrderSpec, OrderType, Side, market_hours  # noqa: E402
from steadyhand.sim.exchange import open_sim_exchange  # noqa: E402
from steadyhand.sim.server import ExchangeServer, ServerThread  # noqa: E402
from steadyhand.sim.server.tws import TwsServer, TwsServerThread  # noqa: E402

from bench import common  # noqa: E402

PRICES = (Decimal("1.00"), Decimal("1.01"))  # far below the market: nothing fills
SETTINGS = Settings(sim=SimSettings(latency_ms=20.0, partial_fill_probability=0.0))
KEY, SECRET = "bench-key", "bench-secret"


class _Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


def _time_replaces(broker: Any, n: int, rate: float) -> list[float]:
    """ms per replace, paced at ``rate``; each replace continues from the order the last one left."""
    order = broker.submit(OrderSpec("bench-replace", "AAPL", Side.BUY, 5, type=OrderType.LIMIT,
                                    limit_price=PRICES[0]))
    times = []
    start = time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))  # the pace (this thread only)
        t0 = time.perf_counter()
        order = broker.replace(order.broker_order_id, None, PRICES[(i + 1) % 2], None)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _sim(tmp: Path, clock: _Clock, n: int, rate: float) -> list[float]:
    book = open_sim_exchange(SETTINGS, tmp, clock, faults=False)
    try:
        return _time_replaces(book, n, rate)
    finally:
        book.close()


def _alpaca(tmp: Path, clock: _Clock, n: int, rate: float) -> list[float]:
    server = ServerThread(ExchangeServer(tmp, SETTINGS, clock=clock, credentials=(KEY, SECRET),
                                         rate_limit_per_minute=0)).start()
    broker = AlpacaBroker(AlpacaSettings(max_requests_per_minute=60_000, timeout_s=10.0, **server.server.urls),
                          api_key=KEY, secret_key=SECRET)
    try:
        return _time_replaces(broker, n, rate)
    finally:
        broker.close()
        server.stop()


def _tws(tmp: Path, clock: _Clock, n: int, rate: float) -> list[float]:
    face = TwsServerThread(TwsServer(tmp, SETTINGS, clock=clock)).start()
    broker = IbkrBroker(IbkrSettings(port=face.server.port, client_id=51, timeout_s=10.0), data_dir=tmp,
                        clock=clock, reconnect_min_s=0.05)
    try:
        return _time_replaces(broker, n, rate)
    finally:
        broker.close()
        face.stop()


VENUES: dict[str, Callable[[Path, _Clock, int, float], list[float]]] = {"sim": _sim, "alpaca": _alpaca, "tws": _tws}


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--replaces", type=int)
    p.add_argument("--rate", type=float, default=20.0, help="replaces a second")
    p.add_argument("--only", default=",".join(VENUES), help="comma-separated: sim,alpaca,tws")
    args = p.parse_args(argv)
    n = args.replaces or common.size(args, 300, 100, 10)
    opened = market_hours.previous_open(datetime.now(UTC) - timedelta(days=1))
    figures, runs = [], []
    for venue in args.only.split(","):
        p50, p99 = common.Figure(f"replace_{venue}_p50_ms", "ms"), common.Figure(f"replace_{venue}_p99_ms", "ms")
        for _ in range(common.repeats(args)):
            with tempfile.TemporaryDirectory(prefix=f"bench-replace-{venue}-") as tmp:
                times = VENUES[venue](Path(tmp), _Clock(opened + timedelta(hours=1)), n, args.rate)
            p50.add(common.percentile(times, 50))
            p99.add(common.percentile(times, 99))
            runs.append({"venue": venue, "p50": p50.values[-1], "p99": p99.values[-1]})
        figures += [p50, p99]
    result = common.report(f"replace round trip ({n} replaces at {args.rate:g}/s)", figures,
                           {"runs": runs, "machine": common.machine()})
    common.write_json(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
