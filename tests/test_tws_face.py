"""The TWS face of the local exchange, driven by the real ib_async client, field by field, at server
versions 176 and 178. The clock is a manual one inside a past session: fills happen when a test moves
it, never because time passed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit import ManualClock
from ib_async import IB, LimitOrder, MarketOrder, Stock
from ib_async.objects import ExecutionFilter
from steadyhand.domain import OrderSpec, OrderType, Side
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.market import load_market
from steadyhand.sim.server.tws import TwsServerThread
from twskit import face_settings, session_clock, tws_face, until

VERSIONS = (176, 178)
AAPL = Stock("AAPL", "SMART", "USD")


def run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), 60))


def completed_states(ib: IB) -> dict[str, Any]:
    """orderRef -> OrderState of completed orders: ib_async's Trade drops the OrderState (and with it
    ``completedStatus``), so catch it on the way in."""
    states: dict[str, Any] = {}
    original = ib.wrapper.completedOrder

    def hook(contract: Any, order: Any, state: Any) -> None:
        states[order.orderRef] = state
        original(contract, order, state)

    ib.wrapper.completedOrder = hook  # type: ignore[method-assign]
    return states


async def connect(thread: TwsServerThread, client_id: int = 7, errors: list[tuple[Any, ...]] | None = None) -> IB:
    ib = IB()
    if errors is not None:
        ib.errorEvent += lambda *a: errors.append(a)
    await ib.connectAsync("127.0.0.1", thread.server.port, clientId=client_id, timeout=5, raiseSyncErrors=True)
    return ib


@pytest.mark.parametrize("version", VERSIONS)
def test_handshake_accounts_and_farm_messages(tmp_path: Path, version: int) -> None:
    with tws_face(tmp_path, session_clock(), version=version) as thread:
        async def body() -> None:
            errors: list[tuple[Any, ...]] = []
            ib = await connect(thread, errors=errors)  # raiseSyncErrors: every startup request answered
            try:
                assert ib.client.serverVersion() == version
                assert ib.managedAccounts() == ["DU1234567"]
                await until(lambda: len(errors) >= 3, what="farm messages")
                assert [(e[0], e[1]) for e in errors[:3]] == [(-1, 2104), (-1, 2106), (-1, 2158)]
                assert ib.client.getReqId() >= 1
                assert await ib.reqCurrentTimeAsync() == thread.server.clock.now().replace(microsecond=0)
                [contract] = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
                assert (contract.conId, contract.primaryExchange, contract.tradingClass) == (265598, "NASDAQ", "NMS")
                assert await ib.qualifyContractsAsync(Stock("NOPE", "SMART", "USD")) == [None]
            finally:
                ib.disconnect()
        run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_market_order_fill_execution_and_commission_field_by_field(tmp_path: Path, version: int) -> None:
    clock = session_clock()
    with tws_face(tmp_path, clock, version=version) as thread:
        async def body() -> None:
            ib = await connect(thread)
            try:
                trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10, orderRef="cid-0001", account="DU1234567"))
                await until(lambda: trade.orderStatus.status == "Submitted", what="Submitted")
                order_id, perm_id = trade.order.orderId, trade.orderStatus.permId
                assert perm_id > 0 and trade.order.permId == perm_id
                assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (0, 10)
                clock.t += timedelta(seconds=2)  # past the latency: the market order fills
                await until(lambda: trade.orderStatus.status == "Filled" and trade.fills, what="fill")
                await until(lambda: trade.fills[0].commissionReport.execId, what="commission report")
                [fill] = trade.fills
                ex, cr = fill.execution, fill.commissionReport
                book = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("AAPL",)), clock,
                                   faults=False)
                [book_fill] = book.all_fills()
                book.close()
                assert ex.execId == f"{perm_id:08x}.00000001.01.01" and cr.execId == ex.execId
                assert (ex.orderId, ex.permId, ex.clientId, ex.orderRef) == (order_id, perm_id, 7, "cid-0001")
                assert (ex.side, ex.shares, ex.cumQty, ex.acctNumber) == ("BOT", 10, 10, "DU1234567")
                assert Decimal(str(ex.price)) == book_fill.price and ex.avgPrice == ex.price
                assert ex.time == book_fill.ts.replace(microsecond=0)
                assert ex.time.astimezone(UTC) == ex.time
                assert (cr.commission, cr.currency, cr.realizedPNL) == (1.0, "USD", 0.0)
                assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (10, 0)
                assert trade.orderStatus.avgFillPrice == ex.price == trade.orderStatus.lastFillPrice
                await until(lambda: ib.positions(), what="position update")
                [pos] = ib.positions()
                assert (pos.account, pos.contract.symbol, pos.position) == ("DU1234567", "AAPL", 10)
                assert pos.avgCost == pytest.approx(ex.price)
            finally:
                ib.disconnect()

            # A fresh connection (another client id) reads it all back through the API.
            ib = await connect(thread, client_id=8)
            try:
                [back] = await ib.reqExecutionsAsync()
                assert (back.execution.execId, back.execution.orderRef) == (ex.execId, "cid-0001")
                # ib_async joins the report to the fill it keeps (ib.fills()), not to the request's copy.
                await until(lambda: ib.fills() and ib.fills()[0].commissionReport.execId, what="joined report")
                assert ib.fills()[0].commissionReport.commission == 1.0
                assert await ib.reqExecutionsAsync(ExecutionFilter(clientId=99)) == []
                assert len(await ib.reqExecutionsAsync(ExecutionFilter(symbol="AAPL", side="BUY"))) == 1
                states = completed_states(ib)
                [done] = await ib.reqCompletedOrdersAsync(False)
                assert (done.order.orderRef, done.order.permId, done.orderStatus.status) == ("cid-0001", perm_id,
                                                                                          "Filled")
                assert (done.order.orderId, done.order.filledQuantity) == (0, 10)  # no order id in completed
                assert states["cid-0001"].completedStatus == "Filled"
                assert [p.position for p in await ib.reqPositionsAsync()] == [10]
                values = {v.tag: v.value for v in await ib.accountSummaryAsync()}
                assert Decimal(values["TotalCashValue"]) == Decimal("100000.00") - book_fill.price * 10
            finally:
                ib.disconnect()
        run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_cancel_is_202_and_rejection_is_201(tmp_path: Path, version: int) -> None:
    with tws_face(tmp_path, session_clock(), version=version) as thread:
        async def body() -> None:
            errors: list[tuple[Any, ...]] = []
            ib = await connect(thread, errors=errors)
            try:
                working = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 1.00, orderRef="cid-far"))
                await until(lambda: working.orderStatus.status == "Submitted", what="Submitted")
                ib.cancelOrder(working.order)
                await until(lambda: working.orderStatus.status == "Cancelled", what="Cancelled")
                await until(lambda: any(e[:2] == (working.order.orderId, 202) for e in errors), what="202")
                thread.run_coroutine(lambda: thread.server.arm(reject=1, reject_reason="no margin"))
                rejected = ib.placeOrder(AAPL, MarketOrder("BUY", 5, orderRef="cid-rej"))
                await until(lambda: rejected.orderStatus.status == "Cancelled", what="rejected")
                assert any(e.errorCode == 201 and "no margin" in e.message for e in rejected.log)
                assert all(e.errorCode != 201 for e in working.log)
                unknown: list[tuple[Any, ...]] = []
                ib.errorEvent += lambda *a: unknown.append(a)
                ib.client.cancelOrder(999_999)
                await until(lambda: any(e[1] == 10147 for e in unknown), what="10147")
                states = completed_states(ib)
                done = {t.order.orderRef: t for t in await ib.reqCompletedOrdersAsync(False)}
                assert states["cid-far"].completedStatus == "Cancelled by Trader"
                assert states["cid-rej"].completedStatus == "Rejected: no margin"
                assert done["cid-rej"].order.permId not in (0, done["cid-far"].order.permId)
            finally:
                ib.disconnect()
        run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_open_orders_survive_reconnect_and_global_cancel(tmp_path: Path, version: int) -> None:
    clock = session_clock()
    with tws_face(tmp_path, clock, version=version) as thread:
        # An order placed on the same book by another face (here: the book directly) is visible too.
        other = SimExchange(tmp_path / "exchange.db", load_market(face_settings().sim, ("MSFT",)), clock,
                            faults=False)
        other.submit(OrderSpec("alpaca-side", "MSFT", Side.BUY, 3, type=OrderType.LIMIT, limit_price=Decimal("1.00")))
        other.close()

        async def body() -> None:
            ib = await connect(thread)
            trade = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 1.00, orderRef="cid-keep", tif="GTC"))
            await until(lambda: trade.orderStatus.status == "Submitted", what="Submitted")
            ib.disconnect()
            ib = await connect(thread)  # the same client id again: its open order comes back at connect
            try:
                [mine] = ib.openTrades()
                assert (mine.order.orderRef, mine.order.orderId, mine.order.tif) == ("cid-keep", trade.order.orderId,
                                                                                   "GTC")
                assert (mine.order.lmtPrice, mine.order.totalQuantity) == (1.0, 5)
                every = {t.order.orderRef: t for t in await ib.reqAllOpenOrdersAsync()}
                assert set(every) == {"cid-keep", "alpaca-side"} and every["alpaca-side"].order.orderId == 0
                ib.reqGlobalCancel()
                await until(lambda: mine.orderStatus.status == "Cancelled", what="global cancel")
                assert await ib.reqAllOpenOrdersAsync() == []
            finally:
                ib.disconnect()
        run(body)


def test_client_id_in_use_is_326(tmp_path: Path) -> None:
    with tws_face(tmp_path, session_clock()) as thread:
        async def body() -> None:
            first = await connect(thread, client_id=3)
            errors: list[tuple[Any, ...]] = []
            second = IB()
            second.errorEvent += lambda *a: errors.append(a)
            try:
                with pytest.raises((ConnectionError, asyncio.TimeoutError, TimeoutError)):
                    await second.connectAsync("127.0.0.1", thread.server.port, clientId=3, timeout=3)
                assert any(e[1] == 326 for e in errors)
                assert first.isConnected()
            finally:
                second.disconnect()
                first.disconnect()
        run(body)


def test_gateway_restart_resets_next_valid_id_but_not_perm_ids(tmp_path: Path) -> None:
    with tws_face(tmp_path, session_clock()) as thread:
        async def body() -> None:
            ib = await connect(thread)
            ib.client.updateReqId(500)
            first = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 1.00, orderRef="cid-before"))
            await until(lambda: first.orderStatus.permId, what="permId")
            assert first.order.orderId >= 500
            ib.cancelOrder(first.order)  # done orders are not replayed at connect (open ones bump the ids)
            await until(lambda: first.orderStatus.status == "Cancelled", what="Cancelled")
            thread.run_coroutine(thread.server.gateway_restart)
            await until(lambda: not ib.isConnected(), what="dropped")
            ib = await connect(thread)
            try:
                assert ib.client._reqIdSeq < 500  # nextValidId went backwards, as after a real restart
                again = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 1.00, orderRef="cid-after"))
                await until(lambda: again.orderStatus.permId, what="permId")
                assert again.orderStatus.permId > first.orderStatus.permId
                assert again.order.orderId < first.order.orderId  # an id the Gateway had used before
                [still] = await ib.reqAllOpenOrdersAsync()
                assert still.order.orderRef == "cid-after"
                refs = [t.order.orderRef for t in await ib.reqCompletedOrdersAsync(False)]
                assert refs == ["cid-before"]
            finally:
                ib.disconnect()
        run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_history_keep_up_to_date_and_real_time_bars(tmp_path: Path, version: int) -> None:
    clock: ManualClock = session_clock()
    with tws_face(tmp_path, clock, version=version) as thread:
        async def body() -> None:
            ib = await connect(thread)
            try:
                now = clock.t
                bars = await ib.reqHistoricalDataAsync(AAPL, "", "1800 S", "1 min", "TRADES", True, formatDate=2,
                                                       keepUpToDate=True)
                assert len(bars) == 31 and bars[-1].date == now.replace(second=0, microsecond=0)
                assert bars[-2].date == bars[-1].date - timedelta(minutes=1)
                news: list[tuple[bool, Any]] = []
                bars.updateEvent += lambda b, new: news.append((new, b[-2].date if new else None))
                forming = bars[-1].date
                clock.t += timedelta(minutes=2)
                await until(lambda: sum(n for n, _ in news) >= 2, what="two new bars")
                assert [d for n, d in news if n] == [forming, forming + timedelta(minutes=1)]
                book = load_market(face_settings().sim, ("AAPL",))
                full = book.bar("AAPL", forming)
                assert full is not None and bars[-3].close == pytest.approx(full.close)
                rt = ib.reqRealTimeBars(AAPL, 5, "TRADES", True)
                await until(lambda: thread.run_coroutine(thread.server.subscriptions) == 2, what="subscribed")
                start = clock.t
                clock.t += timedelta(seconds=16)
                await until(lambda: len(rt) >= 3, what="three 5-second bars")
                assert [b.time for b in rt[:3]] == [start.replace(microsecond=0) - timedelta(
                    seconds=start.second % 5) + timedelta(seconds=5 * i) for i in range(3)]
            finally:
                ib.disconnect()
        run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_modification_is_place_order_with_the_same_id(tmp_path: Path, version: int) -> None:
    clock = session_clock()
    with tws_face(tmp_path, clock, version=version) as thread:
        async def body() -> None:
            errors: list[tuple[Any, ...]] = []
            ib = await connect(thread, errors=errors)
            try:
                trade = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 1.00, orderRef="cid-mod"))
                await until(lambda: trade.orderStatus.status == "Submitted", what="Submitted")
                perm = trade.orderStatus.permId
                trade.order.lmtPrice = 1.50
                ib.placeOrder(AAPL, trade.order)  # same orderId: a modification
                await until(lambda: trade.log[-1].message == "Modified", what="Modified")
                [open_now] = await ib.reqAllOpenOrdersAsync()
                assert (open_now.order.lmtPrice, open_now.order.permId, open_now.order.orderRef) == (1.5, perm,
                                                                                                    "cid-mod")
                trade.order.totalQuantity = 8
                ib.placeOrder(AAPL, trade.order)
                await until(lambda: trade.orderStatus.remaining == 8, what="the new quantity")
                wrong = LimitOrder("SELL", 8, 1.50, orderId=trade.order.orderId, orderRef="cid-mod")
                ib.client.placeOrder(trade.order.orderId, AAPL, wrong)
                await until(lambda: any(e[:2] == (trade.order.orderId, 105) for e in errors), what="105")
            finally:
                ib.disconnect()
        run(body)
