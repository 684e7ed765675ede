"""Broker.replace on the sim book (Alpaca's shape: a new order, the old one REPLACED), and the
derived replacement client order id. The clock is a manual one inside the suite's pinned session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from crashkit import ManualClock
from steadyhand.brokers.base import (
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    replacement_client_id,
)
from steadyhand.domain import OrderSpec, OrderStatus, OrderType, Side
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.market import load_market
from twskit import face_settings, session_clock

FAR = Decimal("1.00")  # a buy limit this far below the market never fills
HIGH = Decimal("10000.00")  # a buy limit this high fills at once


@pytest.fixture
def clock() -> ManualClock:
    return session_clock()


@pytest.fixture
def book(tmp_path: Path, clock: ManualClock) -> Iterator[SimExchange]:
    sim = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                      partial_fill_probability=0.0, faults=False)
    yield sim
    sim.close()


def limit(cid: str, qty: int = 10, price: Decimal = FAR, side: Side = Side.BUY) -> OrderSpec:
    return OrderSpec(cid, "AAPL", side, qty, type=OrderType.LIMIT, limit_price=price)


def test_replacement_client_id_is_derived_and_keeps_the_prefix() -> None:
    assert replacement_client_id("sma-AAPL-20261120T1431Z-B0") == "sma-AAPL-20261120T1431Z-B0~r1"
    assert replacement_client_id("sma-AAPL-20261120T1431Z-B0~r1") == "sma-AAPL-20261120T1431Z-B0~r2"
    assert replacement_client_id("x~rz") == "x~rz~r1"  # not a counter: a suffix is added


def test_replace_makes_a_new_order_and_the_old_one_replaced(book: SimExchange, clock: ManualClock) -> None:
    old = book.submit(limit("s-1"))
    new = book.replace(old.broker_order_id, qty=7, limit_price=Decimal("2.00"))
    assert new.broker_order_id != old.broker_order_id
    assert (new.client_order_id, new.replaces, new.qty, new.limit_price, new.status) == (
        "s-1~r1", old.broker_order_id, 7, Decimal("2.00"), OrderStatus.SUBMITTED)
    gone = book.get_order(old.broker_order_id)
    assert (gone.status, gone.replaced_by) == (OrderStatus.REPLACED, new.broker_order_id)
    assert [o.client_order_id for o in book.open_orders()] == ["s-1~r1"]
    # the same replace again meets the replacement it made: never a second order
    with pytest.raises(NotCancelable):
        book.replace(old.broker_order_id, qty=7)
    with pytest.raises(DuplicateClientOrderId):
        book.submit(limit("s-1~r1"))
    # the new order fills on the new terms
    book.replace(new.broker_order_id, limit_price=HIGH)
    clock.t += timedelta(seconds=2)
    [filled] = [o for o in book.all_orders() if o.client_order_id == "s-1~r2"]
    assert (filled.status, filled.filled_qty, filled.replaces) == (OrderStatus.FILLED, 7, new.broker_order_id)
    assert sum(f.qty for f in book.all_fills()) == 7


def test_replace_of_a_part_filled_order_trades_what_is_left(tmp_path: Path, clock: ManualClock) -> None:
    book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                       partial_fill_probability=1.0, faults=False)
    try:
        old = book.submit(limit("p-1", qty=1_000_000, price=FAR, side=Side.SELL))  # sells a part each second
        clock.t += timedelta(seconds=3)
        filled = book.get_order(old.broker_order_id).filled_qty
        assert 0 < filled < 1_000_000
        with pytest.raises(OrderRejected, match="already filled"):
            book.replace(old.broker_order_id, qty=filled)
        new = book.replace(old.broker_order_id, qty=filled + 5, limit_price=HIGH)  # no bid reaches it
        assert (new.qty, new.filled_qty) == (5, 0)
        assert book.get_order(old.broker_order_id).filled_qty == filled  # kept on the old order
        clock.t += timedelta(seconds=3)
        assert book.get_order(new.broker_order_id).filled_qty == 0
    finally:
        book.close()


def test_replace_refusals_leave_the_order_working(book: SimExchange, clock: ManualClock) -> None:
    old = book.submit(limit("r-1"))
    with pytest.raises(OrderRejected, match="sub-penny"):
        book.replace(old.broker_order_id, limit_price=Decimal("2.005"))
    with pytest.raises(OrderRejected, match="buying power"):
        book.replace(old.broker_order_id, qty=10_000_000, limit_price=HIGH)
    assert book.get_order(old.broker_order_id).status is OrderStatus.SUBMITTED
    with pytest.raises(OrderNotFound):
        book.replace("no-such-order", qty=1)
    filled = book.submit(limit("r-2", price=HIGH))
    clock.t += timedelta(seconds=2)
    with pytest.raises(NotCancelable, match="filled"):  # it filled first
        book.replace(filled.broker_order_id, qty=20)
