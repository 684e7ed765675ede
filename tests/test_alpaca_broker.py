"""AlpacaBroker and AlpacaBarSource (real alpaca-py underneath) against the local exchange server.

Every error case checks its outcome and that the client order id exists at most once at the
exchange. Nothing sleeps to synchronise: tests wait on conditions with a deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest
from alpaca_exchange import KEY, SECRET, admin, alpaca_settings, inject, module_exchange, start_exchange, wait_for
from steadyhand.brokers import make_broker
from steadyhand.brokers.alpaca.broker import AlpacaBroker
from steadyhand.brokers.alpaca.feed import AlpacaBarSource
from steadyhand.brokers.alpaca.transport import RateLimiter
from steadyhand.brokers.base import (
    Broker,
    BrokerError,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    UnknownOutcome,
)
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import Fill, OrderSpec, OrderStatus, OrderType, Side
from steadyhand.runtime import procs
from steadyhand.sim.clock import stored_clock
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.market import load_market
from steadyhand.sim.server import ServerThread


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    yield from module_exchange(tmp_path_factory, "alpaca")


@pytest.fixture
def broker(exchange: ServerThread) -> Iterator[AlpacaBroker]:
    b = AlpacaBroker(alpaca_settings(exchange), api_key=KEY, secret_key=SECRET, retry_wait_s=0.05,
                     reconnect_min_s=0.2)
    yield b
    b.close()
    assert b._stream is None


def _count_orders(exchange: ServerThread, cid: str) -> int:
    client = TradingClient(KEY, SECRET, url_override=exchange.server.urls["trading_url"])
    orders = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
    return sum(1 for o in orders if o.client_order_id == cid)


def _buy(cid: str, qty: int = 10, symbol: str = "AAPL") -> OrderSpec:
    return OrderSpec(client_order_id=cid, symbol=symbol, side=Side.BUY, qty=qty)


def _resting(cid: str) -> OrderSpec:
    return OrderSpec(client_order_id=cid, symbol="MSFT", side=Side.BUY, qty=3, type=OrderType.LIMIT,
                     limit_price=Decimal("1.00"))


class _Consumer:
    """Polls like the OMS does and keeps what it got."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.cursor = broker.poll(None).cursor
        self.orders: dict[str, Any] = {}
        self.fills: list[Fill] = []

    def poll(self) -> _Consumer:
        updates = self.broker.poll(self.cursor)
        self.cursor = updates.cursor
        for o in updates.orders:
            self.orders[o.client_order_id] = o
        self.fills.extend(updates.fills)
        return self

    def filled(self, cid: str) -> int:
        return sum(f.qty for f in self.fills if f.client_order_id == cid)


def test_broker_protocol_and_stream_updates(broker: AlpacaBroker, exchange: ServerThread) -> None:
    assert isinstance(broker, Broker) and broker._client._retry == 0 and broker._client._retry_codes == []
    wait_for(lambda: broker.stream_connected, what="the trade updates stream")
    consumer = _Consumer(broker)
    cash0 = broker.account().cash
    order = broker.submit(_buy("b-fill", qty=10))
    assert order.status is OrderStatus.SUBMITTED and order.client_order_id == "b-fill"
    wait_for(lambda: consumer.poll().filled("b-fill") == 10
             and consumer.orders["b-fill"].status is OrderStatus.FILLED, what="b-fill filled")
    fills = [f for f in consumer.fills if f.client_order_id == "b-fill"]
    assert len(fills) >= 2 and len({f.fill_id for f in fills}) == len(fills)  # partial fills, each once
    assert {f.broker_order_id for f in fills} == {order.broker_order_id}
    assert sorted(f.fill_id for f in broker.fills_for(order.broker_order_id)) == sorted(f.fill_id for f in fills)
    found = broker.get_by_client_id("b-fill")
    assert found is not None and found.filled_qty == 10 and found.avg_fill_price is not None
    assert any(p.symbol == "AAPL" and p.qty >= 10 for p in broker.positions())
    assert broker.account().cash < cash0
    assert broker.clock().is_open is True
    assert broker.calendar(broker.clock().timestamp.date() - timedelta(days=7), broker.clock().timestamp.date())

    resting = broker.submit(_resting("b-rest"))
    assert [o.client_order_id for o in broker.open_orders()] == ["b-rest"]
    broker.cancel(resting.broker_order_id)
    wait_for(lambda: consumer.poll().orders.get("b-rest") is not None
             and consumer.orders["b-rest"].status is OrderStatus.CANCELED, what="the cancel update")
    with pytest.raises(NotCancelable):
        broker.cancel(resting.broker_order_id)
    with pytest.raises(OrderNotFound):
        broker.cancel("00000000-0000-4000-8000-000000000000")
    with pytest.raises(OrderNotFound):
        broker.cancel("not-a-uuid")
    assert broker.get_by_client_id("never-placed") is None
    assert broker.polling_fallback is False


def test_stream_drop_is_survived_without_missing_a_fill(exchange: ServerThread) -> None:
    # No periodic REST fallback: only the catch-up sweep after the reconnect can find the fill.
    broker = AlpacaBroker(alpaca_settings(exchange), api_key=KEY, secret_key=SECRET, fallback_poll_s=3600,
                          reconnect_min_s=0.5)
    try:
        wait_for(lambda: broker.stream_connected, what="the stream")
        consumer = _Consumer(broker)
        consumer.poll()  # the first sweep after connecting
        admin(exchange, "POST", "drop_streams", {"which": "trade"})
        wait_for(lambda: not broker.stream_connected, what="the client to notice the drop")
        assert broker.polling_fallback is True
        order = broker.submit(_buy("drop-fill", qty=8, symbol="SPY"))
        # The fill happens while nobody listens: the server's updates for it go nowhere.
        wait_for(lambda: broker.get_by_client_id("drop-fill").status is OrderStatus.FILLED,  # type: ignore[union-attr]
                 what="the order to fill at the exchange")
        wait_for(lambda: broker.stream_connected, timeout_s=15, what="the stream to reconnect")
        wait_for(lambda: consumer.poll().filled("drop-fill") == 8, what="the missed fills")
        assert consumer.orders["drop-fill"].status is OrderStatus.FILLED
        consumer.poll()
        assert consumer.filled("drop-fill") == 8  # and not twice
        assert {f.broker_order_id for f in consumer.fills if f.client_order_id == "drop-fill"} == {
            order.broker_order_id}
    finally:
        broker.close()


def test_rest_polling_when_there_is_no_stream(exchange: ServerThread) -> None:
    broker = AlpacaBroker(alpaca_settings(exchange), api_key=KEY, secret_key=SECRET, stream=False,
                          fallback_poll_s=0.05)
    try:
        consumer = _Consumer(broker)
        broker.submit(_buy("poll-fill", qty=6, symbol="QQQ"))
        # Fills and the order's status may arrive in different polls: wait for both.
        wait_for(lambda: consumer.poll().filled("poll-fill") == 6
                 and consumer.orders["poll-fill"].status is OrderStatus.FILLED, what="filled by REST polling")
        assert broker.polling_fallback is True
        consumer.poll()
        assert consumer.filled("poll-fill") == 6
    finally:
        broker.close()


def test_open_orders_are_read_page_by_page(tmp_path: Path) -> None:
    # Reconciliation takes open_orders() as the broker's whole open book: past Alpaca's page of 500
    # nothing may be missing or repeated (an order past the page would be looked up one by one, or,
    # unknown to the journal, never seen). The book is seeded straight into the exchange's file.
    thread = start_exchange(tmp_path)
    try:
        db_path = tmp_path / "exchange.db"
        clock = stored_clock(db_path)  # the server's anchored clock
        assert clock is not None
        seeder = SimExchange(db_path, load_market(thread.server.settings.sim, thread.server.symbols), clock,
                             faults=False)
        for k in range(505):
            seeder.submit(_resting(f"many-{k}"))
        seeder.close()
        broker = AlpacaBroker(alpaca_settings(thread), api_key=KEY, secret_key=SECRET, retry_wait_s=0.05)
        try:
            listed = [o.client_order_id for o in broker.open_orders()]
        finally:
            broker.close()
        assert sorted(listed) == sorted(f"many-{k}" for k in range(505))
    finally:
        thread.stop()


def test_duplicate_403_and_404(broker: AlpacaBroker, exchange: ServerThread) -> None:
    broker.submit(_buy("dup-1", qty=1))
    with pytest.raises(DuplicateClientOrderId):
        broker.submit(_buy("dup-1", qty=1))
    assert _count_orders(exchange, "dup-1") == 1
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit(_buy("too-big", qty=10_000_000))
    assert broker.get_by_client_id("too-big") is None
    with pytest.raises(OrderNotFound):
        broker.fills_for("00000000-0000-4000-8000-000000000000")


def test_429_burst_is_retried_and_places_one_order(broker: AlpacaBroker, exchange: ServerThread) -> None:
    inject(exchange, method="POST", path="/v2/orders", status=429, count=2)
    order = broker.submit(_buy("burst-ok", qty=1))
    assert order.client_order_id == "burst-ok"
    assert _count_orders(exchange, "burst-ok") == 1

    inject(exchange, method="POST", path="/v2/orders", status=429, count=5)
    with pytest.raises(TransientBrokerError, match="429"):
        broker.submit(_buy("burst-long", qty=1))  # 3 attempts, all limited
    assert broker.get_by_client_id("burst-long") is None
    admin(exchange, "DELETE", "faults")
    assert broker.submit(_buy("burst-long", qty=1)).client_order_id == "burst-long"
    assert _count_orders(exchange, "burst-long") == 1


def test_5xx_before_and_after_processing(broker: AlpacaBroker, exchange: ServerThread) -> None:
    inject(exchange, method="GET", path="/v2/positions", status=503, count=1)
    assert isinstance(broker.positions(), list)  # retried
    inject(exchange, method="GET", path="/v2/account", status=500, count=3)
    with pytest.raises(TransientBrokerError):
        broker.account()
    # The order lands but the reply is a 502: the retry re-posts the same id, gets "duplicate",
    # and looks the order up: one order, returned to the caller.
    inject(exchange, method="POST", path="/v2/orders", status=502, after=True, count=1)
    order = broker.submit(_buy("landed-502", qty=1))
    assert order.client_order_id == "landed-502"
    assert _count_orders(exchange, "landed-502") == 1


def test_timeout_is_an_unknown_outcome_and_never_a_second_order(exchange: ServerThread) -> None:
    settings = dataclasses.replace(alpaca_settings(exchange), timeout_s=0.3)
    broker = AlpacaBroker(settings, api_key=KEY, secret_key=SECRET, stream=False)
    try:
        inject(exchange, method="POST", path="/v2/orders", delay_s=1.0, after=True, count=1)
        with pytest.raises(UnknownOutcome):
            broker.submit(_buy("slow-1", qty=1))
        found = wait_for(lambda: broker.get_by_client_id("slow-1"), what="the order that did land")
        assert found.client_order_id == "slow-1"
        with pytest.raises(DuplicateClientOrderId):
            broker.submit(_buy("slow-1", qty=1))  # what the OMS's retry would meet
        assert _count_orders(exchange, "slow-1") == 1
        inject(exchange, method="GET", path="/v2/clock", delay_s=1.0, count=3)
        with pytest.raises(TransientBrokerError):
            broker.clock()  # a read that times out is safe to retry, so it is transient
    finally:
        broker.close()


def test_secrets_never_logged(exchange: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = AlpacaBroker(alpaca_settings(exchange), api_key=KEY, secret_key=SECRET, reconnect_min_s=0.2)
    try:
        wait_for(lambda: broker.stream_connected, what="the stream")
        admin(exchange, "POST", "drop_streams", {"which": "trade"})
        inject(exchange, method="GET", path="/v2/account", status=500, count=3)
        with pytest.raises(TransientBrokerError) as exc:
            broker.account()
        assert SECRET not in str(exc.value) and SECRET not in repr(broker.__dict__.get("settings"))
    finally:
        broker.close()
    assert SECRET not in caplog.text


def test_bar_source_streams_and_history(exchange: ServerThread) -> None:
    source = AlpacaBarSource(alpaca_settings(exchange), ["AAPL", "NVDA"], api_key=KEY, secret_key=SECRET,
                             reconnect_min_s=0.2)
    try:
        now = exchange.server.clock.now()
        past = source.history(["AAPL", "NVDA"], now, 20)
        assert len(past) == 40 and all(b.ts < now for b in past)
        assert [b.ts for b in past] == sorted(b.ts for b in past)
        source.start()
        got: list[Any] = []
        wait_for(lambda: got.extend(source.drain()) or {b.symbol for b in got} == {"AAPL", "NVDA"},
                 what="live bars")
        assert source.connected and all(b.ts.tzinfo is not None and b.volume > 0 for b in got)
        wait_for(lambda: set(source.latest_quotes()) == {"AAPL", "NVDA"}, what="quotes")
        bid, ask, _ts = source.latest_quotes()["AAPL"]
        assert 0 < bid < ask
        admin(exchange, "POST", "drop_streams", {"which": "data"})
        wait_for(lambda: not source.connected, what="the data stream drop")
        wait_for(lambda: source.connected, timeout_s=15, what="the data stream to come back")
        source.drain()
        wait_for(lambda: source.drain(), what="bars after the reconnect")
    finally:
        source.close()
    assert not source.connected


def test_make_broker_and_live_refusal(exchange: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(broker="alpaca", alpaca=alpaca_settings(exchange))
    run = RunSettings(settings=settings, data_dir="unused", clock=None)
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    with pytest.raises(BrokerError, match="ALPACA_API_KEY"):
        make_broker(run)
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    broker = make_broker(run)
    try:
        assert isinstance(broker, AlpacaBroker) and broker.endpoints.paper
        assert broker.clock().is_open is True
    finally:
        broker.close()
    live = Settings(broker="alpaca", alpaca=dataclasses.replace(alpaca_settings(exchange), paper=False))
    with pytest.raises(BrokerError, match="live trading refused"):
        AlpacaBroker.from_settings(live)


def test_rate_limiter_keeps_under_the_rate() -> None:
    limiter = RateLimiter(per_minute=1200, burst=2)  # 20 a second
    start = time.monotonic()
    waits = [limiter.acquire() for _ in range(6)]
    elapsed = time.monotonic() - start
    assert waits[:2] == [0.0, 0.0] and elapsed >= 4 / 20 * 0.9  # the burst, then the rate


def test_paths_left_clean(tmp_path: Path) -> None:
    # A server stopped in a test leaves nothing listening (the module fixture checks its own too).
    with start_exchange(tmp_path) as thread:
        port = thread.server.port
        assert procs.port_listening(port)
    assert not procs.port_listening(port)
