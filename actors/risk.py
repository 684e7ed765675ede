"""Risk: every order request passes here; every decision is journaled with its reason.

The checks themselves are pure functions in ``steadyhand.risk.checks``; this actor keeps the
``RiskBook`` up to date from what the others tell it (bars, positions, P&L, open orders, trading
state, reconciliation, feed staleness), turns signals into order requests, and trips the daily-loss
/ drawdown breaker (HALTED through the supervisor, CRITICAL alert). It denies everything until the
OMS reports a finished reconciliation, and again whenever the OMS restarts.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from decimal import Decimal

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import (
    Bars,
    BrokerHealth,
    CancelOrder,
    FeedFresh,
    FeedStale,
    Fills,
    OpenOrders,
    OrderRequests,
    PnlUpdate,
    PositionsSnapshot,
    ReconcileCompleted,
    ReconcileStarted,
    Reconfigure,
    ReplaceOrder,
    RequestHalt,
    Signals,
    TradingStateChanged,
)
from steadyhand.actors.oms import is_store_fault
from steadyhand.domain import OrderSpec, OrderStatus, OrderType, Severity, Side, TimeInForce, market_hours
from steadyhand.orders import amend
from steadyhand.orders.journal import OrderJournal
from steadyhand.risk.checks import Decision, RiskBook, breaker_check, order_spec, signal_problem
from steadyhand.risk.strategy_limits import StrategyBooks
from steadyhand.sim.lockstep import is_lockstep
from steadyhand.state import retention, store
from steadyhand.strategies.specs import CHILD_PREFIX, SINGLE_CHILD, strategy_peers
from thespian.actors import ActorAddress


class RiskActor(SteadyActor):
    def setup(self) -> None:
        settings = self.run.settings
        self.clock = self.run.clock
        self.book = RiskBook(settings.risk, settings.whitelist)
        self.book.reconciling = True  # until the OMS says otherwise
        self.strategies = StrategyBooks.of(settings.strategies)  # [[strategies]]: each one's own limits
        self.db = store.connect(self.run.db_path, synchronous="NORMAL")
        self.session_day: str = store.get_risk_state(self.db, "session_day") or ""
        self.handlers = {
            Signals: self.on_signals,
            Bars: self.on_bars,
            PositionsSnapshot: self.on_positions,
            PnlUpdate: self.on_pnl,
            OpenOrders: self.on_open_orders,
            Fills: self.on_fills,
            ReconcileStarted: self.on_reconcile_started,
            ReconcileCompleted: self.on_reconcile_completed,
            TradingStateChanged: self.on_trading_state,
            FeedStale: self.on_feed_stale,
            FeedFresh: self.on_feed_fresh,
            Reconfigure: self.on_reconfigure,
            BrokerHealth: self.on_broker_health,
            ReplaceOrder: self.on_replace,
            CancelOrder: self.on_cancel_order,
        }
        self.broker_down = ""  # why the OMS's broker circuit is open; "" while it is closed
        self.store_fault = ""  # the decision journal refused a write: nothing is approved any more

    def on_first_wiring(self) -> None:
        days = self.run.settings.retention.risk_decisions_days
        self.start_retention({"risk_decisions": lambda now: retention.prune_risk_decisions(self.db.conn, now, days)})

    def on_reconfigure(self, message: Reconfigure, sender: ActorAddress) -> None:
        """An operator's `reload`: new limits from now on (already validated by the supervisor)."""
        self.book.limits = message.settings.risk
        self.book.whitelist = message.settings.whitelist
        self.event("limits_reloaded", **{k: v for k, v in vars(message.settings.risk).items()})

    def on_peers_changed(self, names: set[str]) -> None:
        if "oms" in names:
            self.book.reconciling = True  # a new OMS reconciles before anything goes through
            self.broker_down = ""  # and tells us afresh whether its broker answers

    # --- decisions --------------------------------------------------------------------------

    def on_signals(self, message: Signals, sender: ActorAddress) -> None:
        if not message.signals:
            return
        now_sim = self.clock.now()
        if is_lockstep(self.clock):
            # Lock-step (DESIGN "Lock-step replay"): the decision is at the bar's close, inside the
            # bar's session, and the order-rate window counts simulated seconds, as at speed 1.
            self.book.market_open = market_hours.is_open(message.bar_ts)
            now_wall = now_sim.timestamp()
        else:
            self.book.market_open = market_hours.is_open(now_sim)
            now_wall = time.time()
        decided_at = store.now_iso()  # one timestamp per batch: its decisions are made together
        clock_ts = store.iso(now_sim)  # the run clock's: what retention ages the rows by
        approved: list[OrderSpec] = []
        rows: list[DecisionRow] = []
        for signal in message.signals:
            problem = signal_problem(signal)
            request = order_spec(signal, whole=problem is None)
            decision = (Decision.deny("signal", problem) if problem else
                        self.strategies.check(request, self.book.order_price(request), self.book.last_prices)
                        or self.book.decide(request, now_wall, now_sim))
            if decision.approved and (self.broker_down or self.store_fault):
                decision = Decision.deny("broker" if self.broker_down else "store",
                                         f"broker unavailable: {self.broker_down}" if self.broker_down
                                         else f"state store fault: {self.store_fault}")
            rows.append(_decision_row(decided_at, clock_ts, request, decision))
            self.event("risk_decision", client_order_id=request.client_order_id, symbol=request.symbol,
                       side=request.side.value, qty=request.qty, approved=decision.approved,
                       check=decision.check, reason=decision.reason)
            if decision.approved:
                approved.append(request)
                self.strategies.record(request)
        try:
            # Plain SQL, one transaction: sqlite-utils' insert_all re-reads the schema on every call.
            with store.transaction(self.db):
                self.db.conn.executemany(INSERT_DECISION, rows)
        except sqlite3.OperationalError as exc:
            self._store_fault(exc)  # every decision is journaled, or none is acted on
            return
        if approved:  # only now, after the commit: the write-ahead order of section 5
            self.tell_peer("oms", OrderRequests(tuple(approved), bar_sent_at=message.bar_sent_at))

    def on_replace(self, message: ReplaceOrder, sender: ActorAddress) -> None:
        """A strategy amends one of its orders: checked like a new order on its new terms (the journal
        row, read here, says what the order is), journaled, then passed to the OMS."""
        cid = message.client_order_id
        row = OrderJournal(self.db).head(cid)  # the OMS writes the journal; risk only reads it
        if not amend.owned_by(message.strategy, cid):
            self._refuse_amend("replace", cid, f"not an order of strategy {message.strategy!r}")
            return
        if row is None or OrderStatus(row["status"]).is_terminal:
            self._refuse_amend("replace", cid, "unknown order" if row is None else f"already {row['status']}")
            return
        req = OrderSpec(client_order_id=row["client_order_id"], symbol=row["symbol"], side=Side(row["side"]),
                        qty=row["qty"] if message.qty is None else message.qty, type=OrderType(row["type"]),
                        time_in_force=TimeInForce(row["time_in_force"]),
                        limit_price=message.limit_price if message.limit_price is not None
                        else _dec(row["limit_price"]),
                        stop_price=message.stop_price if message.stop_price is not None else _dec(row["stop_price"]))
        self.book.market_open = market_hours.is_open(self.clock.now())
        decision = self.book.decide_replace(req, old_qty=row["qty"], filled=row["filled_qty"] or 0)
        if decision.approved and (self.broker_down or self.store_fault):
            decision = Decision.deny("broker" if self.broker_down else "store", "broker or state store unavailable")
        self.event("risk_decision", client_order_id=cid, symbol=req.symbol, side=req.side.value, qty=req.qty,
                   approved=decision.approved, check=decision.check, reason=decision.reason, replace=True)
        try:
            with store.transaction(self.db):
                self.db.conn.execute(INSERT_DECISION, _decision_row(store.now_iso(), store.iso(self.clock.now()),
                                                                    req, decision, "replace: "))
        except sqlite3.OperationalError as exc:
            self._store_fault(exc)
            return
        if decision.approved:
            self.tell_peer("oms", message)

    def on_cancel_order(self, message: CancelOrder, sender: ActorAddress) -> None:
        """A cancel only lowers risk: it always passes, for the strategy's own orders."""
        if not amend.owned_by(message.strategy, message.client_order_id):
            self._refuse_amend("cancel", message.client_order_id, f"not an order of strategy {message.strategy!r}")
            return
        self.tell_peer("oms", message)

    def _refuse_amend(self, what: str, cid: str, reason: str) -> None:
        self.event(f"{what}_refused", level="warning", client_order_id=cid, reason=reason)

    # --- what the book knows ----------------------------------------------------------------

    def on_bars(self, message: Bars, sender: ActorAddress) -> None:
        for bar in message.bars:
            self.book.last_prices[bar.symbol] = bar.close
            self.book.last_bar_at[bar.symbol] = bar.ts
        self._roll_session(message.ts)

    def _roll_session(self, ts: datetime) -> None:
        """Daily reset at session open: the breaker is re-armed for the new day."""
        day = ts.date().isoformat()
        if day != self.session_day:
            self.session_day = day
            self.book.breaker_tripped = ""
            store.set_risk_state(self.db, session_day=day)
            self.event("session_reset", day=day)

    def on_positions(self, message: PositionsSnapshot, sender: ActorAddress) -> None:
        self.book.positions = dict(message.positions)
        self.strategies.note_snapshot(message.by_strategy)

    def on_pnl(self, message: PnlUpdate, sender: ActorAddress) -> None:
        self.book.day_pnl = float(message.day_pnl)
        self.strategies.day_pnl = {name: float(pnl) for name, pnl in message.strategy_day_pnl}
        self.book.drawdown = float(message.peak_equity - message.equity)
        self.book.gross_exposure = float(message.gross_exposure)
        reason = breaker_check(self.book.day_pnl, self.book.drawdown, self.run.settings.risk)
        if reason and not self.book.breaker_tripped:
            self.book.breaker_tripped = reason
            self.event("breaker_tripped", level="critical", reason=reason)
            self.tell_peer("supervisor", RequestHalt(reason=reason, source="risk"))

    def on_open_orders(self, message: OpenOrders, sender: ActorAddress) -> None:
        self.book.open_orders = dict(message.by_symbol)
        self.book.pending_qty = dict(message.pending_qty)
        self.strategies.note_open_orders(message.pending_by_strategy)
        for peer in strategy_peers(self.peers):  # what still works, so a repeated target does not order twice
            self.tell_peer(peer, own_open_orders(message, peer))

    def on_fills(self, message: Fills, sender: ActorAddress) -> None:
        for fill in message.fills:  # positions move now; the portfolio snapshot confirms later
            pos = self.book.positions.get(fill.symbol, 0) + fill.side.sign * fill.qty
            self.book.positions[fill.symbol] = pos
        self.strategies.note_fills(message.fills)

    def on_broker_health(self, message: BrokerHealth, sender: ActorAddress) -> None:
        down = "" if message.ok else (message.reason or "broker unavailable")
        if down != self.broker_down:
            self.event("broker_health", level="warning" if down else "info", ok=message.ok, reason=down)
        self.broker_down = down

    def _store_fault(self, exc: sqlite3.OperationalError) -> None:
        if not is_store_fault(exc):
            raise exc
        first = not self.store_fault
        self.store_fault = self.store_fault or str(exc)
        self.event("store_fault", level="critical", error=repr(exc), first=first)
        if first:
            self.tell_peer("supervisor", RequestHalt(reason=f"state store fault: {exc}", source="risk"))
            self.alert("store:fault", Severity.CRITICAL, "steadyhand: state store fault, trading halted",
                       f"risk could not journal its decisions ({exc}); nothing is approved until restart")

    def on_reconcile_started(self, message: ReconcileStarted, sender: ActorAddress) -> None:
        self.book.reconciling = True
        self.event("reconciling", reason=message.reason)

    def on_reconcile_completed(self, message: ReconcileCompleted, sender: ActorAddress) -> None:
        self.book.reconciling = False
        self.event("reconciled")

    def on_trading_state(self, message: TradingStateChanged, sender: ActorAddress) -> None:
        self.book.trading_state = message.state

    def on_feed_stale(self, message: FeedStale, sender: ActorAddress) -> None:
        if not self.book.feed_stale:
            self.event("feed_stale", level="warning", since_s=message.since_s)
        self.book.feed_stale = True

    def on_feed_fresh(self, message: FeedFresh, sender: ActorAddress) -> None:
        if self.book.feed_stale:
            self.event("feed_fresh")
        self.book.feed_stale = False


    def step_ready(self) -> bool:
        return not (self.book.reconciling or self.broker_down or self.store_fault)


DecisionRow = tuple[str, str, str, str, str, int, int, str, str]
INSERT_DECISION = ("INSERT INTO risk_decisions (ts, clock_ts, client_order_id, symbol, side, qty, approved, reason,"
                   " rule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")  # rule: the check that decided (parity report)


def _decision_row(ts: str, clock_ts: str, request: OrderSpec, decision: Decision, prefix: str = "") -> DecisionRow:
    return (ts, clock_ts, request.client_order_id, request.symbol, request.side.value, request.qty,
            int(decision.approved), prefix + (decision.reason if not decision.approved else "ok"), decision.check)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def own_open_orders(message: OpenOrders, peer: str) -> OpenOrders:
    """What a strategy actor is told still works: everything for the one ``strategy``, only its own
    orders for ``strategy.NAME`` (so it does not count another strategy's order as its own)."""
    if peer == SINGLE_CHILD:
        return message
    return OpenOrders(by_symbol={}, pending_qty=dict(message.pending_by_strategy.get(peer[len(CHILD_PREFIX):], {})))
