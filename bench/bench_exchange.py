"""The local Alpaca-compatible exchange (``steadyhand exchange serve``) as alpaca-py sees it.

Each run starts the exchange server as a process of its own on a fresh data dir (this script with
``--serve``: the server ``exchange serve`` runs, without its 200-a-minute rate limit), then, through
the real alpaca-py clients from this process:

- ``submit_rt``: ``TradingClient.submit_order`` round trip, ``--orders`` market orders one after
  another (p50 and p99 of the run);
- ``get_order_rt``: ``get_order_by_id`` round trip for each of them;
- ``list_orders_rt``: ``get_orders(status=all, limit=500)`` with every order in the book;
- ``trade_update_new``: submit sent -> the order's ``new`` event received on the trade-updates
  websocket (alpaca-py's ``TradingStream``; the server polls its book every 50 ms, so this is
  mostly that interval);
- ``server_cpu_per_submit``: the server process's CPU time (user + sys) over the submissions,
  per submission: what a request costs the server, whatever else the machine is doing.

The server is stopped with SIGTERM afterwards and proven gone (process exited, port closed).

    python -m bench.bench_exchange [--quick] [--orders N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.runtime import procs  # noqa: E402

from bench import common  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"
SYMBOLS = ("AAPL", "MSFT", "SPY", "NVDA")


def serve_forever(data_dir: Path) -> None:
    """The child process: the server on ``data_dir`` until SIGTERM; ``exchange.json`` says where."""
    from steadyhand.config import Settings, SimSettings
    from steadyhand.sim.server import ExchangeServer, ServerThread

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A clock at real speed from the latest open: the market stays open for the run.
    settings = Settings(symbols=SYMBOLS, sim=SimSettings(speed=1.0, latency_ms=20.0, partial_fill_probability=0.0,
                                                         start_cash=1e9))
    server = ExchangeServer(data_dir, settings, credentials=(KEY, SECRET), rate_limit_per_minute=0)
    with ServerThread(server):
        info = data_dir / "exchange.json"
        info.write_text(json.dumps({"port": server.port, **server.urls}))
        stop.wait()
        info.unlink()


def _serve(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([common.PYTHON, "-m", "bench.bench_exchange", "--serve", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
                            cwd=common.REPO, start_new_session=True)
    info_file = data_dir / "exchange.json"
    try:
        common.wait_for(info_file.exists, 30)
        return proc, json.loads(info_file.read_text())
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def _stop(proc: subprocess.Popen[str], port: int) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise RuntimeError("the exchange server did not stop on SIGTERM") from None
    if code != 0 or procs.port_listening(port):
        raise RuntimeError(f"the exchange server exited {code}; port {port} listening: {procs.port_listening(port)}")


def _listening(base_url: str) -> bool:
    with urllib.request.urlopen(f"{base_url}/_admin/status", timeout=5) as reply:
        return json.loads(reply.read())["connections"]["listening"] >= 1


def run_once(n_orders: int, keep: bool = False) -> dict[str, Any]:
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest
    from alpaca.trading.stream import TradingStream

    with common.data_dir("exchange", keep) as data_dir:
        proc, info = _serve(data_dir)
        try:
            client = TradingClient(KEY, SECRET, url_override=info["trading_url"])
            client._retry = 0
            seen: dict[str, float] = {}

            async def on_update(update: Any) -> None:
                if str(getattr(update.event, "value", update.event)) == "new":
                    seen.setdefault(str(update.order.client_order_id), time.perf_counter())

            stream = TradingStream(KEY, SECRET, url_override=info["trading_stream_url"])
            stream.subscribe_trade_updates(on_update)
            streamer = threading.Thread(target=stream.run, daemon=True)
            streamer.start()
            client.get_account()  # warm the connection
            common.wait_for(lambda: _listening(info["trading_url"]), 30, what="the trade stream to listen")
            probe = client.submit_order(MarketOrderRequest(symbol="SPY", qty=1, side="buy", time_in_force="day",
                                                           client_order_id="probe"))
            common.wait_for(lambda: "probe" in seen, 30, what="the probe's 'new' event")
            sent: dict[str, float] = {}
            submit, get, ids = [], [], [str(probe.id)]
            server = psutil.Process(proc.pid)
            cpu0 = sum(server.cpu_times()[:2])
            for i in range(n_orders):
                cid = f"bench-{i}"
                req = MarketOrderRequest(symbol=SYMBOLS[i % len(SYMBOLS)], qty=1, side="buy", time_in_force="day",
                                         client_order_id=cid)
                sent[cid] = t0 = time.perf_counter()
                order = client.submit_order(req)
                submit.append((time.perf_counter() - t0) * 1000)
                ids.append(str(order.id))
            submit_cpu = sum(server.cpu_times()[:2]) - cpu0
            for oid in ids[1:]:
                t0 = time.perf_counter()
                client.get_order_by_id(oid)
                get.append((time.perf_counter() - t0) * 1000)
            listing = []
            for _ in range(10):
                t0 = time.perf_counter()
                got = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
                listing.append((time.perf_counter() - t0) * 1000)
            common.wait_for(lambda: all(c in seen for c in sent), 30)
            new_event = [(seen[c] - sent[c]) * 1000 for c in sent]
            stream.stop()
            streamer.join(10)
        finally:
            _stop(proc, int(info["port"]))
    return {"orders": n_orders, "listed": len(got),
            "submit_p50_ms": common.percentile(submit, 50), "submit_p99_ms": common.percentile(submit, 99),
            "get_p50_ms": common.percentile(get, 50), "list_p50_ms": common.percentile(listing, 50),
            "new_event_p50_ms": common.percentile(new_event, 50),
            "server_cpu_per_submit_ms": submit_cpu * 1000 / n_orders}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, help="orders per run (default 200; --quick 100)")
    p.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve_forever(Path(args.serve))
        return {}
    n = args.orders or common.size(args, 200, 100, 10)
    figures = {
        "submit_p50_ms": common.Figure("exchange_submit_rt_p50", "ms", note=f"alpaca-py, {n} orders"),
        "submit_p99_ms": common.Figure("exchange_submit_rt_p99", "ms"),
        "get_p50_ms": common.Figure("exchange_get_order_rt_p50", "ms"),
        "list_p50_ms": common.Figure("exchange_list_orders_rt_p50", "ms", note=f"{n + 1} orders, status=all"),
        "new_event_p50_ms": common.Figure("exchange_trade_update_new_p50", "ms", note="submit -> 'new' on /stream"),
        "server_cpu_per_submit_ms": common.Figure("exchange_server_cpu_per_submit", "ms",
                                                  note="the server process's CPU (user+sys) / submits"),
    }
    runs = []
    for _ in range(common.repeats(args)):
        run = run_once(n, args.keep)
        runs.append(run)
        for key, figure in figures.items():
            figure.add(run[key])
    result = common.report("exchange serve through alpaca-py", figures.values(), {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
