"""OMS: the only actor that talks to the broker about orders; owns the order journal.

The write-ahead order path (DESIGN §5):

1. an approved request is inserted as PENDING_SUBMIT and committed (``synchronous=FULL``) before
   the broker hears of it; a client order id already in the journal is a duplicate intent: dropped;
2. it is submitted with that client order id; a duplicate-id reply means it was accepted already
   (look it up, never resubmit); a transient error or unknown outcome is retried (tenacity), but
   only after a lookup by client id has said the broker does not have it -- a failed lookup is
   never taken for "not there";
3. broker updates move the row through the state machine; each fill is inserted once (its broker
   fill id is the primary key) and sent on to the portfolio and risk. Fills are journaled *before*
   the order's new status, so a crash in between leaves the order open and the next
   reconciliation fetches its fills; the poll cursor advances only after both are committed.

On every start, including restarts, it reconciles with the broker (DESIGN §6) while risk denies new
orders, stores the report, and only then lets trading resume. A reconciliation the broker cannot
answer is retried; risk keeps denying meanwhile.

Broker health: consecutive transient failures (or rejections) open a circuit; risk is told
(``BrokerHealth``) and denies every order, an alert goes out, the poll keeps probing, and the first
answer closes it again (after a fresh reconciliation). State-store faults (locked, disk full) halt
trading through the supervisor instead of crash-looping.

Named crash points (``steadyhand.runtime.crashpoints``) mark the places where a crash is most dangerous.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import (
    BrokerHealth,
    BrokerSnapshot,
    CancelAll,
    CancelAllDone,
    Fills,
    Flatten,
    FlattenDone,
    OpenOrders,
    OrderRequests,
    ReconcileFinished,
    ReconcileStarted,
    RequestHalt,
    SubmitBacklog,
    TradingStateChanged,
)
from steadyhand.brokers import make_broker
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
from steadyhand.domain import (
    BrokerOrder,
    Fill,
    OrderSpec,
    OrderStatus,
    OrderType,
    Severity,
    Side,
    TimeInForce,
    TradingState,
    market_hours,
)
from steadyhand.runtime.crashpoints import crash_point
from steadyhand.state import store
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from thespian.actors import ActorAddress

OPEN_STATUSES = tuple(s.value for s in OrderStatus if s.is_open)
_IS_OPEN = f"status IN ({','.join('?' * len(OPEN_STATUSES))})"  # SQL condition, with OPEN_STATUSES
PENDING_RETRY_AFTER_S = 1.0  # wall seconds before a PENDING_SUBMIT row is looked up and retried
SNAPSHOT_EVERY_S = 10.0  # broker positions sent to the portfolio for comparison
SUBMIT_ATTEMPTS = 3  # tenacity: per submission, inside one handler (short waits: the actor blocks)
PROBE_EVERY_S = 1.0  # while the circuit is open, the poll probes the broker this often
RECONCILE_RETRY_S = 1.0  # a reconciliation the broker could not answer is tried again after this
SUBMIT_CHUNK = 100  # submissions per handler run (the rest follow in a message to ourselves)
IDLE_POLL_S = 2.0  # poll period while the market is closed and nothing of ours is working
POSITION_SETTLE_ROUNDS = 5  # positions are read between two polls that saw no new fill
_TRANSIENT = (TransientBrokerError, UnknownOutcome)

# A status may only move forward: a late, older update never undoes a newer one.
_RANK = {OrderStatus.PENDING_SUBMIT: 0, OrderStatus.SUBMITTED: 1, OrderStatus.PARTIALLY_FILLED: 2}


def _advances(old: OrderStatus, new: OrderStatus) -> bool:
    if old.is_terminal:
        return False
    return new.is_terminal or _RANK.get(new, 0) >= _RANK.get(old, 0)


# SQLite primary result codes that mean "the store cannot take writes now", not "our SQL is wrong".
_STORE_FAULT_CODES = {5, 6, 8, 10, 13, 14}  # BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN


def is_store_fault(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _STORE_FAULT_CODES
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "full", "disk i/o", "readonly"))


@dataclass
class Circuit:
    """Broker circuit breaker. ``kind``: "" closed, "unreachable" (closed by the next answer),
    "rejecting" (closed after a cool-down; one more rejection re-opens it)."""

    kind: str = ""
    reason: str = ""
    failures: int = 0  # consecutive transient failures
    rejections: int = 0  # consecutive rejections
    opened_at: float = 0.0
    retry_at: float = 0.0  # monotonic; for "rejecting"
    last_probe: float = 0.0

    @property
    def open(self) -> bool:
        return bool(self.kind)


class OmsActor(SteadyActor):
    def setup(self) -> None:
        self.db = store.connect(self.run.db_path, synchronous="FULL")
        self.broker: Broker = make_broker(self.run)
        self.cursor: str | None = None
        self.reconciled = False
        self.last_report: dict[str, Any] | None = None
        self.last_snapshot = 0.0
        self.queued: set[str] = set()  # journaled, waiting in a SubmitBacklog message
        self.circuit = Circuit()
        self.broker_calls = 0  # requests made to the broker by this process (reported per reconciliation)
        self.stopping = False
        self.store_fault = ""  # the first store error; trading stays stopped in this process
        self.trading_state = TradingState.ACTIVE
        self.handlers = {OrderRequests: self.on_order_requests, SubmitBacklog: self.on_submit_backlog,
                         CancelAll: self.on_cancel_all, Flatten: self.on_flatten,
                         TradingStateChanged: self.on_trading_state}
        self.reconcile_reason = "retry"
        self.timers = {"poll": self.poll, "reconcile": lambda: self.reconcile(self.reconcile_reason)}

    def on_first_wiring(self) -> None:
        self.reconcile("start")
        self.every("poll", self.run.settings.oms.poll_interval_s, slow_period_s=IDLE_POLL_S, slow_when=self._idle)

    def on_peers_changed(self, names: set[str]) -> None:
        # A restarted peer starts knowing nothing: tell it what it needs from us.
        if "risk" in names:
            if self.reconciled and self.last_report is not None:
                self.tell_peer("risk", ReconcileFinished(self.last_report))
                self.tell_peer("risk", self._open_orders())
            if self.circuit.open:
                self.tell_peer("risk", BrokerHealth(ok=False, reason=self.circuit.reason))
        if "portfolio" in names:
            # A restarted portfolio may have missed fills while it was down, yet it takes its cash
            # from this snapshot: stale positions with fresh cash look like a loss and can trip the
            # daily-loss breaker. So the broker's positions come with it, authoritative.
            self._send_snapshot(authoritative=self.reconciled)

    def _dispatch(self, message: Any, sender: ActorAddress) -> None:
        # A store fault halts trading instead of crash-looping: every restart would meet the same
        # locked or full database, exhaust the restart intensity and halt anyway, only later.
        try:
            super()._dispatch(message, sender)
        except sqlite3.OperationalError as exc:
            if not is_store_fault(exc):
                raise  # a bug, not the disk: let it crash
            self._on_store_fault(exc)

    def _on_store_fault(self, exc: Exception) -> None:
        first = not self.store_fault
        self.store_fault = self.store_fault or str(exc)
        self.event("store_fault", level="critical", error=repr(exc), first=first)
        if first:
            reason = f"state store fault: {exc}"
            self.tell_peer("supervisor", RequestHalt(reason=reason, source="oms"))
            self.alert("store:fault", Severity.CRITICAL, "steadyhand: state store fault, trading halted",
                       f"the OMS could not write its journal ({exc}); no order is sent until restart")

    # --- the order path ---------------------------------------------------------------------

    def on_trading_state(self, message: TradingStateChanged, sender: ActorAddress) -> None:
        self.trading_state = message.state

    def on_order_requests(self, message: OrderRequests, sender: ActorAddress) -> None:
        # HALTED: defence in depth, risk denies these already.
        why_not = ("halted" if self.trading_state is TradingState.HALTED
                   else "reconciling" if not self.reconciled else "broker circuit open" if self.circuit.open
                   else "store fault" if self.store_fault else "stopping" if self.stopping else "")
        if why_not:
            self.event("requests_dropped", level="warning", reason=why_not, count=len(message.requests))
            return
        fresh = self._journal_pending(message.requests)
        self.queued.update(r.client_order_id for r in fresh)
        self._submit_some(tuple(fresh), message.bar_sent_at)

    def _submit_some(self, requests: tuple[OrderSpec, ...], bar_sent_at: float) -> None:
        """Submit up to SUBMIT_CHUNK journaled requests; the rest follow in a message to ourselves,
        so a burst (thousands of orders on one bar) never keeps this actor from its heartbeat."""
        acks: list[BrokerOrder] = []
        for request in requests[:SUBMIT_CHUNK]:
            self.queued.discard(request.client_order_id)
            crash_point("oms.after_journal")
            if self.circuit.open or self.stopping or self.trading_state is TradingState.HALTED:
                continue  # stays PENDING_SUBMIT: the poll retries it, or reconciliation settles it
            order = self._submit(request, bar_sent_at)
            if order is not None:
                acks.append(order)
        self._apply_orders(acks)
        if acks:
            self.hurry("poll")  # out of the idle rate: these orders' fills are wanted now
        rest = requests[SUBMIT_CHUNK:]
        if rest:
            self.send(self.myAddress, SubmitBacklog(rest, bar_sent_at))
        if requests:
            self.tell_peer("risk", self._open_orders())

    def on_submit_backlog(self, message: SubmitBacklog, sender: ActorAddress) -> None:
        self._submit_some(message.requests, message.bar_sent_at)

    def _journal_pending(self, requests: tuple[OrderSpec, ...]) -> list[OrderSpec]:
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

    def _submit(self, request: OrderSpec, bar_sent_at: float = 0.0) -> BrokerOrder | None:
        self.still_alive()  # a burst of thousands takes seconds: busy, not hung
        return self._send_to_broker(request, bar_sent_at, looked_up=True)  # a fresh id: the broker cannot have it

    def _send_to_broker(self, spec: OrderSpec, bar_sent_at: float = 0.0,
                        looked_up: bool = False) -> BrokerOrder | None:
        """Submit with retries; ``looked_up``: we know the broker does not have this id yet.

        Returns the broker's acknowledgement for the caller to journal (``_apply_orders``: one
        commit for a whole chunk), or None when rejected or the outcome is unknown. Until it is
        journaled the row stays PENDING_SUBMIT, which is safe: a crash in between is the
        ``oms.after_submit`` case, settled by looking the id up at the broker."""
        cid = spec.client_order_id
        try:
            order = self._submit_with_retries(spec, looked_up)
        except OrderRejected as exc:
            self._mark(cid, OrderStatus.REJECTED, reason=str(exc))
            self.alert(f"rejected:{spec.symbol}", Severity.HIGH, f"order rejected: {spec.symbol}",
                       f"{cid}: {exc}")
            self._rejected(str(exc))
            return None
        except BrokerError as exc:
            self.event("submit_uncertain", level="warning", client_order_id=cid, error=repr(exc))
            return None  # still PENDING_SUBMIT: the poll looks it up and retries it later
        crash_point("oms.after_submit")
        self.circuit.rejections = 0
        if self.circuit.kind == "rejecting":
            self._close_circuit()
        latency_ms = (time.time() - bar_sent_at) * 1000 if bar_sent_at else None
        self.event("order_submitted", client_order_id=cid, broker_order_id=order.broker_order_id,
                   symbol=spec.symbol, side=spec.side.value, qty=spec.qty, status=order.status.value,
                   bar_to_ack_ms=latency_ms)
        return order

    def _apply_orders(self, orders: list[BrokerOrder]) -> None:
        """Journal a batch of broker acknowledgements in one transaction (one fsync, not one each)."""
        if orders:
            with store.transaction(self.db):
                for order in orders:
                    self._apply_order(order)

    def _submit_with_retries(self, spec: OrderSpec, looked_up: bool) -> BrokerOrder:
        cid = spec.client_order_id
        retrying = Retrying(
            stop=stop_after_attempt(SUBMIT_ATTEMPTS) | (lambda _state: self.circuit.open),
            wait=wait_exponential(multiplier=0.05, max=0.4),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if not looked_up:  # before any resubmission: did an earlier try get there?
                    found = self._call("get_by_client_id", cid)
                    if found is not None:
                        return found
                looked_up = False
                try:
                    return self._call("submit", spec)
                except DuplicateClientOrderId:
                    found = self._call("get_by_client_id", cid)  # accepted earlier: adopt, never resubmit
                    if found is None:
                        raise UnknownOutcome(f"{cid}: duplicate id but not found") from None
                    return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _find(self, cid: str) -> BrokerOrder | None:
        """The broker's order for ``cid``; None only when the broker says it has none.
        Raises BrokerError when the broker could not be asked."""
        return self._call("get_by_client_id", cid)

    # --- broker calls and the circuit -------------------------------------------------------

    def _idle(self) -> bool:
        """Nothing can change at the broker: market closed and nothing of ours working. Then the
        poll runs only every IDLE_POLL_S (idle cost), still often enough to notice anything."""
        if self.circuit.open or not self.reconciled or market_hours.is_open(self.run.clock.now()):
            return False
        return not self.db.execute(f"SELECT 1 FROM orders WHERE {_IS_OPEN} LIMIT 1", OPEN_STATUSES).fetchone()

    def _call(self, op: str, *args: Any) -> Any:
        self.broker_calls += 1
        try:
            result = getattr(self.broker, op)(*args)
        except _TRANSIENT as exc:
            self._broker_failed(op, exc)
            raise
        self.circuit.failures = 0
        if self.circuit.kind == "unreachable":
            self._close_circuit()
        return result

    def _broker_failed(self, op: str, exc: Exception) -> None:
        self.circuit.failures += 1
        self.event("broker_call_failed", level="warning", op=op, error=repr(exc),
                   consecutive=self.circuit.failures)
        if not self.circuit.open and self.circuit.failures >= self.run.settings.oms.circuit_failures:
            self._open_circuit("unreachable", f"{self.circuit.failures} broker calls failed in a row: {exc}")

    def _rejected(self, reason: str) -> None:
        self.circuit.rejections += 1
        if not self.circuit.open and self.circuit.rejections >= self.run.settings.oms.circuit_failures:
            self._open_circuit("rejecting", f"{self.circuit.rejections} orders rejected in a row: {reason}")

    def _open_circuit(self, kind: str, reason: str) -> None:
        now = time.monotonic()
        self.circuit.kind, self.circuit.reason, self.circuit.opened_at = kind, reason, now
        self.circuit.retry_at = now + self.run.settings.oms.circuit_cooldown_s
        self.event("circuit_open", level="error", kind=kind, reason=reason)
        self.tell_peer("risk", BrokerHealth(ok=False, reason=reason))
        self.alert("broker:circuit", Severity.CRITICAL, "broker unavailable: orders stopped",
                   f"{reason}; risk denies every order until the broker answers again")

    def _close_circuit(self) -> None:
        kind = self.circuit.kind
        down_s = time.monotonic() - self.circuit.opened_at
        self.circuit.kind, self.circuit.reason, self.circuit.failures = "", "", 0
        # After rejections, one more rejection re-opens at once (half-open).
        self.circuit.rejections = self.run.settings.oms.circuit_failures - 1 if kind == "rejecting" else 0
        self.event("circuit_closed", kind=kind, down_s=round(down_s, 3))
        self.alert("broker:circuit_closed", Severity.HIGH, "broker available again (resolved)",
                   f"the broker answers again after {down_s:.1f}s ({kind})")
        if kind == "unreachable" and self.reconciled:
            # What happened while we could not look: reconcile before trading resumes.
            self.reconcile_reason = "broker recovered"
            self.after(0, "reconcile")
        else:
            self.tell_peer("risk", BrokerHealth(ok=True))

    # --- broker updates ---------------------------------------------------------------------

    def poll(self) -> None:
        if self.circuit.open:
            now = time.monotonic()
            if self.circuit.kind == "rejecting" and now >= self.circuit.retry_at:
                self._close_circuit()
            elif now - self.circuit.last_probe < PROBE_EVERY_S:
                return
            self.circuit.last_probe = now
        try:
            changed, _ = self._drain_updates()
        except BrokerError as exc:
            self.event("poll_failed", level="warning", error=repr(exc))
            return
        if changed:
            self.tell_peer("risk", self._open_orders())
        if not self.reconciled or self.stopping or self.store_fault:
            return
        if not self.circuit.open:
            self._retry_pending()
            self._sweep_stale()
        if time.monotonic() - self.last_snapshot > SNAPSHOT_EVERY_S:
            self._send_snapshot()

    def _drain_updates(self) -> tuple[bool, int]:
        """Apply what changed at the broker since the cursor: fills first, then order states.
        Returns (anything changed, number of fills the broker reported, ours or not)."""
        updates = self._call("poll", self.cursor)
        if updates.fills:
            crash_point("oms.after_fill_received")
        with store.transaction(self.db):  # one commit for the whole poll: fills and states together
            new_fills = self._record_fills(updates.fills, notify=False)
            changed = bool(new_fills)
            for order in updates.orders:
                self.still_alive()
                changed |= self._apply_order(order)
        self._notify_fills(new_fills)  # after the commit: the portfolio reads the journal
        self.cursor = updates.cursor  # only now: a crash or store fault above re-reads them
        return changed, len(updates.fills)

    def _retry_pending(self) -> None:
        if self.stopping or self.trading_state is TradingState.HALTED:
            return  # nothing new goes out; reconciliation settles what is left
        cutoff = store.iso(datetime.now(UTC) - timedelta(seconds=PENDING_RETRY_AFTER_S))
        rows = [r for r in self.db.query(
            "SELECT * FROM orders WHERE status = ? AND created_at < ? ORDER BY created_at LIMIT ?",
            [OrderStatus.PENDING_SUBMIT.value, cutoff, SUBMIT_CHUNK + len(self.queued)],
        ) if r["client_order_id"] not in self.queued][:SUBMIT_CHUNK]  # queued ones are on their way
        for row in rows:
            if self.circuit.open:
                return
            try:
                order = self._find(row["client_order_id"])
            except BrokerError as exc:
                self.event("lookup_failed", level="warning", client_order_id=row["client_order_id"],
                           error=repr(exc))
                continue  # unknown: never resubmit on a failed lookup
            if order is None:
                order = self._send_to_broker(_spec_from_row(row), looked_up=True)
            if order is not None:
                self._apply_order(order)

    def _sweep_stale(self) -> None:
        """Open orders older than ``stale_order_age_s`` (broker time) are cancelled while running
        too, not only at reconciliation."""
        max_age = self.run.settings.oms.stale_order_age_s
        if max_age <= 0:
            return
        cutoff = store.iso(self.run.clock.now() - timedelta(seconds=max_age))
        rows = list(self.db.query(
            "SELECT client_order_id, broker_order_id FROM orders WHERE status IN (?, ?) "
            "AND broker_order_id IS NOT NULL AND submitted_at < ?",
            [OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value, cutoff]))
        for row in rows:
            self.event("stale_order", client_order_id=row["client_order_id"], max_age_s=max_age)
            self._cancel(row["broker_order_id"])

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
        with store.transaction(self.db):  # plain SQL: this runs for every order and every update
            self.db.execute(
                "UPDATE orders SET broker_order_id = ?, status = ?, filled_qty = ?, avg_fill_price = ?,"
                " submitted_at = ?, updated_at = ?, reason = ? WHERE client_order_id = ?",
                [order.broker_order_id, order.status.value, order.filled_qty, _text(order.avg_fill_price),
                 row["submitted_at"] or store.iso(order.submitted_at), store.now_iso(),
                 order.reason or row["reason"], order.client_order_id])
        if order.status != old:
            self.event("order_status", client_order_id=order.client_order_id, symbol=order.symbol,
                       old=old.value, new=order.status.value, filled_qty=order.filled_qty)
        return True

    def _record_fills(self, fills: tuple[Fill, ...] | list[Fill], notify: bool = True) -> list[Fill]:
        """Each fill once; the new ones go to the portfolio and risk (``notify``: now, else the
        caller does it once its enclosing transaction has committed)."""
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
                    new.append(f)
        if notify:
            self._notify_fills(new)
        return new

    def _notify_fills(self, new: list[Fill]) -> None:
        for fill in new:
            self.event("fill", fill_id=fill.fill_id, client_order_id=fill.client_order_id,
                       symbol=fill.symbol, side=fill.side.value, qty=fill.qty, price=str(fill.price))
        if new:
            batch = Fills(tuple(new))
            self.tell_peer("portfolio", batch)
            self.tell_peer("risk", batch)

    # --- reconciliation (DESIGN §6) ---------------------------------------------------------

    def reconcile(self, reason: str) -> dict[str, Any] | None:
        """Bring the journal in line with the broker; None when the broker could not be asked
        (tried again in RECONCILE_RETRY_S; risk denies meanwhile)."""
        self.reconciled = False
        self.tell_peer("risk", ReconcileStarted(reason))
        try:
            report = self._reconcile(reason)
        except BrokerError as exc:
            self.event("reconcile_failed", level="error", reason=reason, error=repr(exc))
            self.alert("reconcile:failed", Severity.HIGH, "reconciliation could not reach the broker",
                       f"{reason}: {exc}; retrying; no order goes out until it succeeds")
            self.reconcile_reason = reason
            self.after(RECONCILE_RETRY_S, "reconcile")
            return None
        self.last_report = report
        self.reconciled = True
        self.event("reconciled", **{k: v for k, v in report.items() if k not in ("started_at", "lines")})
        self._send_snapshot(authoritative=True)
        self.tell_peer("risk", self._open_orders())
        if not self.circuit.open:
            self.tell_peer("risk", BrokerHealth(ok=True))
        self.tell_peer("risk", ReconcileFinished(report))
        return report

    def _reconcile(self, reason: str) -> dict[str, Any]:
        started = store.now_iso()
        oms = self.run.settings.oms
        report: dict[str, Any] = {
            "reason": reason, "started_at": started, "orders_checked": 0, "caught_up": [],
            "never_submitted": [], "lost_at_broker": [], "fills_recovered": 0, "unknown_orders": [],
            "stale_canceled": [], "position_differences": {}, "lines": [],
        }
        lines: list[str] = report["lines"]
        calls_before = self.broker_calls
        # Take the update cursor first: anything that changes while we look is polled again later.
        self.cursor = self._call("poll", None).cursor
        # One request for what the broker still has open; a lookup each only for the rest (ended
        # while we were down, or never got there): 1 + k requests instead of 2 per order, which
        # matters at a broker's rate limit (Alpaca: 200 a minute).
        open_at_broker = self._call("open_orders")
        by_cid = {o.client_order_id: o for o in open_at_broker}
        open_rows = list(self.db.query(  # with the quantity their journaled fills add up to
            "SELECT o.*, (SELECT coalesce(sum(f.qty), 0) FROM fills f WHERE f.client_order_id = o.client_order_id)"
            f" AS journaled_fill_qty FROM orders o WHERE o.{_IS_OPEN}", OPEN_STATUSES))
        for row in open_rows:
            self.still_alive()
            report["orders_checked"] += 1
            cid = row["client_order_id"]
            order = by_cid.get(cid) or self._find(cid)
            if order is None:
                if row["status"] == OrderStatus.PENDING_SUBMIT.value:
                    self._mark(cid, OrderStatus.NEVER_SUBMITTED, reason="not at the broker after restart")
                    report["never_submitted"].append(cid)
                    lines.append(f"{cid}: pending_submit -> never_submitted (never reached the broker)")
                else:
                    self._mark(cid, OrderStatus.CANCELED, reason="unknown at the broker")
                    report["lost_at_broker"].append(cid)
                    lines.append(f"{cid}: {row['status']} -> canceled (the broker does not know it)")
                crash_point("oms.mid_reconcile")
                continue
            # Fills first, then the status: a crash in between leaves the order open for next time.
            # Asked for only when the broker has filled more than the journal holds fills for.
            recovered = 0
            if order.filled_qty > row["journaled_fill_qty"]:
                recovered = len(self._record_fills(self._call("fills_for", order.broker_order_id)))
            report["fills_recovered"] += recovered
            if self._apply_order(order):
                report["caught_up"].append({"client_order_id": cid, "status": order.status.value})
                lines.append(f"{cid}: {row['status']} -> {order.status.value} "
                             f"(filled {order.filled_qty}/{order.qty}, {recovered} fill(s) recovered)")
            crash_point("oms.mid_reconcile")
        report["fills_recovered"] += self._recover_missing_fills(lines)
        self._reconcile_unknown(report, oms.unknown_order_policy, open_at_broker)
        self._cancel_stale(report, oms.stale_order_age_s, open_at_broker)
        report["position_differences"] = self._position_differences()
        for symbol, diff in sorted(report["position_differences"].items()):
            lines.append(f"position {symbol}: journal {diff['local']}, broker {diff['broker']} "
                         f"-> adopted the broker's")
        report["broker_calls"] = self.broker_calls - calls_before
        report["finished_at"] = store.now_iso()
        with store.transaction(self.db):
            self.db["reconciliations"].insert({"started_at": started, "finished_at": report["finished_at"],
                                               "reason": reason, "report": store.to_json(report)})
        self._alert_report(report)
        return report

    def _recover_missing_fills(self, lines: list[str]) -> int:
        """Safety net: a terminal order whose journaled fills add up to less than its filled qty."""
        rows = list(self.db.query(
            "SELECT o.client_order_id, o.broker_order_id, o.filled_qty, coalesce(sum(f.qty), 0) AS got "
            "FROM orders o LEFT JOIN fills f ON f.client_order_id = o.client_order_id "
            "WHERE o.broker_order_id IS NOT NULL AND o.filled_qty > 0 "
            "GROUP BY o.client_order_id HAVING got < o.filled_qty"))
        recovered = 0
        for row in rows:
            got = len(self._record_fills(self._call("fills_for", row["broker_order_id"])))
            recovered += got
            if got:
                lines.append(f"{row['client_order_id']}: {got} missing fill(s) recovered")
        return recovered

    def _reconcile_unknown(self, report: dict[str, Any], policy: str, open_at_broker: list[BrokerOrder]) -> None:
        for order in open_at_broker:
            if self._row(order.client_order_id) is not None:
                continue
            entry = {"client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id,
                     "symbol": order.symbol, "action": policy}
            if policy == "cancel":
                self._cancel(order.broker_order_id)
                action = "canceled at the broker"
            elif policy == "adopt":
                self._adopt(order)
                action = "adopted into the journal"
            else:
                action = "left working (alert only)"
            report["unknown_orders"].append(entry)
            report["lines"].append(f"{order.client_order_id}: open at the broker, unknown to the journal "
                                   f"-> {action}")

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
        self._record_fills(self._call("fills_for", order.broker_order_id))  # ours now, fills included

    def _cancel_stale(self, report: dict[str, Any], max_age_s: float, open_at_broker: list[BrokerOrder]) -> None:
        if max_age_s <= 0:
            return
        cutoff = self.run.clock.now() - timedelta(seconds=max_age_s)
        for order in open_at_broker:
            if order.submitted_at < cutoff and self._row(order.client_order_id) is not None:
                self._cancel(order.broker_order_id)
                report["stale_canceled"].append(order.client_order_id)
                report["lines"].append(f"{order.client_order_id}: open since {order.submitted_at:%H:%M:%S}, "
                                       f"older than {max_age_s:g}s -> canceled")

    def _position_differences(self) -> dict[str, dict[str, int]]:
        """Broker positions vs. the journal's (its fills plus earlier adopted differences); the
        broker wins, and the difference is journaled with the report (verify reads it back).

        Positions are read between two polls that saw no new fill, so a fill happening while we
        compare is journaled first rather than mistaken for a difference."""
        for _ in range(POSITION_SETTLE_ROUNDS):
            self._drain_updates()
            broker = {p.symbol: p.qty for p in self._call("positions")}
            if self._drain_updates()[1] == 0:
                break
        local = journal_positions(self.db)
        return {s: {"local": local.get(s, 0), "broker": broker.get(s, 0)}
                for s in set(local) | set(broker) if local.get(s, 0) != broker.get(s, 0)}

    def _alert_report(self, report: dict[str, Any]) -> None:
        lines = "\n".join(report["lines"])
        if report["unknown_orders"]:
            self.alert("reconcile:unknown_orders", Severity.CRITICAL, "unknown orders at the broker",
                       f"{len(report['unknown_orders'])} open order(s) unknown to the journal: "
                       f"{report['unknown_orders']}\n{lines}")
        if report["position_differences"] or report["lost_at_broker"]:
            self.alert("reconcile:differences", Severity.HIGH, "reconciliation found differences",
                       f"positions: {report['position_differences']}; lost: {report['lost_at_broker']}\n{lines}")
        if report["stale_canceled"]:
            self.alert("reconcile:stale", Severity.WARNING, "stale orders cancelled",
                       f"{len(report['stale_canceled'])} order(s) older than the stale age cancelled\n{lines}")
        if report["never_submitted"] or report["caught_up"] or report["fills_recovered"]:
            self.alert("reconcile:caught_up", Severity.INFO, "reconciliation caught up with the broker", lines)

    # --- cancels ----------------------------------------------------------------------------

    def on_cancel_all(self, message: CancelAll, sender: ActorAddress) -> None:
        count = self.cancel_everything(reason=message.reason)
        self.send(sender, CancelAllDone(message.command_id, count))

    def on_flatten(self, message: Flatten, sender: ActorAddress) -> None:
        """Operator's flatten: cancel everything, then close each broker position at market.
        The closing orders are journaled like any other (write-ahead), but bypass risk: they are
        the operator's, and they only reduce."""
        count = self.cancel_everything(reason="flatten")
        requests = []
        try:
            positions = self._call("positions")
        except BrokerError as exc:
            self.event("flatten_failed", level="error", error=repr(exc))
            self.alert("flatten:failed", Severity.CRITICAL, "flatten could not read broker positions", str(exc))
            positions = []
        for position in positions:
            if position.qty == 0:
                continue
            side = Side.SELL if position.qty > 0 else Side.BUY
            requests.append(OrderSpec(client_order_id=f"flat-{message.command_id[:12]}-{position.symbol}",
                                      symbol=position.symbol, side=side, qty=abs(position.qty)))
        fresh = self._journal_pending(tuple(requests))
        self._apply_orders([o for o in map(self._submit, fresh) if o is not None])
        self.tell_peer("risk", self._open_orders())
        self.send(sender, FlattenDone(message.command_id, count, tuple(r.client_order_id for r in requests)))

    def cancel_everything(self, reason: str) -> int:
        """The kill switch: one request cancels every open order at the broker (ours and any it has
        that we do not know), so a halt costs one round trip whatever the size of the book."""
        try:
            count = int(self._call("cancel_all"))
        except BrokerError as exc:
            # Unknown outcome or broker down: fall back to one cancel per journaled order.
            self.event("cancel_all_failed", level="warning", error=repr(exc))
            return self.cancel_open(lambda row: True, reason=reason)
        crash_point("oms.mid_cancel_all")  # the broker has cancelled; the journal does not know yet
        self.event("cancel_all", reason=reason, count=count)
        return count

    def cancel_open(self, which: Callable[[dict[str, Any]], bool], reason: str) -> int:
        rows = [r for r in self.db.query(
            "SELECT * FROM orders WHERE status IN (?, ?) AND broker_order_id IS NOT NULL",
            [OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value]) if which(r)]
        for row in rows:
            self.still_alive()
            self._cancel(row["broker_order_id"])
            crash_point("oms.mid_cancel_all")
        if rows:
            self.event("cancel_open", reason=reason, count=len(rows))
        return len(rows)

    def _cancel(self, broker_order_id: str) -> None:
        try:
            self._call("cancel", broker_order_id)
        except (NotCancelable, OrderNotFound):
            pass  # already terminal; the next poll brings its final state
        except BrokerError as exc:
            # A cancel is idempotent: an unknown outcome is settled by the next poll or sweep.
            self.event("cancel_failed", level="warning", broker_order_id=broker_order_id, error=repr(exc))

    def on_stop(self) -> None:
        self.stopping = True  # nothing new goes out from here on (no pending retries)
        policy = self.run.settings.oms.cancel_on_shutdown if self.run else "none"
        if policy == "all":
            self.cancel_everything(reason="shutdown")
        elif policy == "day":
            self.cancel_open(lambda row: row["time_in_force"] == TimeInForce.DAY.value, reason="shutdown")
        if policy != "none":
            try:
                self._drain_updates()  # journal the cancels before we go
            except (BrokerError, sqlite3.Error) as exc:
                self.event("stop_poll_failed", level="warning", error=repr(exc))
        self.broker.close()

    # --- helpers ----------------------------------------------------------------------------

    def _row(self, cid: str) -> sqlite3.Row | None:
        cursor = self.db.conn.cursor()
        cursor.row_factory = sqlite3.Row  # read by column name, without sqlite-utils' per-row dicts
        return cursor.execute("SELECT * FROM orders WHERE client_order_id = ?", [cid]).fetchone()

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
        """Broker positions and cash to the portfolio. An authoritative one (the portfolio adopts
        it) is read between two polls that saw no new fill, so it matches the fills the portfolio
        has been or is about to be sent -- no fill counted twice, none missed."""
        try:
            for _ in range(POSITION_SETTLE_ROUNDS if authoritative else 1):
                if authoritative:
                    self._drain_updates()
                positions = {p.symbol: p.qty for p in self._call("positions")}
                account = self._call("account")
                if not authoritative or self._drain_updates()[1] == 0:
                    break
        except BrokerError as exc:
            self.event("snapshot_failed", level="warning", error=repr(exc))
            return
        self.last_snapshot = time.monotonic()
        self.tell_peer("portfolio", BrokerSnapshot(positions=positions, cash=account.cash,
                                                   equity=account.equity, ts=self.run.clock.now(),
                                                   authoritative=authoritative))

    def pong_info(self) -> dict[str, Any]:
        return {"reconciled": self.reconciled, "circuit": self.circuit.kind or "closed",
                "store_fault": self.store_fault}


def journal_positions(db: Any) -> dict[str, int]:
    """What the journal says we hold: every fill, plus each difference a reconciliation adopted
    from the broker (the broker wins, and the journal records that it did)."""
    local: Counter[str] = Counter()
    for row in db.query("SELECT symbol, side, sum(qty) AS q FROM fills GROUP BY symbol, side"):
        local[row["symbol"]] += Side(row["side"]).sign * int(row["q"])
    for row in db.query("SELECT report FROM reconciliations"):
        for symbol, diff in json.loads(row["report"]).get("position_differences", {}).items():
            local[symbol] += int(diff["broker"]) - int(diff["local"])
    return {s: q for s, q in local.items() if q}


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _spec_from_row(row: dict[str, Any]) -> OrderSpec:
    return OrderSpec(
        client_order_id=row["client_order_id"], symbol=row["symbol"], side=Side(row["side"]),
        qty=int(row["qty"]), type=OrderType(row["type"]), time_in_force=TimeInForce(row["time_in_force"]),
        limit_price=Decimal(row["limit_price"]) if row["limit_price"] else None,
        stop_price=Decimal(row["stop_price"]) if row["stop_price"] else None,
    )
