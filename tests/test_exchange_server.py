"""The local Alpaca-compatible exchange, driven by the real alpaca-py clients (REST and websockets).

One server per module on 127.0.0.1 (port 0), in a thread, over a fresh exchange.db whose simulated
clock starts at the suite's pinned session open (a simulated minute per second); a separate one anchored
just before a close shows day orders expiring; one ``steadyhand exchange serve`` subprocess shows
the command starts, answers and stops on SIGTERM leaving no process or port behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetCalendarRequest, GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from alpaca_exchange import KEY, SECRET, admin, inject, module_exchange, start_exchange, wait_for
from harness import sim_start, start_args
from steadyhand.domain import market_hours
from steadyhand.runtime import procs
from steadyhand.sim.server import ServerThread


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    yield from module_exchange(tmp_path_factory, "exchange")


@pytest.fixture(scope="module")
def trading(exchange: ServerThread) -> TradingClient:
    client = TradingClient(KEY, SECRET, url_override=exchange.server.urls["trading_url"])
    client._retry = 0  # let the tests see every 429 themselves
    return client


def _market(cid: str, qty: int = 10, symbol: str = "AAPL", side: str = "buy") -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force="day", client_order_id=cid)


def _resting(cid: str, qty: int = 5, symbol: str = "MSFT") -> LimitOrderRequest:
    # A buy limit far below the market: rests until cancelled.
    return LimitOrderRequest(symbol=symbol, qty=qty, side="buy", time_in_force="day", limit_price=1.00,
                             client_order_id=cid)


def _ev(update: Any) -> str:
    return str(getattr(update.event, "value", update.event))  # TradeUpdate.event: enum or str


class _Collector:
    """Runs an alpaca-py stream in a thread and collects what its handler gets."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.items: list[Any] = []
        self.thread = threading.Thread(target=stream.run, daemon=True)

    async def handler(self, item: Any) -> None:
        self.items.append(item)

    def start(self) -> _Collector:
        self.thread.start()
        return self

    def stop(self) -> None:
        from steadyhand.brokers.alpaca.transport import StreamRunner

        runner = StreamRunner(self.stream, "test-stream")
        runner.thread = self.thread  # stop the thread we started
        runner.stop()
        assert not self.thread.is_alive()


def test_orders_positions_and_account_over_rest(trading: TradingClient) -> None:
    cash0 = float(trading.get_account().cash)
    order = trading.submit_order(_market("rest-buy-1", qty=10))
    assert order.client_order_id == "rest-buy-1" and order.status.value == "new" and order.qty == "10"
    filled = wait_for(lambda: (o := trading.get_order_by_client_id("rest-buy-1")).status.value == "filled" and o,
                      what="the market order to fill")
    assert filled.filled_qty == "10" and float(filled.filled_avg_price) > 0
    assert trading.get_order_by_id(order.id).status.value == "filled"
    position = trading.get_open_position("AAPL")
    assert int(position.qty) >= 10 and position.side.value == "long"
    assert float(trading.get_account().cash) == pytest.approx(cash0 - 10 * float(filled.filled_avg_price), abs=0.1)

    resting = trading.submit_order(_resting("rest-limit-1"))
    assert [o.client_order_id for o in trading.get_orders()] == ["rest-limit-1"]
    assert {o.client_order_id for o in trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))} >= {
        "rest-buy-1", "rest-limit-1"}
    assert trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, symbols=["AAPL"])) == []
    trading.cancel_order_by_id(resting.id)  # 204
    assert trading.get_order_by_id(resting.id).status.value == "canceled"
    with pytest.raises(APIError) as not_cancelable:
        trading.cancel_order_by_id(resting.id)
    assert not_cancelable.value.status_code == 422

    # DELETE /v2/orders answers 207 with one entry per order.
    trading.submit_order(_resting("rest-limit-2"))
    cancelled = trading.cancel_orders()
    assert [c.status for c in cancelled] == [200] and trading.get_orders() == []

    closing = trading.close_position("AAPL")
    assert closing.side.value == "sell" and closing.qty == position.qty
    wait_for(lambda: not any(p.symbol == "AAPL" for p in trading.get_all_positions()), what="the position to close")


def test_alpaca_error_shapes(trading: TradingClient, exchange: ServerThread) -> None:
    trading.submit_order(_market("err-dup", qty=1))
    with pytest.raises(APIError) as dup:
        trading.submit_order(_market("err-dup", qty=1))
    assert dup.value.status_code == 422 and dup.value.message == "client_order_id must be unique"
    with pytest.raises(APIError) as poor:
        trading.submit_order(_market("err-poor", qty=10_000_000))
    assert poor.value.status_code == 403 and "buying power" in poor.value.message
    for call in (lambda: trading.get_order_by_client_id("never-placed"),
                 lambda: trading.get_order_by_id("00000000-0000-4000-8000-000000000000"),
                 lambda: trading.get_open_position("QQQ")):
        with pytest.raises(APIError) as missing:
            call()
        assert missing.value.status_code == 404 and isinstance(missing.value.code, int)
    with pytest.raises(APIError) as fractional:
        trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=1.5, side="buy", time_in_force="day"))
    assert fractional.value.status_code == 422
    bad = requests.get(exchange.server.urls["trading_url"] + "/v2/account",
                       headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": "wrong"}, timeout=5)
    assert bad.status_code == 401

    inject(exchange, method="GET", path="/v2/clock", status=429, count=2)
    inject(exchange, method="GET", path="/v2/account", status=503)
    for expected in (429, 429):
        with pytest.raises(APIError) as limited:
            trading.get_clock()
        assert limited.value.status_code == expected
    assert trading.get_clock().is_open in (True, False)
    with pytest.raises(APIError) as unavailable:
        trading.get_account()
    assert unavailable.value.status_code == 503
    assert admin(exchange, "GET", "status")["faults"] == []


def test_rate_limit_answers_429(tmp_path: Path) -> None:
    with start_exchange(tmp_path, rate_limit_per_minute=3) as thread:
        client = TradingClient(KEY, SECRET, url_override=thread.server.urls["trading_url"])
        client._retry = 0
        for _ in range(3):
            client.get_clock()
        with pytest.raises(APIError) as limited:
            client.get_clock()
        assert limited.value.status_code == 429
        # The market data API has a budget of its own (as at Alpaca): bars still come.
        data = StockHistoricalDataClient(KEY, SECRET, url_override=thread.server.urls["data_url"])
        data._retry = 0
        bars = data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute,
                                                    start=thread.server.clock.now() - timedelta(minutes=5)))
        assert bars is not None


def test_clock_and_calendar(trading: TradingClient, exchange: ServerThread) -> None:
    clock = trading.get_clock()
    now = exchange.server.clock.now()
    assert clock.is_open is True  # the test clock starts at a session's open
    assert abs((clock.timestamp - now).total_seconds()) < 120
    assert clock.next_close == market_hours.next_close(now)
    days = trading.get_calendar(GetCalendarRequest(start=now.date() - timedelta(days=7), end=now.date()))
    assert days and days[-1].date == clock.timestamp.date()
    assert (days[-1].open.hour, days[-1].open.minute) == (9, 30)


def test_trade_updates_stream(trading: TradingClient, exchange: ServerThread) -> None:
    collector = _Collector(TradingStream(KEY, SECRET, url_override=exchange.server.urls["trading_stream_url"]))
    collector.stream.subscribe_trade_updates(collector.handler)
    collector.start()
    try:
        wait_for(lambda: admin(exchange, "GET", "status")["connections"]["listening"] >= 1,
                 what="the trade stream to listen")
        order = trading.submit_order(_market("tu-buy", qty=12, symbol="NVDA"))
        resting = trading.submit_order(_resting("tu-rest"))
        trading.cancel_order_by_id(resting.id)
        inject(exchange, method="POST", path="/v2/orders", reject="symbol is halted")
        accepted = trading.submit_order(_market("tu-rejected", qty=1))
        assert accepted.status.value == "accepted"

        def events(cid: str) -> list[Any]:
            return [u for u in collector.items if u.order.client_order_id == cid]

        wait_for(lambda: any(_ev(u) == "fill" for u in events("tu-buy")), what="the fill event")
        wait_for(lambda: [_ev(u) for u in events("tu-rest")] == ["new", "canceled"], what="cancel")
        wait_for(lambda: [_ev(u) for u in events("tu-rejected")] == ["rejected"], what="rejection")
        buy = events("tu-buy")
        assert _ev(buy[0]) == "new" and str(buy[0].order.id) == str(order.id)
        fills = buy[1:]
        assert [_ev(u) for u in fills[:-1]] == ["partial_fill"] * (len(fills) - 1) and len(fills) >= 2
        cum = [int(u.order.filled_qty) for u in fills]
        assert cum == sorted(cum) and cum[-1] == 12 and sum(int(u.qty) for u in fills) == 12
        assert len({u.execution_id for u in fills}) == len(fills)
        assert trading.get_order_by_client_id("tu-rejected").status.value == "rejected"
    finally:
        collector.stop()


def test_bars_over_rest_and_stream(exchange: ServerThread) -> None:
    data = StockHistoricalDataClient(KEY, SECRET, url_override=exchange.server.urls["data_url"])
    desc = data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute,
                                                limit=30, sort="desc")).data["AAPL"]
    assert len(desc) == 30 and desc[0].timestamp > desc[-1].timestamp  # reaches into the day before
    start = desc[-1].timestamp
    both = data.get_stock_bars(StockBarsRequest(symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute,
                                                start=start, limit=25)).data
    assert len(both["AAPL"]) == 25 and "MSFT" not in both  # one limit across symbols, symbol by symbol
    assert [b.timestamp for b in both["AAPL"]] == sorted(b.timestamp for b in desc[::-1][:25])
    everything = data.get_stock_bars(StockBarsRequest(symbol_or_symbols=["AAPL", "MSFT"], start=start,
                                                      timeframe=TimeFrame.Minute, limit=12000)).data
    paged = everything["AAPL"]
    assert len(everything["MSFT"]) >= 30
    assert len(paged) >= 30 and paged[-1].timestamp < exchange.server.clock.now()
    bar = paged[0]
    assert bar.trade_count and bar.vwap and bar.low <= bar.vwap <= bar.high

    collector = _Collector(StockDataStream(KEY, SECRET, url_override=exchange.server.urls["data_stream_url"]))
    collector.stream.subscribe_bars(collector.handler, "AAPL", "SPY")
    collector.start()
    try:
        wait_for(lambda: {b.symbol for b in collector.items} == {"AAPL", "SPY"}, what="streamed bars")
        streamed = collector.items[0]
        assert streamed.timestamp.tzinfo is not None and streamed.trade_count and streamed.vwap
        assert streamed.timestamp.second == 0 and streamed.timestamp < exchange.server.clock.now()
    finally:
        collector.stop()


def test_day_order_expires_at_the_close(tmp_path: Path) -> None:
    close = market_hours.next_close(sim_start())
    with start_exchange(tmp_path, start=close - timedelta(minutes=3), speed=240.0) as thread:
        client = TradingClient(KEY, SECRET, url_override=thread.server.urls["trading_url"])
        collector = _Collector(TradingStream(KEY, SECRET, url_override=thread.server.urls["trading_stream_url"]))
        collector.stream.subscribe_trade_updates(collector.handler)
        collector.start()
        try:
            wait_for(lambda: admin(thread, "GET", "status")["connections"]["listening"] >= 1, what="listening")
            client.submit_order(_resting("expiring"))
            wait_for(lambda: [_ev(u) for u in collector.items] == ["new", "expired"], timeout_s=15,
                     what="the expired event")
            assert client.get_order_by_client_id("expiring").status.value == "expired"
            assert client.get_clock().is_open is False
        finally:
            collector.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_starts_and_stops_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    env = {**os.environ, "STEADYHAND_EXCHANGE_API_KEY": KEY, "STEADYHAND_EXCHANGE_SECRET_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand", "exchange", "serve", "--port", "0",
                             "--data-dir", str(tmp_path), *start_args()], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    port = 0
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert "serving on 127.0.0.1:" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
        port = int(first.split("127.0.0.1:")[1].split()[0])
        lines = [proc.stdout.readline() for _ in range(4)] if proc.stdout else []
        assert any(f'trading_url = "http://127.0.0.1:{port}"' in line for line in lines)
        client = TradingClient(KEY, SECRET, url_override=f"http://127.0.0.1:{port}")
        assert client.get_account().status.value == "ACTIVE"
        assert (tmp_path / "exchange.json").exists()
        listening = procs.listening_sockets([proc.pid])
        assert listening and all(host == "127.0.0.1" for _pid, host, _port in listening)
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert port and not procs.port_listening(port)
    assert not (tmp_path / "exchange.json").exists()
    assert not procs.pid_alive(proc.pid)


def test_stream_handshake_errors(exchange: ServerThread) -> None:
    import msgpack
    from websockets.sync.client import connect

    url = exchange.server.urls["data_stream_url"]
    with connect(url) as ws:
        assert msgpack.unpackb(ws.recv(timeout=5)) == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["AAPL"]}))
        assert msgpack.unpackb(ws.recv(timeout=5))[0]["code"] == 401
        ws.send(msgpack.packb({"action": "auth", "key": KEY, "secret": "nope"}))
        assert msgpack.unpackb(ws.recv(timeout=5))[0] == {"T": "error", "code": 402, "msg": "auth failed"}
    with connect(exchange.server.urls["trading_stream_url"]) as ws:
        ws.send('{"action": "authenticate", "data": {"key_id": "x", "secret_key": "y"}}')
        reply = ws.recv(timeout=5)
        assert b'"unauthorized"' in (reply if isinstance(reply, bytes) else reply.encode())
