"""``steadyhand exchange serve --tws-port 0``: the TWS face in the same process as the Alpaca face,
on the same book and clock. The real ib_async client (through the IBKR adapter) trades on it, and
the Alpaca face sees the same orders; the port is printed, and nothing listens after a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca_exchange import KEY, SECRET, wait_for
from harness import start_args
from steadyhand.brokers.ibkr.broker import IbkrBroker
from steadyhand.config import IbkrSettings
from steadyhand.domain import OrderSpec, OrderStatus, OrderType, Side
from steadyhand.runtime import procs
from steadyhand.sim.clock import stored_clock


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {**os.environ, "STEADYHAND_EXCHANGE_API_KEY": KEY, "STEADYHAND_EXCHANGE_SECRET_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand", "exchange", "serve", "--port", "0", "--tws-port", "0",
                             "--data-dir", str(tmp_path / "var"), *start_args()], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    while not any(line.strip().startswith("accepting") for line in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        lines.append(line)
    port = int(next(line for line in lines if "serving on 127.0.0.1:" in line).split("127.0.0.1:")[1].split()[0])
    tws_port = int(next(line for line in lines if line.strip().startswith("tws_port = ")).split("=")[1].split()[0])
    return proc, port, tws_port


def test_ib_async_trades_on_exchange_serve_tws_port(tmp_path: Path) -> None:
    proc, port, tws_port = _serve(tmp_path)
    broker = None
    try:
        assert {p for _pid, host, p in procs.listening_sockets([proc.pid]) if host == "127.0.0.1"} >= {port, tws_port}
        clock = stored_clock(tmp_path / "var" / "exchange.db")
        assert clock is not None
        (tmp_path / "bot").mkdir()
        broker = IbkrBroker(IbkrSettings(port=tws_port, client_id=31, timeout_s=5.0), data_dir=tmp_path / "bot",
                            clock=clock, reconnect_min_s=0.1)
        cursor = broker.poll(None).cursor
        broker.submit(OrderSpec("tws-port-buy", "AAPL", Side.BUY, 3))
        resting = broker.submit(OrderSpec("tws-port-rest", "AAPL", Side.BUY, 2, type=OrderType.LIMIT,
                                          limit_price=Decimal("1.00")))
        amended = broker.replace(resting.broker_order_id, 4, Decimal("1.25"))
        assert (amended.broker_order_id, amended.qty) == (resting.broker_order_id, 4)
        fills = []

        def filled() -> bool:
            nonlocal cursor
            batch = broker.poll(cursor)
            cursor = batch.cursor
            fills.extend(batch.fills)
            return sum(f.qty for f in fills if f.client_order_id == "tws-port-buy") == 3

        wait_for(filled, timeout_s=20, what="the market order filled through the TWS face")
        assert broker.get_by_client_id("tws-port-buy").status is OrderStatus.FILLED
        # the same book behind the Alpaca face: both orders, by their orderRef
        alpaca = TradingClient(KEY, SECRET, url_override=f"http://127.0.0.1:{port}")
        seen = {o.client_order_id: o for o in alpaca.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))}
        assert seen["tws-port-buy"].status.value == "filled" and seen["tws-port-buy"].filled_qty == "3"
        assert (seen["tws-port-rest"].qty, seen["tws-port-rest"].limit_price) == ("4", "1.25")
        assert (tmp_path / "var" / "tws.json").exists()
        broker.close()
        broker = None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if broker is not None:
            broker.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert not procs.port_listening(port) and not procs.port_listening(tws_port)
    assert not (tmp_path / "var" / "tws.json").exists() and not procs.pid_alive(proc.pid)
