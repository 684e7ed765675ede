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

This actor is the shell: messages, timers, broker calls and what to tell whom. The journal's SQL
and state machine are ``orders/journal.py``, reconciliation ``orders/reconcile.py`` (this actor is
its host), the breaker's state ``orders/circuit.py``.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import (
    BrokerHealth,
    BrokerSnapshot,
    CancelAll,
    CancelAllCompleted,
    CancelOrder,
    Fills,
    Flatten,
    FlattenCompleted,
    OpenOrders,
    OrderRequests,
    ReconcileCompleted,
    ReconcileStarted,
    ReplaceOrder,
    RequestHalt,
    Step,
    SubmitBacklog,
    TradingStateChanged,
)
from steadyhand.brokers import make_broker
from steadyhand.brokers.base import (
    Broker,
    BrokerError,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
)
from steadyhand.domain import (
    BrokerOrder,
    Fill,
    OrderSpec,
    OrderStatus,
    Severity,
    Side,
    TimeInForce,
    TradingState,
    market_hours,
)
from steadyhand.orders import amend
from steadyhand.orders import reconcile as reconciliation
from steadyhand.orders.circuit import Circuit
from steadyhand.orders.journal import OrderJournal, is_store_fault, spec_from_row
from steadyhand.orders.submission import TRANSIENT, submit_with_retries
from steadyhand.runtime.crashpoints import crash_point
from steadyhand.sim.lockstep import is_lockstep
from steadyhand.state import store
from thespian.actors import ActorAddress

PENDING_RETRY_AFTER_S = 1.0  # wall seconds before a PENDING_SUBMIT row is looked up and retried
SNAPSHOT_EVERY_S = 10.0  # broker positions sent to the portfolio for comparison
PROBE_EVERY_S = 1.0  # while the circuit is open, the poll probes the broker this often
RECONCILE_RETRY_S = 1.0  # a reconciliation the broker could not answer is tried again after this
SUBMIT_CHUNK = 100  # submissions per handler run (the rest follow in a message to ourselves)
IDLE_POLL_S = 2.0  # poll period while the market is closed and nothing of ours is working
BURST_POLL_EVERY_S = 1.0  # while a backlog goes out, the poll runs at most this often (see poll)


class OmsActor(SteadyActor):
    def setup(self) -> None:
        self.db = store.connect(self.run.db_path, synchronous="FULL")
        self.journal = OrderJournal(self.db)
        self.broker: Broker = make_broker(self.run)
        self.cursor: str | None = None
        self.reconciled = False
        self.last_report: dict[str, Any] | None = None
        self.last_snapshot = 0.0
        self.last_poll = 0.0  # monotonic time of the last poll that ran
        self.queued: set[str] = set()  # journaled, waiting in the backlog (client order ids)
        # Journaled requests still to submit, each with its bar's sent_at: in memory, not in the
        # SubmitBacklog message, which only wakes us (re-sending thousands of specs per chunk cost
        # O(burst^2) pickling). Lost with the process like a message would be: the rows are
        # PENDING_SUBMIT, settled by reconciliation.
        self.backlog: deque[tuple[OrderSpec, float]] = deque()
        self.wake_sent = False  # a SubmitBacklog to ourselves is on its way
        self.submit_times: dict[str, tuple[float, float]] = {}  # cid -> (sent, acked) wall times, until journaled
        self.circuit = Circuit()
        self.broker_calls = 0  # requests made to the broker by this process (reported per reconciliation)
        self.stopping = False
        self.store_fault = ""  # the first store error; trading stays stopped in this process
        self.trading_state = TradingState.ACTIVE
        self.handlers = {OrderRequests: self.on_order_requests, SubmitBacklog: self.on_submit_backlog,
                         CancelAll: self.on_cancel_all, Flatten: self.on_flatten,
                         ReplaceOrder: self.on_replace, CancelOrder: self.on_cancel_order,
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
                self.tell_peer("risk", ReconcileCompleted(self.last_report))
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

    def _why_not(self) -> str:
        """Why nothing may go to the broker now ("" when it may)."""
        return ("halted" if self.trading_state is TradingState.HALTED
                else "reconciling" if not self.reconciled else "broker circuit open" if self.circuit.open
                else "store fault" if self.store_fault else "stopping" if self.stopping else "")

    def on_order_requests(self, message: OrderRequests, sender: ActorAddress) -> None:
        why_not = self._why_not()  # HALTED: defence in depth, risk denies these already
        if why_not:
            self.event("requests_dropped", level="warning", reason=why_not, count=len(message.requests))
            return
        fresh = self._journal_pending(message.requests, message.bar_sent_at)
        self._enqueue(fresh, message.bar_sent_at)
        if not self.wake_sent:  # else the backlog's turn comes first; these follow it
            self._submit_some()

    def _enqueue(self, requests: list[OrderSpec] | tuple[OrderSpec, ...], bar_sent_at: float) -> None:
        self.queued.update(r.client_order_id for r in requests)
        self.backlog.extend((r, bar_sent_at) for r in requests)

    def _submit_some(self) -> None:
        """Submit up to SUBMIT_CHUNK journaled requests of the backlog as one batch; a message to
        ourselves wakes us for the rest, so a burst (thousands of orders on one bar) never keeps
        this actor from its heartbeat. Their rows were committed before this
        (``_journal_pending``): the batch keeps the rule "journaled before the broker hears of it"."""
        self.wake_sent = False  # (set again below; never left set by a failed run, or the backlog would stall)
        chunk = [self.backlog.popleft() for _ in range(min(SUBMIT_CHUNK, len(self.backlog)))]
        for request, _ in chunk:
            self.queued.discard(request.client_order_id)
            crash_point("oms.after_journal")  # per order, all before the batch: none is at the broker
        acks: list[BrokerOrder] = []
        if chunk and not (self.circuit.open or self.stopping or self.trading_state is TradingState.HALTED):
            acks = self._submit_batch(chunk)
        # else they stay PENDING_SUBMIT: the poll retries them, or reconciliation settles them
        self.apply_orders(acks)
        if acks:
            self.hurry("poll")  # out of the idle rate: these orders' fills are wanted now
        self.wake_sent = bool(self.backlog)
        if self.wake_sent:
            self.send(self.myAddress, SubmitBacklog(()))
        if chunk and (not self.backlog or len(acks) < len(chunk)):
            # Risk counts each approval itself, and an accepted row stays open: mid-burst the open
            # set changes only by a rejection (or an unsettled order). Re-reading every open row
            # after each chunk made a burst O(burst^2 / SUBMIT_CHUNK); now once at its end.
            self.tell_peer("risk", self._open_orders())

    def _submit_batch(self, chunk: list[tuple[OrderSpec, float]]) -> list[BrokerOrder]:
        """Step 4 for a chunk: one ``Broker.submit_many`` (the sim: one exchange transaction). An
        order the batch did not settle (transient, unknown outcome, duplicate id) goes the one-by-one
        way: lookup by client id first, then retries. The acknowledgements, for ``apply_orders``."""
        specs = [spec for spec, _ in chunk]
        self.still_alive()
        self.broker_calls += 1
        sent_at = time.time()
        results = self.broker.submit_many(specs, self.still_alive)
        acked_at = time.time()
        errors = [r for r in results if isinstance(r, BrokerError)]
        if len(errors) < len(results) or any(not isinstance(e, TRANSIENT) for e in errors):
            self._answered()
        else:
            self._broker_failed("submit_many", errors[0])
        acks: list[BrokerOrder] = []
        for (spec, bar_sent_at), result in zip(chunk, results, strict=True):
            if isinstance(result, OrderRejected):
                self._on_rejected(spec, result)
                continue
            if isinstance(result, BrokerError):
                if self.circuit.open:
                    continue  # stays PENDING_SUBMIT: the poll looks it up once the broker answers
                order = self._send_to_broker(spec, bar_sent_at, looked_up=False)
            else:
                order = self._accepted(spec, result, sent_at, acked_at, bar_sent_at)
            if order is not None:
                acks.append(order)
        return acks

    def on_replace(self, message: ReplaceOrder, sender: ActorAddress) -> None:
        """A strategy's replace, checked by risk: write-ahead journaled, then the broker (orders/amend.py)."""
        why_not = self._why_not() or ("" if amend.owned_by(message.strategy, message.client_order_id)
                                      else f"not an order of strategy {message.strategy!r}")
        if why_not:
            self.event("replace_refused", level="warning", client_order_id=message.client_order_id, reason=why_not)
            return
        amend.replace(self, message.client_order_id, message.qty, message.limit_price, message.stop_price,
                      message.reason)
        self.tell_peer("risk", self._open_orders())
        self.hurry("poll")

    def on_cancel_order(self, message: CancelOrder, sender: ActorAddress) -> None:
        """A strategy's cancel of one of its orders (a cancel goes out even while halted)."""
        if not amend.owned_by(message.strategy, message.client_order_id) or self.store_fault or not self.reconciled:
            self.event("cancel_refused", level="warning", client_order_id=message.client_order_id,
                       reason="reconciling" if not self.reconciled else "store fault" if self.store_fault
                       else f"not an order of strategy {message.strategy!r}")
            return
        amend.cancel(self, message.client_order_id, message.reason)
        self.hurry("poll")

    def on_submit_backlog(self, message: SubmitBacklog, sender: ActorAddress) -> None:
        self._enqueue(message.requests, message.bar_sent_at)  # () from this OMS: only a wake-up
        self._submit_some()

    def _journal_pending(self, requests: tuple[OrderSpec, ...], signal_at: float = 0.0) -> list[OrderSpec]:
        """Step 3: durable PENDING_SUBMIT rows, one transaction per batch; duplicates dropped."""
        fresh, duplicates = self.journal.insert_pending(requests, signal_at)
        if duplicates and is_lockstep(self.run.clock):  # a tick run again after a crash (sim/lockstep.py)
            revived = self.journal.revive_never_submitted(duplicates)
            fresh += [r for r in requests if r.client_order_id in revived]
            duplicates = [cid for cid in duplicates if cid not in revived]
        for cid in duplicates:
            self.event("duplicate_intent", level="warning", client_order_id=cid)
        return fresh

    def _submit(self, request: OrderSpec, bar_sent_at: float = 0.0) -> BrokerOrder | None:
        self.still_alive()  # a burst of thousands takes seconds: busy, not hung
        return self._send_to_broker(request, bar_sent_at, looked_up=True)  # a fresh id: the broker cannot have it

    def _send_to_broker(self, spec: OrderSpec, bar_sent_at: float = 0.0,
                        looked_up: bool = False) -> BrokerOrder | None:
        """Submit with retries; ``looked_up``: we know the broker does not have this id yet.

        Returns the broker's acknowledgement for the caller to journal (``apply_orders``: one
        commit for a whole chunk), or None when rejected or the outcome is unknown. Until it is
        journaled the row stays PENDING_SUBMIT, which is safe: a crash in between is the
        ``oms.after_submit`` case, settled by looking the id up at the broker."""
        cid = spec.client_order_id
        sent_at = time.time()
        try:
            order = submit_with_retries(self.call, spec, looked_up, give_up=lambda: self.circuit.open)
        except OrderRejected as exc:
            self._on_rejected(spec, exc)
            return None
        except BrokerError as exc:
            self.event("submit_uncertain", level="warning", client_order_id=cid, error=repr(exc))
            return None  # still PENDING_SUBMIT: the poll looks it up and retries it later
        return self._accepted(spec, order, sent_at, time.time(), bar_sent_at)

    def _on_rejected(self, spec: OrderSpec, exc: OrderRejected) -> None:
        """A rejection is final: the row ends REJECTED, a HIGH alert, and the breaker counts it."""
        self.mark(spec.client_order_id, OrderStatus.REJECTED, reason=str(exc))
        self.alert(f"rejected:{spec.symbol}", Severity.HIGH, f"order rejected: {spec.symbol}",
                   f"{spec.client_order_id}: {exc}")
        self._rejected(str(exc))

    def _accepted(self, spec: OrderSpec, order: BrokerOrder, sent_at: float, acked_at: float,
                  bar_sent_at: float) -> BrokerOrder:
        """The broker took it: its one log line (PENDING_SUBMIT -> its status), for the caller to journal."""
        self.submit_times[spec.client_order_id] = (sent_at, acked_at)  # journaled with the ack (execution report)
        crash_point("oms.after_submit")
        self.circuit.rejections = 0
        if self.circuit.kind == "rejecting":
            self._close_circuit()
        latency_ms = (time.time() - bar_sent_at) * 1000 if bar_sent_at else None
        self.event("order_submitted", client_order_id=spec.client_order_id, broker_order_id=order.broker_order_id,
                   symbol=spec.symbol, side=spec.side.value, qty=spec.qty, status=order.status.value,
                   bar_to_ack_ms=latency_ms)
        return order

    def find(self, cid: str) -> BrokerOrder | None:
        """The broker's order for ``cid``; None only when the broker says it has none.
        Raises BrokerError when the broker could not be asked."""
        return self.call("get_by_client_id", cid)

    # --- broker calls and the circuit -------------------------------------------------------

    def _idle(self) -> bool:
        """Nothing can change at the broker: market closed and nothing of ours working. Then the
        poll runs only every IDLE_POLL_S (idle cost), still often enough to notice anything."""
        if self.circuit.open or not self.reconciled or market_hours.is_open(self.run.clock.now()):
            return False
        return not self.journal.has_open()

    def call(self, op: str, *args: Any) -> Any:
        self.broker_calls += 1
        try:
            result = getattr(self.broker, op)(*args)
        except TRANSIENT as exc:
            self._broker_failed(op, exc)
            raise
        self._answered()
        return result

    def _answered(self) -> None:
        """The broker answered: the failure count restarts, an unreachable circuit closes."""
        self.circuit.failures = 0
        if self.circuit.kind == "unreachable":
            self._close_circuit()

    def _broker_failed(self, op: str, exc: Exception) -> None:
        opens = self.circuit.failed(self.run.settings.oms.circuit_failures)
        self.event("broker_call_failed", level="warning", op=op, error=repr(exc),
                   consecutive=self.circuit.failures)
        if opens:
            self._open_circuit("unreachable", f"{self.circuit.failures} broker calls failed in a row: {exc}")

    def _rejected(self, reason: str) -> None:
        if self.circuit.rejected(self.run.settings.oms.circuit_failures):
            self._open_circuit("rejecting", f"{self.circuit.rejections} orders rejected in a row: {reason}")

    def _open_circuit(self, kind: str, reason: str) -> None:
        self.circuit.trip(kind, reason, time.monotonic(), self.run.settings.oms.circuit_cooldown_s)
        self.event("circuit_open", level="error", kind=kind, reason=reason)
        self.tell_peer("risk", BrokerHealth(ok=False, reason=reason))
        self.alert("broker:circuit", Severity.CRITICAL, "broker unavailable: orders stopped",
                   f"{reason}; risk denies every order until the broker answers again")

    def _close_circuit(self) -> None:
        kind, down_s = self.circuit.reset(self.run.settings.oms.circuit_failures, time.monotonic())
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
        if self.backlog and not self.circuit.open and time.monotonic() - self.last_poll < BURST_POLL_EVERY_S:
            # A burst goes out first: each poll between its chunks delayed the rest of it by a
            # fills' round; the fills wait at most BURST_POLL_EVERY_S (plus a chunk) instead.
            return
        self.last_poll = time.monotonic()
        if self.circuit.open:
            now = time.monotonic()
            if self.circuit.cooled_down(now):
                self._close_circuit()
            elif now - self.circuit.last_probe < PROBE_EVERY_S:
                return
            self.circuit.last_probe = now
        try:
            changed, _ = self.drain_updates()
        except BrokerError as exc:
            self.event("poll_failed", level="warning", error=repr(exc))
            return
        if changed:
            self.tell_peer("risk", self._open_orders())
        if not self.reconciled or self.stopping or self.store_fault:
            return
        if not self.circuit.open:
            self._retry_pending()
            self._settle_replaces()
            self._sweep_stale()
        if time.monotonic() - self.last_snapshot > SNAPSHOT_EVERY_S:
            self._send_snapshot()

    def drain_updates(self) -> tuple[bool, int]:
        """Apply what changed at the broker since the cursor: fills first, then order states.
        Returns (anything changed, number of fills the broker reported, ours or not)."""
        updates = self.call("poll", self.cursor)
        if updates.fills:
            crash_point("oms.after_fill_received")
        with self.journal.transaction():  # one commit for the whole poll: fills and states together
            new_fills = self.record_fills(updates.fills, notify=False)
            changed = bool(new_fills)
            changed |= self.apply_orders(updates.orders)
        self._notify_fills(new_fills)  # after the commit: the portfolio reads the journal
        self.cursor = updates.cursor  # only now: a crash or store fault above re-reads them
        return changed, len(updates.fills)

    def _retry_pending(self) -> None:
        if self.stopping or self.trading_state is TradingState.HALTED:
            return  # nothing new goes out; reconciliation settles what is left
        if self.backlog:
            return  # its rows are PENDING_SUBMIT and on their way; the others wait for the next poll
        cutoff = store.iso(datetime.now(UTC) - timedelta(seconds=PENDING_RETRY_AFTER_S))
        rows = self.journal.pending_since(cutoff, SUBMIT_CHUNK)  # (nothing is queued: the backlog is empty)
        for row in rows:
            if self.circuit.open:
                return
            try:
                order = self.find(row["client_order_id"])
            except BrokerError as exc:
                self.event("lookup_failed", level="warning", client_order_id=row["client_order_id"],
                           error=repr(exc))
                continue  # unknown: never resubmit on a failed lookup
            if order is None:
                order = self._send_to_broker(spec_from_row(row), looked_up=True)
            if order is not None:
                self.apply_order(order)

    def _settle_replaces(self) -> None:
        """A replace whose outcome was unknown is settled from the broker once it is a moment old."""
        cutoff = store.iso(datetime.now(UTC) - timedelta(seconds=PENDING_RETRY_AFTER_S))
        try:
            amend.settle_pending(self, older_than=cutoff)
        except BrokerError as exc:
            self.event("replace_settle_failed", level="warning", error=repr(exc))

    def _sweep_stale(self) -> None:
        """Open orders older than ``stale_order_age_s`` (broker time) are cancelled while running
        too, not only at reconciliation."""
        max_age = self.run.settings.oms.stale_order_age_s
        if max_age <= 0:
            return
        cutoff = store.iso(self.run.clock.now() - timedelta(seconds=max_age))
        rows = self.journal.working_submitted_before(cutoff)
        for row in rows:
            self.event("stale_order", client_order_id=row["client_order_id"], max_age_s=max_age)
            self.cancel(row["broker_order_id"])

    def apply_order(self, order: BrokerOrder) -> bool:
        """Move the journal row to the broker's state; True when something changed."""
        return self.apply_orders([order])

    def apply_orders(self, orders: list[BrokerOrder] | tuple[BrokerOrder, ...]) -> bool:
        """Move the journal rows to the broker's states, in one transaction (a chunk's acks: one
        fsync, not one each); True when something changed."""
        times = [self.submit_times.pop(o.client_order_id, None) for o in orders]  # a submit's reply: its times
        olds = self.journal.apply_many([(order, None if t is None else (*t, self.broker.name))
                                        for order, t in zip(orders, times, strict=True)])
        for order, t, old in zip(orders, times, olds, strict=True):
            if old is not None and order.status != old and t is None:  # a submit's reply has its line already
                self.event("order_status", client_order_id=order.client_order_id, symbol=order.symbol,
                           old=old.value, new=order.status.value, filled_qty=order.filled_qty)
        return any(old is not None for old in olds)

    def record_fills(self, fills: tuple[Fill, ...] | list[Fill], notify: bool = True) -> list[Fill]:
        """Each fill once; the new ones go to the portfolio and risk (``notify``: now, else the
        caller does it once its enclosing transaction has committed)."""
        new = self.journal.record_fills(fills)
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
            report = reconciliation.reconcile(self, reason, self.run.settings.oms)
        except BrokerError as exc:
            self.event("reconcile_failed", level="error", reason=reason, error=repr(exc))
            self.alert("reconcile:failed", Severity.HIGH, "reconciliation could not reach the broker",
                       f"{reason}: {exc}; retrying; no order goes out until it succeeds")
            self.reconcile_reason = reason
            self.after(RECONCILE_RETRY_S, "reconcile")
            return None
        for key, severity, title, body in reconciliation.report_alerts(report):
            self.alert(key, severity, title, body)
        self.last_report = report
        self.reconciled = True
        self.event("reconciled", **{k: v for k, v in report.items() if k not in ("started_at", "lines")})
        self._send_snapshot(authoritative=True)
        self.tell_peer("risk", self._open_orders())
        if not self.circuit.open:
            self.tell_peer("risk", BrokerHealth(ok=True))
        self.tell_peer("risk", ReconcileCompleted(report))
        return report

    # --- cancels ----------------------------------------------------------------------------

    def on_cancel_all(self, message: CancelAll, sender: ActorAddress) -> None:
        count = self.cancel_everything(reason=message.reason)
        self.send(sender, CancelAllCompleted(message.command_id, count))

    def on_flatten(self, message: Flatten, sender: ActorAddress) -> None:
        """Operator's flatten: cancel everything, then close each broker position at market.
        The closing orders are journaled like any other (write-ahead), but bypass risk: they are
        the operator's, and they only reduce."""
        count = self.cancel_everything(reason="flatten")
        requests = []
        try:
            positions = self.call("positions")
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
        self.apply_orders([o for o in map(self._submit, fresh) if o is not None])
        self.tell_peer("risk", self._open_orders())
        self.send(sender, FlattenCompleted(message.command_id, count, tuple(r.client_order_id for r in requests)))

    def cancel_everything(self, reason: str) -> int:
        """The kill switch: one request cancels every open order at the broker (ours and any it has
        that we do not know), so a halt costs one round trip whatever the size of the book."""
        try:
            count = int(self.call("cancel_all"))
        except BrokerError as exc:
            # Unknown outcome or broker down: fall back to one cancel per journaled order.
            self.event("cancel_all_failed", level="warning", error=repr(exc))
            return self.cancel_open(lambda row: True, reason=reason)
        crash_point("oms.mid_cancel_all")  # the broker has cancelled; the journal does not know yet
        self.event("cancel_all", reason=reason, count=count)
        return count

    def cancel_open(self, which: Callable[[dict[str, Any]], bool], reason: str) -> int:
        rows = [r for r in self.journal.working() if which(r)]
        for row in rows:
            self.still_alive()
            self.cancel(row["broker_order_id"])
            crash_point("oms.mid_cancel_all")
        if rows:
            self.event("cancel_open", reason=reason, count=len(rows))
        return len(rows)

    def cancel(self, broker_order_id: str) -> None:
        try:
            self.call("cancel", broker_order_id)
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
                self.drain_updates()  # journal the cancels before we go
            except (BrokerError, sqlite3.Error) as exc:
                self.event("stop_poll_failed", level="warning", error=repr(exc))
        self.broker.close()

    # --- helpers ----------------------------------------------------------------------------

    def mark(self, cid: str, status: OrderStatus, reason: str) -> None:
        self.journal.mark(cid, status, reason)
        self.event("order_status", client_order_id=cid, new=status.value, reason=reason)

    def _open_orders(self) -> OpenOrders:
        by_symbol, pending = self.journal.open_by_symbol()
        # Several strategies: each one's own working orders (risk passes each strategy its share).
        mine = self.journal.pending_by_strategy() if self.run.settings.strategies else {}
        return OpenOrders(by_symbol=by_symbol, pending_qty=pending, pending_by_strategy=mine)

    def _send_snapshot(self, authoritative: bool = False) -> None:
        """Broker positions and cash to the portfolio. An authoritative one (the portfolio adopts
        it) is read between two polls that saw no new fill, so it matches the fills the portfolio
        has been or is about to be sent -- no fill counted twice, none missed."""
        try:
            for _ in range(reconciliation.POSITION_SETTLE_ROUNDS if authoritative else 1):
                if authoritative:
                    self.drain_updates()
                positions = {p.symbol: p.qty for p in self.call("positions")}
                account = self.call("account")
                if not authoritative or self.drain_updates()[1] == 0:
                    break
        except BrokerError as exc:
            self.event("snapshot_failed", level="warning", error=repr(exc))
            return
        self.last_snapshot = time.monotonic()
        self.tell_peer("portfolio", BrokerSnapshot(positions=positions, cash=account.cash,
                                                   equity=account.equity, ts=self.run.clock.now(),
                                                   authoritative=authoritative))

    def now(self) -> datetime:
        """Broker time: the run's clock (for reconciliation's stale age)."""
        return self.run.clock.now()

    # --- lock-step replay (sim/lockstep.py) --------------------------------------------------

    def on_step(self, step: Step) -> dict[str, Any] | None:
        """Lock-step: a burst still going out in SubmitBacklog messages goes first (the token
        follows it to ourselves); ``poll`` drains the broker now (this bar's open filled the
        orders of the previous one), and risk hears what is still working before the bar."""
        if self.queued:
            self.send(self.myAddress, step)
            return None
        if step.poll and self.reconciled and not self.store_fault:
            try:
                self.drain_updates()
            except BrokerError as exc:
                self.event("poll_failed", level="warning", error=repr(exc))
            self.tell_peer("risk", self._open_orders())
        return {"open_orders": self.journal.has_open()}

    def step_ready(self) -> bool:
        return self.reconciled and not self.circuit.open and not self.store_fault

    def pong_info(self) -> dict[str, Any]:
        return {"reconciled": self.reconciled, "circuit": self.circuit.kind or "closed",
                "store_fault": self.store_fault}

