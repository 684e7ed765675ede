"""OMS: the only actor that talks to the broker about orders; owns the order journal.

The write-ahead order path (DESIGN §5):

1. an approved request is inserted as PENDING_SUBMIT and committed (``synchronous=FULL``) before
   the broker hears of it; a client order id already in the journal is a duplicate intent: dropped;
2. it is submitted with that client order id; a duplicate-id reply means it was accepted already
   (look it up, never resubmit); a transient error or unknown outcome is looked up by client id
   before it is ever sent again;
3. broker updates move the row through the state machine; each fill is inserted once (its broker
   fill id is the primary key) and sent on to the portfolio and risk.

On every start, including restarts, it reconciles with the broker (DESIGN §6) while risk denies new
orders, stores the report, and only then lets trading resume.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import (
    BrokerSnapshot,
    CancelAll,
    CancelAllDone,
    Fill,
    Fills,
    Flatten,
    FlattenDone,
    OpenOrders,
    OrderRequest,
    OrderRequests,
    OrderStatus,
    ReconcileFinished,
    ReconcileStarted,
    Severity,
    Side,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)
from steadyhand.brokers import make_broker
from steadyhand.brokers.base import (
    Broker,
    BrokerError,
    BrokerFill,
    BrokerOrder,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    OrderSpec,
    TransientBrokerError,
    UnknownOutcome,
)
from steadyhand.state import store
from thespian.actors import ActorAddress

OPEN_STATUSES = tuple(s.value for s in OrderStatus if s.is_open)
_IS_OPEN = f"status IN ({','.join('?' * len(OPEN_STATUSES))})"  # SQL condition, with OPEN_STATUSES
PENDING_RETRY_AFTER_S = 1.0  # wall seconds before a PENDING_SUBMIT row is looked up and retried
SNAPSHOT_EVERY_S = 10.0  # broker positions sent to the portfolio for comparison

# A status may only move forward: a late, older update never undoes a newer one.
_RANK = {OrderStatus.PENDING_SUBMIT: 0, OrderStatus.SUBMITTED: 1, OrderStatus.PARTIALLY_FILLED: 2}


def _advances(old: OrderStatus, new: OrderStatus) -> bool:
    if old.is_terminal:
        return False
    return new.is_terminal or _RANK.get(new, 0) >= _RANK.get(old, 0)


class OmsActor(SteadyActor):
    def setup(self) -> None:
        self.db = store.connect(self.run.db_path, synchronous="FULL")
        self.broker: Broker = make_broker(self.run)
        self.cursor: str | None = None
        self.reconciled = False
        self.last_report: dict[str, Any] | None = None
        self.last_snapshot = 0.0
        self.trading_state = TradingState.ACTIVE
        self.handlers = {OrderRequests: self.on_order_requests, CancelAll: self.on_cancel_all,
                         Flatten: self.on_flatten, TradingStateChanged: self.on_trading_state}
        self.timers = {"poll": self.poll}

    def on_first_wiring(self) -> None:
        self.reconcile("start")
        self.every("poll", self.run.settings.oms.poll_interval_s)

    def on_peers_changed(self, names: set[str]) -> None:
        # A restarted peer starts knowing nothing: tell it what it needs from us.
        if "risk" in names and self.last_report is not None:
            self.tell_peer("risk", ReconcileFinished(self.last_report))
            self.tell_peer("risk", self._open_orders())
        if "portfolio" in names:
            self._send_snapshot()

    # --- the order path ---------------------------------------------------------------------

    def on_trading_state(self, message: TradingStateChanged, sender: ActorAddress) -> None:
        self.trading_state = message.state

    def on_order_requests(self, message: OrderRequests, sender: ActorAddress) -> None:
        if self.trading_state is TradingState.HALTED:  # defence in depth: risk denies these already
            self.event("requests_dropped", level="warning", reason="halted", count=len(message.requests))
            return
        if not self.reconciled:
            self.event("requests_dropped", level="warning", reason="reconciling", count=len(message.requests))
            return
        fresh = self._journal_pending(message.requests)
        for request in fresh:
            self._submit(request, message.bar_sent_at)
        if fresh:
            self.tell_peer("risk", self._open_orders())

    def _journal_pending(self, requests: tuple[OrderRequest, ...]) -> list[OrderRequest]:
        """Step 3: durable PENDING_SUBMIT rows, one transaction per batch; duplicates dropped."""
        fresh = []
        now = store.now_iso()
        with store.transaction(self.db):
            for r in requests:
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO orders (client_order_id, symbol, side, qty, type, time_in_force,"
                    " limit_price, stop_price, status, filled_qty, bar_ts, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    [r.client_order_id, r.symbol, r.side.value, r.qty, r.type.value, r.time_in_force.value,
                     _text(r.limit_price), _text(r.stop_price), OrderStatus.PENDING_SUBMIT.value,
                     store.iso(r.bar_ts), now, now],
                )
                if cursor.rowcount == 1:
                    fresh.append(r)
                else:
                    self.event("duplicate_intent", level="warning", client_order_id=r.client_order_id)
        return fresh

    def _submit(self, request: OrderRequest, bar_sent_at: float = 0.0) -> None:
        spec = OrderSpec(client_order_id=request.client_order_id, symbol=request.symbol, side=request.side,
                         qty=request.qty, type=request.type, time_in_force=request.time_in_force,
                         limit_price=request.limit_price, stop_price=request.stop_price)
        self._send_to_broker(spec, bar_sent_at)

    def _send_to_broker(self, spec: OrderSpec, bar_sent_at: float = 0.0) -> None:
        cid = spec.client_order_id
        try:
            order = self.broker.submit(spec)
        except DuplicateClientOrderId:
            order = self.broker.get_by_client_id(cid)  # accepted earlier: adopt, never resubmit
        except OrderRejected as exc:
            self._mark(cid, OrderStatus.REJECTED, reason=str(exc))
            self.alert(f"rejected:{spec.symbol}", Severity.HIGH, f"order rejected: {spec.symbol}",
                       f"{cid}: {exc}")
            return
        except (TransientBrokerError, UnknownOutcome) as exc:
            self.event("submit_uncertain", level="warning", client_order_id=cid, error=repr(exc))
            order = self._lookup(cid)  # before any retry: did it get there?
            if order is None:
                return  # still PENDING_SUBMIT; the poll retries it
        if order is None:
            return
        latency_ms = (time.time() - bar_sent_at) * 1000 if bar_sent_at else None
        self._apply_order(order)
        self.event("order_submitted", client_order_id=cid, broker_order_id=order.broker_order_id,
                   symbol=spec.symbol, side=spec.side.value, qty=spec.qty, status=order.status.value,
                   bar_to_ack_ms=latency_ms)

    def _lookup(self, cid: str) -> BrokerOrder | None:
        try:
            return self.broker.get_by_client_id(cid)
        except BrokerError as exc:
            self.event("lookup_failed", level="warning", client_order_id=cid, error=repr(exc))
            return None

    # --- broker updates ---------------------------------------------------------------------

    def poll(self) -> None:
        try:
            updates = self.broker.poll(self.cursor)
        except BrokerError as exc:
            self.event("poll_failed", level="warning", error=repr(exc))
            return
        self.cursor = updates.cursor
        changed = False
        for order in updates.orders:
            changed |= self._apply_order(order)
        new_fills = self._record_fills(updates.fills)
        if changed or new_fills:
            self.tell_peer("risk", self._open_orders())
        self._retry_pending()
        if time.monotonic() - self.last_snapshot > SNAPSHOT_EVERY_S:
            self._send_snapshot()

    def _retry_pending(self) -> None:
        cutoff = store.iso(datetime.now(UTC) - timedelta(seconds=PENDING_RETRY_AFTER_S))
        rows = list(self.db.query(
            "SELECT * FROM orders WHERE status = ? AND created_at < ?",
            [OrderStatus.PENDING_SUBMIT.value, cutoff],
        ))
        for row in rows:
            order = self._lookup(row["client_order_id"])
            if order is not None:
                self._apply_order(order)
            else:
                self._send_to_broker(_spec_from_row(row))

    def _apply_order(self, order: BrokerOrder) -> bool:
        """Move the journal row to the broker's state; True when something changed."""
        row = self._row(order.client_order_id)
        if row is None:
            return False  # not ours (reconciliation decides about unknown orders)
        old = OrderStatus(row["status"])
        same = (old == order.status and row["filled_qty"] == order.filled_qty
                and row["broker_order_id"] == order.broker_order_id)
        if same or not _advances(old, order.status):
            return False
        with store.transaction(self.db):
            self.db["orders"].update(order.client_order_id, {
                "broker_order_id": order.broker_order_id,
                "status": order.status.value,
                "filled_qty": order.filled_qty,
                "avg_fill_price": _text(order.avg_fill_price),
                "submitted_at": row["submitted_at"] or store.iso(order.submitted_at),
                "updated_at": store.now_iso(),
                "reason": order.reason or row["reason"],
            })
        if order.status != old:
            self.event("order_status", client_order_id=order.client_order_id, symbol=order.symbol,
                       old=old.value, new=order.status.value, filled_qty=order.filled_qty)
        return True

    def _record_fills(self, fills: tuple[BrokerFill, ...] | list[BrokerFill]) -> list[Fill]:
        """Each fill once; the new ones go to the portfolio and risk."""
        new: list[Fill] = []
        if not fills:
            return new
        with store.transaction(self.db):
            for f in fills:
                if self._row(f.client_order_id) is None:
                    continue  # a fill of an order we do not own
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO fills (fill_id, client_order_id, broker_order_id, symbol, side,"
                    " qty, price, ts, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [f.fill_id, f.client_order_id, f.broker_order_id, f.symbol, f.side.value, f.qty,
                     str(f.price), store.iso(f.ts), store.now_iso()],
                )
                if cursor.rowcount == 1:
                    new.append(Fill(fill_id=f.fill_id, client_order_id=f.client_order_id,
                                    broker_order_id=f.broker_order_id, symbol=f.symbol, side=f.side,
                                    qty=f.qty, price=f.price, ts=f.ts))
        for fill in new:
            self.event("fill", fill_id=fill.fill_id, client_order_id=fill.client_order_id,
                       symbol=fill.symbol, side=fill.side.value, qty=fill.qty, price=str(fill.price))
        if new:
            batch = Fills(tuple(new))
            self.tell_peer("portfolio", batch)
            self.tell_peer("risk", batch)
        return new

    # --- reconciliation (DESIGN §6) ---------------------------------------------------------

    def reconcile(self, reason: str) -> dict[str, Any]:
        self.reconciled = False
        self.tell_peer("risk", ReconcileStarted(reason))
        started = store.now_iso()
        oms = self.run.settings.oms
        report: dict[str, Any] = {
            "reason": reason, "started_at": started, "orders_checked": 0, "caught_up": [],
            "never_submitted": [], "lost_at_broker": [], "fills_recovered": 0, "unknown_orders": [],
            "stale_canceled": [], "position_differences": {},
        }
        # Take the update cursor first: anything that changes while we look is polled again later.
        self.cursor = self.broker.poll(None).cursor
        for row in list(self.db.query(f"SELECT * FROM orders WHERE {_IS_OPEN}", OPEN_STATUSES)):
            report["orders_checked"] += 1
            cid = row["client_order_id"]
            order = self.broker.get_by_client_id(cid)
            if order is None:
                if row["status"] == OrderStatus.PENDING_SUBMIT.value:
                    self._mark(cid, OrderStatus.NEVER_SUBMITTED, reason="not at the broker after restart")
                    report["never_submitted"].append(cid)
                else:
                    self._mark(cid, OrderStatus.CANCELED, reason="unknown at the broker")
                    report["lost_at_broker"].append(cid)
                continue
            if self._apply_order(order):
                report["caught_up"].append({"client_order_id": cid, "status": order.status.value})
            report["fills_recovered"] += len(self._record_fills(self.broker.fills_for(order.broker_order_id)))
        self._reconcile_unknown(report, oms.unknown_order_policy)
        self._cancel_stale(report, oms.stale_order_age_s)
        report["position_differences"] = self._position_differences()
        report["finished_at"] = store.now_iso()
        with store.transaction(self.db):
            self.db["reconciliations"].insert({"started_at": started, "finished_at": report["finished_at"],
                                               "reason": reason, "report": store.to_json(report)})
        self._alert_report(report)
        self.last_report = report
        self.reconciled = True
        self.event("reconciled", **{k: v for k, v in report.items() if k not in ("started_at",)})
        self._send_snapshot(authoritative=True)
        self.tell_peer("risk", self._open_orders())
        self.tell_peer("risk", ReconcileFinished(report))
        return report

    def _reconcile_unknown(self, report: dict[str, Any], policy: str) -> None:
        for order in self.broker.open_orders():
            if self._row(order.client_order_id) is not None:
                continue
            entry = {"client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id,
                     "symbol": order.symbol, "action": policy}
            if policy == "cancel":
                self._cancel(order.broker_order_id)
            elif policy == "adopt":
                self._adopt(order)
            report["unknown_orders"].append(entry)

    def _adopt(self, order: BrokerOrder) -> None:
        now = store.now_iso()
        with store.transaction(self.db):
            self.db["orders"].insert({
                "client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id,
                "symbol": order.symbol, "side": order.side.value, "qty": order.qty, "type": order.type.value,
                "time_in_force": order.time_in_force.value, "limit_price": _text(order.limit_price),
                "stop_price": _text(order.stop_price), "status": order.status.value,
                "filled_qty": order.filled_qty, "avg_fill_price": _text(order.avg_fill_price),
                "created_at": now, "submitted_at": store.iso(order.submitted_at), "updated_at": now,
                "reason": "adopted at reconciliation",
            })

    def _cancel_stale(self, report: dict[str, Any], max_age_s: float) -> None:
        if max_age_s <= 0:
            return
        cutoff = self.run.clock.now() - timedelta(seconds=max_age_s)
        for order in self.broker.open_orders():
            if order.submitted_at < cutoff and self._row(order.client_order_id) is not None:
                self._cancel(order.broker_order_id)
                report["stale_canceled"].append(order.client_order_id)

    def _position_differences(self) -> dict[str, dict[str, int]]:
        """Broker positions vs. the positions our fill journal adds up to; the broker wins."""
        local: Counter[str] = Counter()
        for row in self.db.query("SELECT symbol, side, sum(qty) AS q FROM fills GROUP BY symbol, side"):
            local[row["symbol"]] += Side(row["side"]).sign * int(row["q"])
        broker = {p.symbol: p.qty for p in self.broker.positions()}
        return {s: {"local": local.get(s, 0), "broker": broker.get(s, 0)}
                for s in set(local) | set(broker) if local.get(s, 0) != broker.get(s, 0)}

    def _alert_report(self, report: dict[str, Any]) -> None:
        if report["unknown_orders"]:
            self.alert("reconcile:unknown_orders", Severity.CRITICAL, "unknown orders at the broker",
                       f"{len(report['unknown_orders'])} open order(s) unknown to the journal: "
                       f"{report['unknown_orders']}")
        if report["position_differences"] or report["lost_at_broker"]:
            self.alert("reconcile:differences", Severity.HIGH, "reconciliation found differences",
                       f"positions: {report['position_differences']}; lost: {report['lost_at_broker']}")

    # --- cancels ----------------------------------------------------------------------------

    def on_cancel_all(self, message: CancelAll, sender: ActorAddress) -> None:
        count = self.cancel_open(lambda row: True, reason=message.reason)
        self.send(sender, CancelAllDone(message.command_id, count))

    def on_flatten(self, message: Flatten, sender: ActorAddress) -> None:
        """Operator's flatten: cancel everything, then close each broker position at market.
        The closing orders are journaled like any other (write-ahead), but bypass risk: they are
        the operator's, and they only reduce."""
        count = self.cancel_open(lambda row: True, reason="flatten")
        requests = []
        for position in self.broker.positions():
            if position.qty == 0:
                continue
            side = Side.SELL if position.qty > 0 else Side.BUY
            requests.append(OrderRequest(client_order_id=f"flat-{message.command_id[:12]}-{position.symbol}",
                                         symbol=position.symbol, side=side, qty=abs(position.qty)))
        fresh = self._journal_pending(tuple(requests))
        for request in fresh:
            self._submit(request)
        self.tell_peer("risk", self._open_orders())
        self.send(sender, FlattenDone(message.command_id, count, tuple(r.client_order_id for r in requests)))

    def cancel_open(self, which: Any, reason: str) -> int:
        rows = [r for r in self.db.query(
            "SELECT * FROM orders WHERE status IN (?, ?) AND broker_order_id IS NOT NULL",
            [OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value]) if which(r)]
        for row in rows:
            self._cancel(row["broker_order_id"])
        if rows:
            self.event("cancel_open", reason=reason, count=len(rows))
        return len(rows)

    def _cancel(self, broker_order_id: str) -> None:
        try:
            self.broker.cancel(broker_order_id)
        except (NotCancelable, OrderNotFound):
            pass  # already terminal; the next poll brings its final state
        except BrokerError as exc:
            self.event("cancel_failed", level="warning", broker_order_id=broker_order_id, error=repr(exc))

    def on_stop(self) -> None:
        policy = self.run.settings.oms.cancel_on_shutdown if self.run else "none"
        if policy == "all":
            self.cancel_open(lambda row: True, reason="shutdown")
        elif policy == "day":
            self.cancel_open(lambda row: row["time_in_force"] == TimeInForce.DAY.value, reason="shutdown")
        if policy != "none":
            self.poll()  # journal the cancels before we go
        self.broker.close()

    # --- helpers ----------------------------------------------------------------------------

    def _row(self, cid: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM orders WHERE client_order_id = ?", [cid]))
        return rows[0] if rows else None

    def _mark(self, cid: str, status: OrderStatus, reason: str) -> None:
        with store.transaction(self.db):
            self.db["orders"].update(cid, {"status": status.value, "reason": reason,
                                           "updated_at": store.now_iso()})
        self.event("order_status", client_order_id=cid, new=status.value, reason=reason)

    def _open_orders(self) -> OpenOrders:
        by_symbol: Counter[str] = Counter()
        pending: Counter[str] = Counter()
        for row in self.db.query(f"SELECT symbol, side, qty, filled_qty FROM orders WHERE {_IS_OPEN}",
                                 OPEN_STATUSES):
            by_symbol[row["symbol"]] += 1
            pending[row["symbol"]] += Side(row["side"]).sign * (row["qty"] - (row["filled_qty"] or 0))
        return OpenOrders(by_symbol=dict(by_symbol), pending_qty=dict(pending))

    def _send_snapshot(self, authoritative: bool = False) -> None:
        try:
            positions = {p.symbol: p.qty for p in self.broker.positions()}
            account = self.broker.account()
        except BrokerError as exc:
            self.event("snapshot_failed", level="warning", error=repr(exc))
            return
        self.last_snapshot = time.monotonic()
        self.tell_peer("portfolio", BrokerSnapshot(positions=positions, cash=account.cash,
                                                   equity=account.equity, ts=self.run.clock.now(),
                                                   authoritative=authoritative))

    def pong_info(self) -> dict[str, Any]:
        return {"reconciled": self.reconciled}


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _spec_from_row(row: dict[str, Any]) -> OrderSpec:
    from steadyhand.actors.messages import OrderType

    return OrderSpec(
        client_order_id=row["client_order_id"], symbol=row["symbol"], side=Side(row["side"]),
        qty=int(row["qty"]), type=OrderType(row["type"]), time_in_force=TimeInForce(row["time_in_force"]),
        limit_price=Decimal(row["limit_price"]) if row["limit_price"] else None,
        stop_price=Decimal(row["stop_price"]) if row["stop_price"] else None,
    )
