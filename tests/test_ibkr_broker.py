"""The IBKR adapter (brokers/ibkr) against the TWS face of the local exchange, through the real
ib_async client. The face's clock is a manual one inside a past session: orders fill when a test
moves it. Waits are deadline polls, never sleeps."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit import ManualClock
from harness import poll
from ib_async import IB
from steadyhand.brokers.base import (
    BrokerError,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    UnknownOutcome,
)
from steadyhand.brokers.ibkr.broker import AccountRefused, IbkrBroker
from steadyhand.brokers.ibkr.feed import IbkrBarSource
from steadyhand.config import IbkrSettings
from steadyhand.domain import Fill, OrderSpec, OrderStatus, OrderType, Side
from steadyhand.sim.server.tws import TwsServerThread
from twskit import session_clock, tws_face

FAR = Decimal("1.00")  # a buy limit this far below the market never fills


@pytest.fixture
def clock() -> ManualClock:
    return session_clock()


@pytest.fixture
def face(tmp_path: Path, clock: ManualClock) -> Iterator[TwsServerThread]:
    with tws_face(tmp_path / "exchange", clock) as thread:
        yield thread


def settings_for(thread: TwsServerThread, **kw: Any) -> IbkrSettings:
    return dataclasses.replace(IbkrSettings(port=thread.server.port, client_id=11, timeout_s=2.0), **kw)


def adapter(thread: TwsServerThread, tmp_path: Path, clock: ManualClock, sub: str = "bot", **kw: Any) -> IbkrBroker:
    (tmp_path / sub).mkdir(exist_ok=True)
    return IbkrBroker(settings_for(thread, **kw), data_dir=tmp_path / sub, clock=clock, reconnect_min_s=0.1,
                      in_use_retry_s=0.3)


def market(cid: str, qty: int = 10, side: Side = Side.BUY) -> OrderSpec:
    return OrderSpec(cid, "AAPL", side, qty)


def limit(cid: str, price: Decimal = FAR) -> OrderSpec:
    return OrderSpec(cid, "AAPL", Side.BUY, 5, type=OrderType.LIMIT, limit_price=price)


def fills_until(broker: IbkrBroker, cursor: str, count: int) -> tuple[list[Fill], str]:
    got: list[Fill] = []

    def more() -> bool:
        nonlocal cursor
        batch = broker.poll(cursor)
        cursor = batch.cursor
        got.extend(batch.fills)
        return len(got) >= count

    poll(more, 10, 0.02, what=f"{count} fill(s)")
    return got, cursor


def test_submit_fill_lookup_cancel_positions_account(face: TwsServerThread, tmp_path: Path,
                                                     clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        cursor = broker.poll(None).cursor
        ack = broker.submit(market("bot-1"))
        assert (ack.client_order_id, ack.status, ack.qty, ack.submitted_at) == ("bot-1", OrderStatus.SUBMITTED,
                                                                                10, clock.t)
        clock.t += timedelta(seconds=2)
        [fill], cursor = fills_until(broker, cursor, 1)
        assert (fill.client_order_id, fill.broker_order_id, fill.qty, fill.side) == ("bot-1", ack.broker_order_id,
                                                                                     10, Side.BUY)
        assert fill.fill_id.endswith(".01.01")
        assert broker.fills_for(ack.broker_order_id) == [fill]
        done = poll(lambda: (o := broker.get_by_client_id("bot-1")) and o.status is OrderStatus.FILLED and o, 10)
        assert (done.filled_qty, done.avg_fill_price) == (10, fill.price)
        assert broker.get_by_client_id("never-sent") is None
        [pos] = broker.positions()
        assert (pos.symbol, pos.qty, pos.avg_entry_price) == ("AAPL", 10, fill.price)
        acct = broker.account()
        assert acct.cash == Decimal("100000.00") - fill.price * 10
        assert broker.clock().timestamp == clock.t.replace(microsecond=0)
        poll(lambda: broker.commissions.get(fill.fill_id) == 1.0, 10, what="commission joined by execId")

        working = broker.submit(limit("bot-2"))
        assert [o.client_order_id for o in broker.open_orders()] == ["bot-2"]
        broker.cancel(working.broker_order_id)
        poll(lambda: broker.get_by_client_id("bot-2").status is OrderStatus.CANCELED, 10, what="canceled")
        with pytest.raises(NotCancelable):
            broker.cancel(ack.broker_order_id)
        with pytest.raises(OrderNotFound):
            broker.cancel("987654")
        with pytest.raises(DuplicateClientOrderId):
            broker.submit(market("bot-1"))  # IB would take it: the adapter does not
        assert broker.open_orders() == []
    finally:
        broker.close()


def test_order_ref_unique_and_ids_never_reused_across_restart_and_gateway_reset(
        face: TwsServerThread, tmp_path: Path, clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        first = broker.submit(limit("bot-a"))
    finally:
        broker.close()
    face.run_coroutine(face.server.gateway_restart)  # nextValidId starts over at 1
    broker = adapter(face, tmp_path, clock)  # a restarted OMS: the same data dir
    try:
        with pytest.raises(DuplicateClientOrderId):
            broker.submit(limit("bot-a"))  # known to the Gateway (open): never placed twice
        second = broker.submit(limit("bot-b"))
        assert int(second.broker_order_id) > int(first.broker_order_id)  # persisted max + 1, not nextValidId
        broker.cancel_all()
        poll(lambda: broker.open_orders() == [], 10, what="global cancel")
        with pytest.raises(DuplicateClientOrderId):
            broker.submit(limit("bot-b"))  # completed orders count too
    finally:
        broker.close()


def test_rejection_201_is_order_rejected_and_lookup_says_rejected(face: TwsServerThread, tmp_path: Path,
                                                                  clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        face.run_coroutine(lambda: face.server.arm(reject=1, reject_reason="insufficient margin"))
        with pytest.raises(OrderRejected, match="insufficient margin"):
            broker.submit(market("bot-rej"))
        found = broker.get_by_client_id("bot-rej")
        assert found is not None and found.status is OrderStatus.REJECTED and "margin" in found.reason
    finally:
        broker.close()


def test_a_lost_acknowledgement_is_unknown_outcome_then_found(face: TwsServerThread, tmp_path: Path,
                                                              clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock, timeout_s=0.5)
    try:
        face.run_coroutine(lambda: face.server.arm(silent_place=1))
        with pytest.raises(UnknownOutcome):
            broker.submit(limit("bot-lost"))
        found = broker.get_by_client_id("bot-lost")
        assert found is not None and found.status is OrderStatus.SUBMITTED
    finally:
        broker.close()


def test_paper_only_and_account_choice(tmp_path: Path, clock: ManualClock) -> None:
    with tws_face(tmp_path / "live", clock, accounts=("U7654321",)) as thread:
        with pytest.raises(AccountRefused, match="U7654321 is not an IB paper account"):
            adapter(thread, tmp_path, clock, sub="a")
        allowed = adapter(thread, tmp_path, clock, sub="a", allow_live=True)
        assert allowed.connected and allowed.account_id == "U7654321"
        allowed.close()
    with tws_face(tmp_path / "multi", clock, accounts=("DU111", "DU222")) as thread:
        with pytest.raises(AccountRefused, match="several accounts"):
            adapter(thread, tmp_path, clock, sub="b")
        chosen = adapter(thread, tmp_path, clock, sub="b", account="DU222")
        assert chosen.account_id == "DU222"
        chosen.close()
        # The data dir remembers the account it traded: another one is refused, naming both.
        with pytest.raises(AccountRefused, match="traded account DU222, but the Gateway trades DU111"):
            adapter(thread, tmp_path, clock, sub="b", account="DU111")


def test_dropped_socket_reconnects_and_no_fill_is_lost_or_doubled(face: TwsServerThread, tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        cursor = broker.poll(None).cursor
        broker.submit(market("bot-x", qty=3))
        face.run_coroutine(lambda: face.server.arm(exec_delay_s=30.0))  # fills would come much later
        clock.t += timedelta(seconds=2)
        poll(lambda: broker.get_by_client_id("bot-x").status is OrderStatus.FILLED, 10, what="filled")
        assert broker.poll(cursor).fills == ()  # the execution has not been reported yet ...
        face.run_coroutine(lambda: face.server.arm(exec_delay_s=0.0))
        face.run_coroutine(face.server.drop_connections)  # ... and then the socket goes
        poll(lambda: broker.connected and broker.generation == 2, 10, what="reconnected")
        [fill], cursor = fills_until(broker, cursor, 1)  # swept from reqExecutions at reconnect
        assert (fill.client_order_id, fill.qty) == ("bot-x", 3)
        face.run_coroutine(face.server.drop_connections)
        poll(lambda: broker.connected and broker.generation == 3, 10, what="reconnected again")
        assert broker.poll(cursor).fills == ()  # the same execution is not reported twice
    finally:
        broker.close()


def test_system_messages_1100_and_1102(face: TwsServerThread, tmp_path: Path, clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        face.run_coroutine(lambda: face.server.send_system(1100))
        poll(lambda: not broker.connected, 10, what="1100 marks the broker down")
        with pytest.raises(TransientBrokerError, match="1100"):
            broker.positions()
        with pytest.raises(TransientBrokerError, match="1100"):
            broker.poll(None)  # the OMS's poll fails too: its circuit opens
        face.run_coroutine(lambda: face.server.send_system(1102))
        poll(lambda: broker.connected, 10, what="1102 restores it")
        assert broker.positions() == []
    finally:
        broker.close()


def test_pacing_violation_backs_off_on_the_loop(face: TwsServerThread, tmp_path: Path,
                                                 clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        face.run_coroutine(lambda: face.server.arm(pacing=1))
        broker.submit(limit("bot-paced"))  # answered, with error 100 alongside
        poll(lambda: broker._pace_until > 0, 10, what="back-off armed")
        started = time.monotonic()
        assert broker.positions() == []  # waits out the back-off (asyncio.sleep on the loop) first
        assert time.monotonic() - started >= 0.5  # a lower bound: holds on any machine
        assert broker.get_by_client_id("bot-paced") is not None
    finally:
        broker.close()


def test_client_id_in_use_waits_without_crashing(face: TwsServerThread, tmp_path: Path,
                                                 clock: ManualClock) -> None:
    other = IB()
    other.connect("127.0.0.1", face.server.port, clientId=11, timeout=5)
    try:
        broker = adapter(face, tmp_path, clock)  # no exception: it keeps trying, slowly
        try:
            assert not broker.connected
            with pytest.raises(TransientBrokerError, match="326"):
                broker.positions()
            with pytest.raises(TransientBrokerError, match="326"):
                broker.poll(None)
            other.disconnect()
            poll(lambda: broker.connected, 15, what="connected once the id is free")
        finally:
            broker.close()
    finally:
        other.disconnect()


def test_feed_bars_and_backfill_after_reconnect(face: TwsServerThread, clock: ManualClock) -> None:
    source = IbkrBarSource(settings_for(face), ["AAPL", "MSFT"], client_id=12, reconnect_min_s=0.1)
    source.start()
    try:
        poll(lambda: source.connected, 10, what="feed connected")
        end = clock.t.replace(second=0, microsecond=0)
        history = source.history(["AAPL"], end, 5)
        assert [b.ts for b in history] == [end - timedelta(minutes=5 - i) for i in range(5)]
        clock.t += timedelta(minutes=2)
        got: list[Any] = []
        poll(lambda: got.extend(source.drain()) or len(got) >= 4, 10, what="two bars each")
        assert sorted((b.symbol, b.ts) for b in got) == sorted(
            (s, end + timedelta(minutes=i)) for s in ("AAPL", "MSFT") for i in range(2))
        face.run_coroutine(lambda: face.server.arm(refuse_connections=True))  # the Gateway is away ...
        face.run_coroutine(face.server.drop_connections)
        poll(lambda: not source.connected, 10, what="feed down")
        clock.t += timedelta(minutes=3)  # ... while three bars finish
        got.clear()
        face.run_coroutine(lambda: face.server.arm(refuse_connections=False))
        poll(lambda: got.extend(source.drain()) or len(got) >= 6, 15, what="backfilled bars")
        assert sorted(b.ts for b in got if b.symbol == "AAPL") == [end + timedelta(minutes=i) for i in (2, 3, 4)]
        subscribed, requests = face.run_coroutine(face.server.subscriptions), face.server.bar_requests
        face.run_coroutine(lambda: face.server.send_system(1101))  # data lost: subscribe again
        poll(lambda: face.server.bar_requests == requests + 2, 10, what="re-subscribed")
        poll(lambda: face.run_coroutine(face.server.subscriptions) == subscribed, 10, what="old ones cancelled")
        clock.t += timedelta(minutes=1)
        got.clear()
        poll(lambda: got.extend(source.drain()) or len(got) >= 2, 10, what="the next bar")
        assert sorted((b.symbol, b.ts) for b in got) == [("AAPL", end + timedelta(minutes=5)),
                                                        ("MSFT", end + timedelta(minutes=5))]
    finally:
        source.close()


def test_an_order_of_another_client_is_seen_but_not_cancelled_one_by_one(face: TwsServerThread, tmp_path: Path,
                                                                       clock: ManualClock) -> None:
    from steadyhand.sim.exchange import SimExchange
    from steadyhand.sim.market import load_market
    from twskit import face_settings

    other = SimExchange(tmp_path / "exchange" / "exchange.db", load_market(face_settings().sim, ("SPY",)), clock,
                        faults=False)  # placed on the same book through another face (TWS shows order id 0)
    other.submit(OrderSpec("ext-1", "SPY", Side.BUY, 2, type=OrderType.LIMIT, limit_price=FAR))
    other.close()
    broker = adapter(face, tmp_path, clock)
    try:
        [ext] = broker.open_orders()
        assert ext.client_order_id == "ext-1" and ext.broker_order_id.startswith("perm:")
        with pytest.raises(BrokerError, match="another client") as caught:
            broker.cancel(ext.broker_order_id)
        assert not isinstance(caught.value, NotCancelable)  # it is live: not to be taken as terminal
        assert broker.cancel_all() == 1  # the kill switch reaches it (reqGlobalCancel)
        poll(lambda: broker.open_orders() == [], 10, what="cancelled by the global cancel")
    finally:
        broker.close()


def test_replace_amends_in_place_keeping_ids_then_fills_on_the_new_terms(face: TwsServerThread, tmp_path: Path,
                                                                          clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        cursor = broker.poll(None).cursor
        working = broker.submit(limit("bot-amend"))
        amended = broker.replace(working.broker_order_id, qty=7, limit_price=Decimal("2.00"))
        assert (amended.broker_order_id, amended.client_order_id) == (working.broker_order_id, "bot-amend")
        assert (amended.qty, amended.limit_price, amended.status) == (7, Decimal("2.0"), OrderStatus.SUBMITTED)
        [still] = broker.open_orders()
        assert (still.qty, still.limit_price) == (7, Decimal("2.0"))
        with pytest.raises(OrderRejected, match="modification refused"):
            broker.replace(working.broker_order_id, limit_price=Decimal("2.005"))  # sub-penny: refused ...
        assert broker.open_orders()[0].limit_price == Decimal("2.0")  # ... and the order goes on unchanged
        broker.replace(working.broker_order_id, limit_price=Decimal("10000.00"))  # marketable now
        clock.t += timedelta(seconds=2)
        fills, cursor = fills_until(broker, cursor, 1)
        assert sum(f.qty for f in fills) == 7 and fills[0].client_order_id == "bot-amend"
        poll(lambda: broker.get_by_client_id("bot-amend").status is OrderStatus.FILLED, 10, what="filled")
        with pytest.raises(NotCancelable):
            broker.replace(working.broker_order_id, qty=8)
        with pytest.raises(OrderNotFound):
            broker.replace("424242", qty=1)
    finally:
        broker.close()


def test_sim_modify_keeps_what_filled_under_the_old_terms(tmp_path: Path, clock: ManualClock) -> None:
    from steadyhand.sim.exchange import SimExchange
    from steadyhand.sim.market import load_market
    from twskit import face_settings

    book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                       partial_fill_probability=1.0, faults=False)
    try:
        order = book.submit(OrderSpec("p-1", "AAPL", Side.SELL, 1_000_000, type=OrderType.LIMIT,
                                      limit_price=FAR))  # sells at the bid, a part each second
        clock.t += timedelta(seconds=3)
        filled = book.get_order(order.broker_order_id).filled_qty
        assert 0 < filled < 1_000_000
        with pytest.raises(OrderRejected, match="already filled"):
            book.modify(order.broker_order_id, qty=filled)
        high = Decimal("10000.00")  # no bid reaches it: nothing more fills from now on
        amended = book.modify(order.broker_order_id, qty=filled + 1, limit_price=high)
        assert (amended.qty, amended.filled_qty, amended.limit_price) == (filled + 1, filled, high)
        clock.t += timedelta(seconds=3)
        assert book.get_order(order.broker_order_id).filled_qty == filled
        assert amended.broker_order_id == order.broker_order_id
        book.cancel(order.broker_order_id)
        with pytest.raises(NotCancelable):
            book.modify(order.broker_order_id, qty=filled + 2)
    finally:
        book.close()


def test_an_order_the_gateway_refuses_is_rejected_not_cancelled(face: TwsServerThread, tmp_path: Path,
                                                                          clock: ManualClock) -> None:
    broker = adapter(face, tmp_path, clock)
    try:
        with pytest.raises(OrderRejected, match="No security definition"):
            broker.submit(OrderSpec("bot-bad", "NOPE", Side.BUY, 1))  # error 200 from the Gateway
        with pytest.raises(OrderRejected, match="sub-penny|Error validating|321"):
            broker.submit(limit("bot-subpenny", Decimal("1.005")))
        assert broker.open_orders() == []
    finally:
        broker.close()


def test_feed_five_second_bars(face: TwsServerThread, clock: ManualClock) -> None:
    source = IbkrBarSource(settings_for(face, bar_size="5 secs"), ["AAPL"], client_id=13, reconnect_min_s=0.1)
    source.start()
    try:
        poll(lambda: source.connected and face.run_coroutine(face.server.subscriptions) == 1, 10,
             what="subscribed to real-time bars")
        start = clock.t
        clock.t += timedelta(seconds=16)
        got: list[Any] = []
        poll(lambda: got.extend(source.drain()) or len(got) >= 3, 10, what="three 5-second bars")
        assert [b.ts for b in got[:3]] == [start + timedelta(seconds=5 * i) for i in range(3)]
        assert all(b.symbol == "AAPL" and b.low <= b.close <= b.high for b in got)
    finally:
        source.close()
