"""The OMS's replace path (orders/amend.py) on real journal files and a real broker, for both shapes:
the sim and Alpaca (alpaca-py against the exchange's Alpaca face) make a new order, IBKR amends in
place (through ib_async and the TWS face).
Killed at each replace crash point, a fresh host's reconciliation leaves the journal agreeing with
the broker whichever way it went. Clocks are manual, inside the suite's pinned session; waits are
deadline polls."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from amendkit import Host, crash_at, row
from crashkit import ManualClock
from harness import poll
from steadyhand.domain import OrderSpec, OrderStatus, OrderType, Side
from steadyhand.orders import amend
from steadyhand.orders.journal import ReplaceState
from steadyhand.sim import faults
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.market import load_market
from twskit import face_settings, session_clock, tws_face

FAR = Decimal("1.00")  # a buy limit this far below the market never fills
HIGH = Decimal("10000.00")  # a buy limit this high fills at once


@dataclass
class Venue:
    kind: str  # "sim", "alpaca": a new order per replace; "ibkr": in place
    broker: Any
    clock: ManualClock
    data_dir: Path

    def host(self) -> Host:
        return Host(self.data_dir, self.broker, self.clock)

    def working(self, host: Host, cid: str) -> dict[str, Any]:
        """The journal row that works now for ``cid`` (after a replace: the new one on the sim)."""
        head = host.journal.head(cid)
        assert head is not None
        return dict(head)

    @property
    def new_order_shape(self) -> bool:
        return self.kind != "ibkr"


@pytest.fixture(params=["sim", "alpaca", "ibkr"])
def venue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Venue]:
    clock = session_clock()
    if request.param == "sim":
        book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                           partial_fill_probability=0.0)
        yield Venue("sim", book, clock, tmp_path)
        book.close()
        return
    if request.param == "alpaca":
        from alpaca_exchange import KEY, SECRET, alpaca_settings
        from steadyhand.brokers.alpaca.broker import AlpacaBroker
        from steadyhand.sim.server import ExchangeServer, ServerThread

        server = ServerThread(ExchangeServer(tmp_path / "exchange", face_settings(), clock=clock,
                                             credentials=(KEY, SECRET), rate_limit_per_minute=0)).start()
        alpaca = AlpacaBroker(alpaca_settings(server), api_key=KEY, secret_key=SECRET, retry_wait_s=0.05,
                              reconnect_min_s=0.2)
        try:
            yield Venue("alpaca", alpaca, clock, tmp_path)
        finally:
            alpaca.close()
            server.stop()
        return
    from steadyhand.brokers.ibkr.broker import IbkrBroker
    from steadyhand.config import IbkrSettings

    with tws_face(tmp_path / "exchange", clock) as face:
        (tmp_path / "bot").mkdir()
        settings = dataclasses.replace(IbkrSettings(port=face.server.port, client_id=11, timeout_s=2.0))
        broker = IbkrBroker(settings, data_dir=tmp_path / "bot", clock=clock, reconnect_min_s=0.1,
                            in_use_retry_s=0.3)
        try:
            yield Venue("ibkr", broker, clock, tmp_path)
        finally:
            broker.close()


def limit(cid: str, qty: int = 10, price: Decimal = FAR) -> OrderSpec:
    return OrderSpec(cid, "AAPL", Side.BUY, qty, type=OrderType.LIMIT, limit_price=price)


def fill_and_drain(venue: Venue, host: Host, cid: str, qty: int) -> None:
    """Let the market fill it and the journal hear of it."""
    venue.clock.t += timedelta(seconds=2)
    poll(lambda: host.drain_updates() and venue.working(host, cid)["status"] == OrderStatus.FILLED.value,
         10, 0.02, what=f"{cid} filled in the journal")
    fills = host.db.execute("SELECT sum(qty) FROM fills").fetchone()[0]
    assert fills == qty


def test_replace_is_journaled_in_the_brokers_shape_and_fills_on_the_new_terms(venue: Venue) -> None:
    host = venue.host()
    host.drain_updates()
    host.submit(limit("sma-A-1"))
    assert amend.replace(host, "sma-A-1", 7, Decimal("2.00"), None, "amend") == "applied"
    first = row(host, "sma-A-1")
    now = venue.working(host, "sma-A-1")
    if venue.new_order_shape:
        assert (first["status"], first["replaced_by"], first["replace_state"]) == (
            "replaced", "sma-A-1~r1", ReplaceState.APPLIED)
        assert (now["client_order_id"], now["replaces"], now["qty"], Decimal(now["limit_price"])) == (
            "sma-A-1~r1", "sma-A-1", 7, Decimal("2.00"))
    else:
        assert (first["qty"], Decimal(first["limit_price"]), first["replace_state"], first["status"]) == (
            7, Decimal("2.00"), ReplaceState.APPLIED, "submitted")
    # a second replace, by the strategy's original id: it follows the chain to the working order
    assert amend.replace(host, "sma-A-1", None, HIGH, None) == "applied"
    fill_and_drain(venue, host, "sma-A-1", 7)
    assert host.journal.positions() == {"AAPL": 7}
    assert host.reconcile()["unknown_orders"] == []
    assert amend.replace(host, "sma-A-1", 9, None, None).startswith("refused: already filled")


def test_killed_after_the_intent_is_journaled(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    host = venue.host()
    original = host.submit(limit("sma-B-1"))
    with crash_at(monkeypatch, "oms.after_replace_journal"):
        amend.replace(host, "sma-B-1", 5, Decimal("2.00"), None)
    assert row(host, "sma-B-1")["replace_state"] == ReplaceState.PENDING  # committed before the broker
    host.close()
    restarted = venue.host()
    report = restarted.reconcile()
    assert report["replaces_settled"] == {"sma-B-1": "not_applied"}
    after = row(restarted, "sma-B-1")
    assert (after["replace_state"], after["status"], after["qty"], Decimal(after["limit_price"])) == (
        ReplaceState.NOT_APPLIED, "submitted", 10, FAR)
    at_broker = venue.broker.get_by_client_id("sma-B-1")
    assert (at_broker.broker_order_id, at_broker.qty, at_broker.status) == (
        original.broker_order_id, 10, OrderStatus.SUBMITTED)  # the broker never heard of it
    assert report["unknown_orders"] == [] and report["lost_at_broker"] == []
    assert amend.replace(restarted, "sma-B-1", 5, None, None) == "applied"  # and it can be tried again


def test_killed_after_the_broker_replaced_it(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    host = venue.host()
    host.submit(limit("sma-C-1"))
    with crash_at(monkeypatch, "oms.after_replace"):
        amend.replace(host, "sma-C-1", 6, HIGH, None)  # marketable: it fills while the bot is down
    host.close()
    venue.clock.t += timedelta(seconds=2)
    # filled at the broker while the bot is down (the adapter outlives this "restart": let it hear of it)
    poll(lambda: any(o.client_order_id.startswith("sma-C-1") and o.status is OrderStatus.FILLED
                     for o in [venue.broker.get_by_client_id("sma-C-1"), venue.broker.get_by_client_id("sma-C-1~r1")]
                     if o is not None), 10, 0.02, what="filled at the broker")
    restarted = venue.host()
    report = restarted.reconcile()
    assert report["replaces_settled"] == {"sma-C-1": "applied"}
    assert report["position_differences"] == {}
    assert report["unknown_orders"] == []  # the broker's new order is ours, not a stranger to cancel
    now = venue.working(restarted, "sma-C-1")
    assert (now["qty"], Decimal(now["limit_price"])) == (6, HIGH)
    if venue.new_order_shape:
        assert (now["client_order_id"], now["replaces"]) == ("sma-C-1~r1", "sma-C-1")
        assert row(restarted, "sma-C-1")["status"] == "replaced"
    # (the faces report the fill when their own loop gets to it: the poll brings it)
    poll(lambda: restarted.drain_updates() is not None and restarted.journal.positions() == {"AAPL": 6}
         and venue.working(restarted, "sma-C-1")["status"] == "filled", 10, 0.02, what="the fills journaled")
    assert restarted.db.execute("SELECT sum(qty) FROM fills").fetchone()[0] == 6
    assert row(restarted, "sma-C-1")["replace_state"] == ReplaceState.APPLIED


def test_a_replace_the_order_outran_is_refused_and_the_order_ends_as_the_broker_says(venue: Venue) -> None:
    host = venue.host()
    host.submit(limit("sma-D-1", price=HIGH))
    venue.clock.t += timedelta(seconds=2)  # filled at the broker; the journal has not polled yet
    poll(lambda: venue.broker.get_by_client_id("sma-D-1").status is OrderStatus.FILLED, 10, 0.02,
         what="filled at the broker")
    outcome = amend.replace(host, "sma-D-1", 20, None, None)
    assert outcome.startswith("refused")
    assert row(host, "sma-D-1")["replace_state"] == ReplaceState.REFUSED
    fill_and_drain(venue, host, "sma-D-1", 10)
    assert host.reconcile()["replaces_settled"] == {}


def test_a_lost_reply_is_settled_from_the_broker(tmp_path: Path) -> None:
    clock = session_clock()
    book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                       partial_fill_probability=0.0)
    host = Host(tmp_path, book, clock)
    try:
        host.submit(limit("sma-E-1"))
        faults.set_fault(tmp_path, "timeout", delay_s=0.0, ops=("replace",))  # done, but the reply is lost
        assert amend.replace(host, "sma-E-1", 4, None, None) == "pending"
        faults.clear_fault(tmp_path)
        assert row(host, "sma-E-1")["replace_state"] == ReplaceState.PENDING
        assert amend.replace(host, "sma-E-1", 3, None, None) == "refused: a replace of it is already in flight"
        assert amend.settle_pending(host) == {"sma-E-1": "applied"}
        assert (host.journal.head("sma-E-1")["client_order_id"], host.journal.head("sma-E-1")["qty"]) == (
            "sma-E-1~r1", 4)
    finally:
        host.close()
        book.close()


def test_only_a_strategys_own_orders_and_only_working_ones(tmp_path: Path) -> None:
    assert amend.owned_by("sma", "sma-AAPL-20261120T1431Z-B0~r1")
    assert not amend.owned_by("sma", "smart-AAPL-1") and not amend.owned_by("", "sma-AAPL-1")
    assert not amend.owned_by("sma", "flat-abc-AAPL")  # the operator's flatten orders
    clock = session_clock()
    book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                       partial_fill_probability=0.0, faults=False)
    host = Host(tmp_path, book, clock)
    try:
        assert amend.replace(host, "sma-none", 1, None, None) == "refused: unknown order"
        host.journal.insert_pending((limit("sma-F-1"),))
        assert amend.replace(host, "sma-F-1", 1, None, None) == "refused: not at the broker yet (pending submit)"
        assert amend.cancel(host, "sma-F-1") == "refused: not at the broker yet (pending submit)"
        host.submit(limit("sma-G-1"))
        assert amend.cancel(host, "sma-G-1") == "requested"
        host.drain_updates()
        assert row(host, "sma-G-1")["status"] == "canceled"
        assert amend.cancel(host, "sma-G-1") == "refused: already canceled"
    finally:
        host.close()
        book.close()
