"""Interactive Brokers (paper) behind the Broker interface, on ib_async 2.1 (TWS / IB Gateway).

- **One thread owns IB**: an :class:`~steadyhand.brokers.ibkr.loop.IbLoop` runs the ``IB`` object's
  event loop; every Broker method is a coroutine sent there with a timeout (``[ibkr] timeout_s``).
  A ``placeOrder`` whose acknowledgement does not arrive in time is an :class:`UnknownOutcome`.
- **Connection**: a supervisor task on that loop connects, and after a dropped socket reconnects
  with jittered exponential backoff (1 s .. 30 s). While down (or after 1100) every call raises
  :class:`TransientBrokerError` at once, so the OMS's circuit opens (risk denies, an alert goes out).
  Error 326 (client id in use) is logged CRITICAL with what to do, and retried slowly (60 s), never
  in a tight loop. A managed account that is not a paper account (``DU...``) is refused unless
  ``[ibkr] allow_live = true``; the message names it. That refusal is final: the constructor (the
  first connection, waited for up to ``timeout_s``) raises it.
- **After every (re)connect**: ``client.updateReqId(max persisted order id + 1)`` (``nextValidId``
  can go backwards after a Gateway restart), then open orders, completed orders and executions (which
  ib_async fetches at connect but reports through no event) are swept into the update log: what the
  OMS has not seen comes through :meth:`poll`, once (fills are keyed by ``execId``).
- **Identity**: ``orderRef`` = client order id. IB does not enforce its uniqueness, so the adapter
  does: a submit whose id the broker already knows (open or completed) raises
  :class:`DuplicateClientOrderId`, and :meth:`get_by_client_id` asks the Gateway again (open and
  completed orders) before it answers None. Order ids are persisted before ``placeOrder`` goes out
  (:mod:`~steadyhand.brokers.ibkr.ids`), permIds as soon as they are known.
- **Errors**: 201 rejected vs 202 cancelled (both ``Cancelled`` in ib_async; ``trade.log`` tells);
  2104 / 2106 / 2158 are information; pacing (100, 162, 420) backs requests off (doubling, ≤ 30 s);
  ib_async's own throttle keeps the client under 45 messages a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from ib_async import IB, Trade
from ib_async.objects import ExecutionFilter
from steadyhand.brokers.base import (
    BrokerError,
    BrokerUpdates,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    UnknownOutcome,
    submit_each,
)
from steadyhand.brokers.ibkr import wire
from steadyhand.brokers.ibkr.ids import IbkrIds
from steadyhand.brokers.ibkr.loop import IbLoop
from steadyhand.config import IbkrSettings
from steadyhand.domain import Account, BrokerOrder, Fill, MarketClock, OrderSpec, OrderStatus, Position, market_hours
from steadyhand.runtime.logs import module_logger

log = module_logger("steadyhand.brokers.ibkr")
T = TypeVar("T")
RECONNECT_MIN_S, RECONNECT_MAX_S, IN_USE_RETRY_S = 1.0, 30.0, 60.0  # 326: 1, 2, 4 ... 60 s


class AccountRefused(BrokerError):
    """Final: the login's account may not be traded with this configuration."""


def choose_account(managed: list[str], settings: IbkrSettings) -> str:
    """The account to trade, or AccountRefused naming the problem (paper only unless allowed)."""
    if settings.account:
        if settings.account not in managed:
            raise AccountRefused(f"[ibkr] account {settings.account} is not managed by this login "
                                 f"(managed: {', '.join(managed) or 'none'})")
        account = settings.account
    elif len(managed) == 1:
        account = managed[0]
    else:
        raise AccountRefused(f"this login manages several accounts ({', '.join(managed)}): "
                             "name one in [ibkr] account")
    if not account.startswith("DU") and not settings.allow_live:
        raise AccountRefused(f"account {account} is not an IB paper account (paper accounts start with DU): "
                             "live trading refused; set [ibkr] allow_live = true to trade it")
    return account


class IbkrBroker:
    """:class:`~steadyhand.brokers.base.Broker` on TWS / IB Gateway (paper)."""

    name = "ibkr"

    def __init__(self, settings: IbkrSettings, *, data_dir: str | Path | None = None, clock: Any = None,
                 client_id: int | None = None, connect_wait_s: float | None = None,
                 reconnect_min_s: float = RECONNECT_MIN_S, in_use_retry_s: float = IN_USE_RETRY_S) -> None:
        self.settings = settings
        self.client_id = settings.client_id if client_id is None else client_id
        self.timeout_s = settings.timeout_s
        self._now = clock  # the run's clock: submitted_at in simulated time
        self.account_id = settings.account
        self.reconnect_min_s = reconnect_min_s
        self.in_use_retry_s = in_use_retry_s
        self.ids = IbkrIds(data_dir)
        self.loop = IbLoop("ibkr-broker")
        self._up = threading.Event()
        self._fatal: str | None = None
        self._last_error = "not connected yet"
        self._closing = False
        self._in_use = False  # the last connection attempt was answered with 326
        self._generation = 0  # connections made so far
        self._pace_until = 0.0
        self._pace_s = 1.0
        self._index: dict[str, Trade] = {}  # client order id -> trade (loop thread only)
        self._completed_status: dict[str, str] = {}  # orderRef -> completedStatus (ib_async drops it)
        self.commissions: dict[str, float] = {}  # execId -> commission, whichever of the two came first
        self._lock = threading.Lock()
        self._instance = uuid.uuid4().hex[:8]
        self._events: list[tuple[int, BrokerOrder | Fill]] = []
        self._seq = 0
        self._known: dict[str, tuple[OrderStatus, int]] = {}
        self._fills_seen: set[str] = set()
        self.ib: IB = self.loop.run(self._make_ib, 10)
        self.loop.call_soon(lambda: asyncio.ensure_future(self._supervise()))
        deadline = time.monotonic() + (connect_wait_s if connect_wait_s is not None else settings.timeout_s + 1)
        while time.monotonic() < deadline and not self._up.is_set() and self._fatal is None:
            self._up.wait(0.05)  # the first connection, so that a refused account is said right away
        if self._fatal is not None:
            self.close()
            raise AccountRefused(self._fatal)

    # --- the IB object and its connection (loop thread) -----------------------------------------------

    async def _make_ib(self) -> IB:
        ib = IB()
        ib.client.MaxRequests, ib.client.RequestsInterval = 45, 1.0  # under TWS's 50 messages a second
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.orderStatusEvent += self._on_trade
        ib.openOrderEvent += self._on_trade
        ib.execDetailsEvent += self._on_exec
        original_completed, original_report = ib.wrapper.completedOrder, ib.wrapper.commissionReport

        def completed(contract: Any, order: Any, state: Any) -> None:
            self._completed_status[order.orderRef] = state.completedStatus
            original_completed(contract, order, state)

        def report(commission_report: Any) -> None:
            self.commissions[commission_report.execId] = commission_report.commission  # even before its fill
            original_report(commission_report)

        ib.wrapper.completedOrder = completed  # type: ignore[method-assign]
        ib.wrapper.commissionReport = report  # type: ignore[method-assign]
        return ib

    async def _supervise(self) -> None:
        delay = self.reconnect_min_s
        while not self._closing:
            if self.ib.isConnected():
                await asyncio.sleep(0.1)
                continue
            self._in_use = False
            try:
                # ib_async keeps a dropped connection's orders and fills: start from what the
                # Gateway says now (the connect itself reloads open and completed orders, executions).
                self.ib.wrapper.reset()
                self._index.clear()
                await self._connect()
                delay = self.reconnect_min_s
                continue
            except AccountRefused as exc:
                self._fatal = str(exc)
                log.critical("ibkr: %s", exc)
                self.ib.disconnect()
                return
            except Exception as exc:  # noqa: BLE001 - any failure to connect: try again later
                if not self._in_use:
                    self._last_error = f"connect failed: {exc!r}"
                self.ib.disconnect()
            # 326: the Gateway may not have noticed yet that our previous connection died; after
            # that, someone else really holds the id: slow down to in_use_retry_s.
            wait = min(delay, self.in_use_retry_s) if self._in_use else delay
            log.warning("ibkr: not connected (%s); next attempt in %.1f s", self._last_error, wait)
            await asyncio.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(delay * 2, IN_USE_RETRY_S if self._in_use else RECONNECT_MAX_S)

    async def _connect(self) -> None:
        s = self.settings
        await self.ib.connectAsync(s.host, s.port, clientId=self.client_id, timeout=self.timeout_s,
                                   account=s.account)
        self.account_id = choose_account(self.ib.managedAccounts(), s)
        traded = self.ids.account()
        if traded and traded != self.account_id:
            raise AccountRefused(f"this data dir traded account {traded}, but the Gateway trades {self.account_id}: "
                                 "use another --data-dir for another account (or set [ibkr] account)")
        self.ids.set_account(self.account_id)
        self.ib.client.updateReqId(self.ids.max_order_id() + 1)
        self._reindex(list(self.ib.trades()))
        self._sweep()
        self._generation += 1
        self._last_error = ""
        self._up.set()
        log.info("ibkr: connected to %s:%s as client %s, account %s (connection %d)", s.host, s.port,
                 self.client_id, self.account_id, self._generation)

    def _on_disconnected(self) -> None:
        if self._up.is_set() and not self._closing:
            log.warning("ibkr: connection to the Gateway lost")
        self._up.clear()
        if not self._last_error:
            self._last_error = "connection lost"

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        if code in wire.INFO_CODES:
            log.info("ibkr: %s %s", code, message)
        elif code == 326:
            self._in_use = True
            self._last_error = f"326 client id {self.client_id} is already in use"
            log.critical("ibkr: client id %s is in use by another API connection: stop the other client or "
                         "set another [ibkr] client_id (retrying every %.0f s)", self.client_id, self.in_use_retry_s)
        elif code == 1100:
            self._up.clear()
            self._last_error = "1100 connectivity between IB and the Gateway lost"
            log.warning("ibkr: 1100 %s", message)
        elif code in (1101, 1102):
            log.warning("ibkr: %s %s: re-reading orders and executions", code, message)
            if self.ib.isConnected():
                asyncio.ensure_future(self._after_restore())
        elif code in wire.PACING_CODES:
            if time.monotonic() > self._pace_until + 60:
                self._pace_s = 1.0  # a minute without violations: start the back-off over
            self._pace_until = time.monotonic() + self._pace_s
            log.warning("ibkr: pacing violation %s (%s): backing off %.1f s", code, message, self._pace_s)
            self._pace_s = min(self._pace_s * 2, 30.0)
        elif req_id == -1:
            log.warning("ibkr: error %s: %s", code, message)

    async def _after_restore(self) -> None:
        try:
            await self._refresh(executions=True)
        finally:
            self._last_error = ""
            self._up.set()

    # --- the update log behind poll() (any thread) -------------------------------------------------

    def _record(self, orders: list[BrokerOrder], fills: list[Fill]) -> None:
        with self._lock:
            for f in fills:
                if f.fill_id not in self._fills_seen:
                    self._fills_seen.add(f.fill_id)
                    self._push(f)
            for o in orders:
                known = self._known.get(o.broker_order_id)
                if known is not None and (known[0].is_terminal or o.filled_qty < known[1]
                                          or known == (o.status, o.filled_qty)):
                    continue
                self._known[o.broker_order_id] = (o.status, o.filled_qty)
                self._push(o)

    def _push(self, item: BrokerOrder | Fill) -> None:
        self._seq += 1
        self._events.append((self._seq, item))

    def poll(self, cursor: str | None) -> BrokerUpdates:
        """What changed since ``cursor``. While the connection is down this raises
        TransientBrokerError (what is queued stays queued), so the OMS's circuit opens: risk denies,
        a CRITICAL alert names the cause (e.g. 326), and the first poll after the reconnect closes
        it and triggers a reconciliation."""
        if self._fatal is not None:
            raise AccountRefused(self._fatal)
        if not self._up.is_set():
            raise TransientBrokerError(f"ibkr: not connected ({self._last_error})")
        with self._lock:
            if cursor is None:
                return BrokerUpdates((), (), f"{self._instance}:{self._seq}")
            instance, _, seq = cursor.partition(":")
            since = int(seq) if instance == self._instance and seq.isdigit() else 0
            items = [item for s, item in self._events if s > since]
            self._events = [(s, item) for s, item in self._events if s > since]
            latest = self._seq
        return BrokerUpdates(tuple(i for i in items if isinstance(i, BrokerOrder)),
                             tuple(i for i in items if isinstance(i, Fill)), f"{self._instance}:{latest}")

    # --- trades in our vocabulary (loop thread) ------------------------------------------------------

    def _boid(self, trade: Trade) -> str:
        placed = self.ids.by_client_id(trade.order.orderRef) if trade.order.orderRef else None
        if placed is not None and (trade.order.orderId in (0, placed.order_id)):
            self.ids.note_perm_id(placed.client_order_id, trade.order.permId or trade.orderStatus.permId)
            return str(placed.order_id)
        if trade.order.orderId > 0 and trade.order.clientId == self.client_id:
            return str(trade.order.orderId)
        return f"perm:{trade.order.permId}"

    def _order(self, trade: Trade) -> BrokerOrder:
        placed = self.ids.by_client_id(trade.order.orderRef) if trade.order.orderRef else None
        submitted = placed.submitted_at if placed else (trade.log[0].time if trade.log else datetime.now(UTC))
        return wire.order_from_trade(trade, self._boid(trade), submitted,
                                     completed_status=self._completed_status.get(trade.order.orderRef, ""),
                                     now=self._now.now() if self._now is not None else None)

    def _on_trade(self, trade: Trade) -> None:
        if trade.order.orderRef:
            self._index.setdefault(trade.order.orderRef, trade)
            self._record([self._order(trade)], [])

    def _on_exec(self, trade: Trade, fill: Any) -> None:
        self._record([], [wire.fill_from_ib(fill, self._boid(trade))])

    def _reindex(self, trades: list[Trade]) -> None:
        refs: dict[str, list[Trade]] = {}
        for t in trades:
            if t.order.orderRef:
                refs.setdefault(t.order.orderRef, []).append(t)
        for ref, same in refs.items():
            live = [t for t in same if not t.isDone()] or same
            self._index[ref] = live[0]
            if len({t.order.permId for t in same}) > 1:
                log.warning("ibkr: orderRef %s is carried by %d orders at the broker", ref, len(same))

    def _sweep(self) -> None:
        """Everything ib_async loaded at (re)connect, into the update log (repeats are dropped)."""
        self._record([self._order(t) for t in self._index.values()], [])
        by_ref = {ref: self._boid(t) for ref, t in self._index.items()}
        fills = [wire.fill_from_ib(f, by_ref.get(f.execution.orderRef, f"perm:{f.execution.permId}"))
                 for f in self.ib.fills()]
        self._record([], fills)

    async def _refresh(self, executions: bool = False) -> None:
        """Ask the Gateway again for every open and completed order (and executions)."""
        trades = [*await self.ib.reqAllOpenOrdersAsync(), *await self.ib.reqCompletedOrdersAsync(False)]
        if executions:
            await self.ib.reqExecutionsAsync()
        self._reindex(trades + list(self.ib.trades()))
        self._sweep()

    # --- calls from the OMS -------------------------------------------------------------------------

    def _run(self, make: Callable[[], Awaitable[T]], *, submit: bool = False, timeout_s: float | None = None) -> T:
        if self._fatal is not None:
            raise AccountRefused(self._fatal)
        if not self._up.is_set():
            raise TransientBrokerError(f"ibkr: not connected ({self._last_error})")

        async def paced() -> T:
            wait = self._pace_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing back-off, on the loop: never time.sleep there
            return await make()

        # The back-off is waited out before anything is sent, so it does not count against the
        # timeout (a submit that timed out while still waiting would wrongly be an unknown outcome).
        backoff = max(0.0, self._pace_until - time.monotonic())
        try:
            return self.loop.run(paced, (timeout_s or self.timeout_s) + backoff)
        except concurrent.futures.TimeoutError:
            if submit:
                raise UnknownOutcome(f"ibkr: no acknowledgement within {self.timeout_s:.1f} s") from None
            raise TransientBrokerError(f"ibkr: no answer within {self.timeout_s:.1f} s") from None
        except ConnectionError as exc:
            raise (UnknownOutcome if submit else TransientBrokerError)(f"ibkr: {exc}") from exc

    def submit_many(self, specs: Sequence[OrderSpec], between: Callable[[], None] | None = None,
                    ) -> list[BrokerOrder | BrokerError]:
        """One by one under the rate limit: no batch order call (``base.submit_each``)."""
        return submit_each(self, specs, between)

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        return self._run(lambda: self._submit(spec), submit=True)

    async def _submit(self, spec: OrderSpec) -> BrokerOrder:
        cid = spec.client_order_id
        if cid in self._index:
            raise DuplicateClientOrderId(f"ibkr: orderRef {cid} was placed before (order "
                                         f"{self._boid(self._index[cid])})")
        order_id = self.ib.client.getReqId()
        now = self._now.now() if self._now is not None else datetime.now(UTC)
        self.ids.reserve(cid, order_id, self.account_id, now)  # write-ahead: never used twice
        trade = self.ib.placeOrder(wire.contract(spec.symbol), wire.ib_order(spec, order_id, self.account_id))
        self._index[cid] = trade
        changed = asyncio.Event()

        def wake(_trade: Trade) -> None:
            changed.set()

        trade.statusEvent += wake  # openOrder / orderStatus / an error for this order
        try:
            while trade.orderStatus.status == "PendingSubmit" and not trade.isDone():
                await changed.wait()
                changed.clear()
        finally:
            trade.statusEvent -= wake
        reason = wire.rejection(trade)
        if reason:
            raise OrderRejected(reason)
        if trade.orderStatus.status == "ValidationError":
            # A warning (321, 399 ...): the order may be live anyway (ib_async marks both the same).
            # Ask the Gateway: open -> accepted; not there -> it was refused.
            await self._refresh()
            if trade.orderStatus.status in ("ValidationError", "PendingSubmit") or trade.isDone():
                raise OrderRejected(wire.rejection(trade) or trade.log[-1].message)
        return self._order(trade)

    def _find(self, broker_order_id: str) -> Trade | None:
        for t in self.ib.trades():
            if self._boid(t) == broker_order_id:
                return t
        return None

    def cancel(self, broker_order_id: str) -> None:
        async def go() -> None:
            trade = self._find(broker_order_id)
            if trade is None:
                await self._refresh()
                trade = self._find(broker_order_id)
            if trade is None:
                raise OrderNotFound(f"ibkr: no order {broker_order_id}")
            if trade.isDone():
                raise NotCancelable(f"ibkr: order {broker_order_id} is {trade.orderStatus.status}")
            if trade.order.orderId <= 0 or trade.order.clientId != self.client_id:
                # IB lets an API client cancel only its own orders (a master client id aside):
                # one placed in TWS or by another client is cancelled there, or by the kill switch.
                # Not NotCancelable: the order is live, and the OMS must not take it as terminal.
                raise BrokerError(f"ibkr: order {broker_order_id} ({trade.order.orderRef or 'no orderRef'}) "
                                    f"was placed by another client (id {trade.order.clientId}); cancel it there "
                                    "or use the kill switch (reqGlobalCancel)")
            self.ib.cancelOrder(trade.order)
        self._run(go)

    def replace(self, broker_order_id: str, qty: int | None = None, limit_price: Decimal | None = None,
                stop_price: Decimal | None = None) -> BrokerOrder:
        """Modify a working order: IB takes ``placeOrder`` again with the same order id (and keeps
        the id, the permId and the orderRef): :meth:`Broker.replace`'s in-place shape. Raises
        OrderNotFound, NotCancelable (finished, or IB's 104 "Can't modify a filled order": it filled
        first), OrderRejected (the Gateway refused the change: the order goes on unchanged),
        TransientBrokerError, UnknownOutcome (no answer in time: look the order up)."""
        async def go() -> BrokerOrder:
            trade = self._find(broker_order_id)
            if trade is None:
                await self._refresh()
                trade = self._find(broker_order_id)
            if trade is None:
                raise OrderNotFound(f"ibkr: no order {broker_order_id}")
            if trade.isDone():
                raise NotCancelable(f"ibkr: order {broker_order_id} is {trade.orderStatus.status}: not modifiable")
            if trade.order.orderId <= 0 or trade.order.clientId != self.client_id:
                raise BrokerError(f"ibkr: order {broker_order_id} was placed by another client: not modifiable here")
            changed = dataclasses.replace(trade.order)  # a copy: the trade keeps what IB confirms
            if qty is not None:
                changed.totalQuantity = qty
            if limit_price is not None:
                changed.lmtPrice = float(limit_price)
            if stop_price is not None:
                changed.auxPrice = float(stop_price)
            seen = len(trade.log)
            answered = asyncio.Event()

            def wake(_trade: Trade) -> None:
                answered.set()

            trade.statusEvent += wake
            try:
                self.ib.placeOrder(trade.contract, changed)  # the same orderId: a modification
                while len(trade.log) <= seen + 1 and not trade.isDone():  # "Modify", then the answer
                    await answered.wait()
                    answered.clear()
            finally:
                trade.statusEvent -= wake
            refused = [e for e in trade.log[seen:] if e.errorCode]
            if refused and refused[-1].errorCode == 104:  # it filled or ended before the change arrived
                raise NotCancelable(f"ibkr: order {broker_order_id} cannot be modified: {refused[-1].message}")
            if refused:
                raise OrderRejected(f"ibkr: modification refused: {refused[-1].message}")
            return self._order(trade)
        return self._run(go, submit=True)

    def cancel_all(self) -> int:
        """The kill switch: ``reqGlobalCancel`` cancels every open order of the account at once."""
        async def go() -> int:
            open_now = [t for t in await self.ib.reqAllOpenOrdersAsync() if not t.isDone()]
            self.ib.reqGlobalCancel()
            return len(open_now)
        return self._run(go)

    def get_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        async def go() -> BrokerOrder | None:
            trade = self._index.get(client_order_id)
            if trade is None:  # IB does not enforce orderRef: look again before saying "never seen"
                await self._refresh()
                trade = self._index.get(client_order_id)
            return self._order(trade) if trade is not None else None
        return self._run(go)

    def fills_for(self, broker_order_id: str) -> list[Fill]:
        async def go() -> list[Fill]:
            trade = self._find(broker_order_id)
            ref = trade.order.orderRef if trade is not None else None

            def mine(fills: list[Any]) -> list[Fill]:
                return [wire.fill_from_ib(f, broker_order_id) for f in fills
                        if (ref and f.execution.orderRef == ref) or str(f.execution.orderId) == broker_order_id]

            # ib_async's fills are complete since the connect (which loads every execution) plus
            # the live ones; only when they fall short of what the order says it filled, ask again.
            known = mine(self.ib.fills())
            if trade is not None and sum(f.qty for f in known) >= wire.filled_qty(trade):
                return known
            return mine(await self.ib.reqExecutionsAsync())
        return self._run(go)

    def open_orders(self) -> list[BrokerOrder]:
        async def go() -> list[BrokerOrder]:
            trades = await self.ib.reqAllOpenOrdersAsync()
            self._reindex(trades)
            return [self._order(t) for t in trades if not t.isDone()]
        return self._run(go)

    def positions(self) -> list[Position]:
        async def go() -> list[Position]:
            held = await self.ib.reqPositionsAsync()
            return [wire.position_from_ib(p) for p in held if p.account == self.account_id and p.position]
        return self._run(go)

    def account(self) -> Account:
        async def go() -> Account:
            req_id = self.ib.client.getReqId()
            future = self.ib.wrapper.startReq(req_id)
            self.ib.client.reqAccountSummary(req_id, "All", "NetLiquidation,TotalCashValue,BuyingPower")
            await future
            self.ib.client.cancelAccountSummary(req_id)  # a subscription at IB: at most two at a time
            values = {v.tag: v.value for v in self.ib.wrapper.acctSummary.values() if v.account == self.account_id}
            return Account(cash=Decimal(values.get("TotalCashValue", "0")),
                           equity=Decimal(values.get("NetLiquidation", "0")),
                           buying_power=Decimal(values.get("BuyingPower", "0")))
        return self._run(go)

    def clock(self) -> MarketClock:
        """The Gateway's time with the XNYS calendar (IB has no market clock request)."""
        now = self._run(self.ib.reqCurrentTimeAsync).astimezone(UTC)
        return MarketClock(timestamp=now, is_open=market_hours.is_open(now), next_open=market_hours.next_open(now),
                           next_close=market_hours.next_close(now))

    # --- whole-account reads for tools (``steadyhand verify``); not in the Broker protocol ------------

    def all_orders(self) -> list[BrokerOrder]:
        """Every order the Gateway shows: completed and open (a real Gateway keeps about a day)."""
        async def go() -> list[BrokerOrder]:
            await self._refresh()
            return sorted((self._order(t) for t in self._index.values()), key=lambda o: o.submitted_at)
        return self._run(go, timeout_s=max(self.timeout_s, 30.0))

    def all_fills(self) -> list[Fill]:
        """Every execution ``reqExecutions`` returns (a real Gateway: today's, up to 7 days)."""
        async def go() -> list[Fill]:
            fills = await self.ib.reqExecutionsAsync(ExecutionFilter())
            by_ref = {ref: self._boid(t) for ref, t in self._index.items()}
            return sorted((wire.fill_from_ib(f, by_ref.get(f.execution.orderRef, f"perm:{f.execution.permId}"))
                           for f in fills), key=lambda f: (f.ts, f.fill_id))
        return self._run(go, timeout_s=max(self.timeout_s, 30.0))

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def generation(self) -> int:
        """How many times the adapter has (re)connected."""
        return self._generation

    def close(self) -> None:
        self._closing = True
        if self.loop.alive:
            try:
                self.loop.run(self._disconnect, 5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.loop.stop()
        self.ids.close()

    async def _disconnect(self) -> None:
        self.ib.disconnect()
