"""The OMS's logic without actors: the journal's state machine, the circuit breaker, report alerts."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus, OrderType, Severity, Side, TimeInForce
from steadyhand.orders.circuit import Circuit
from steadyhand.orders.journal import OrderJournal, advances, is_store_fault, journal_positions
from steadyhand.orders.reconcile import report_alerts
from steadyhand.state import store

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def _journal(tmp_path: Path) -> OrderJournal:
    return OrderJournal(store.open_store(tmp_path))


def _ack(cid: str, status: OrderStatus, filled: int = 0) -> BrokerOrder:
    return BrokerOrder(broker_order_id=f"b-{cid}", client_order_id=cid, symbol="AAPL", side=Side.BUY, qty=10,
                       type=OrderType.MARKET, time_in_force=TimeInForce.DAY, limit_price=None, stop_price=None,
                       status=status, filled_qty=filled, avg_fill_price=None, submitted_at=T0, updated_at=T0)


def test_a_status_only_moves_forward() -> None:
    assert advances(OrderStatus.PENDING_SUBMIT, OrderStatus.SUBMITTED)
    assert advances(OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED)
    assert advances(OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED)
    assert not advances(OrderStatus.PARTIALLY_FILLED, OrderStatus.SUBMITTED)
    assert not advances(OrderStatus.FILLED, OrderStatus.CANCELED)


def test_journal_drops_duplicate_intents_and_ignores_late_updates(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    spec = OrderSpec("c1", "AAPL", Side.BUY, 10, ref_price=100.0, bar_ts=T0)
    assert journal.insert_pending((spec,)) == ([spec], [])
    assert journal.insert_pending((spec,)) == ([], ["c1"])
    assert journal.open_by_symbol() == ({"AAPL": 1}, {"AAPL": 10})
    assert journal.apply(_ack("c1", OrderStatus.PARTIALLY_FILLED, 4)) is OrderStatus.PENDING_SUBMIT
    assert journal.apply(_ack("c1", OrderStatus.SUBMITTED)) is None  # older news: not applied
    assert journal.apply(_ack("nope", OrderStatus.SUBMITTED)) is None  # not ours
    row = journal.row("c1")
    assert row is not None and (row["status"], row["filled_qty"]) == ("partially_filled", 4)


def test_each_fill_is_journaled_once_and_counts_in_positions(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.insert_pending((OrderSpec("c1", "AAPL", Side.BUY, 10),))
    fill = Fill("f1", "c1", "b-c1", "AAPL", Side.BUY, 4, Decimal("100.01"), T0)
    stranger = Fill("f2", "other", "b-other", "AAPL", Side.BUY, 5, Decimal("100.01"), T0)
    assert journal.record_fills([fill, stranger]) == [fill]
    assert journal.record_fills([fill]) == []
    assert journal_positions(journal.db) == {"AAPL": 4}


def test_circuit_opens_after_the_threshold_and_closes_half_open_after_rejections() -> None:
    circuit = Circuit()
    assert not circuit.failed(3) and not circuit.failed(3)
    assert circuit.failed(3)
    circuit.trip("unreachable", "down", now=10.0, cooldown_s=5.0)
    assert circuit.open and not circuit.failed(3)  # already open: nothing more to open
    assert circuit.reset(3, now=12.5) == ("unreachable", 2.5)
    assert not circuit.open and circuit.failures == 0 and circuit.rejections == 0
    circuit.trip("rejecting", "rejects", now=20.0, cooldown_s=5.0)
    assert not circuit.cooled_down(24.9) and circuit.cooled_down(25.0)
    circuit.reset(3, now=25.0)
    assert circuit.rejected(3)  # half-open: one more rejection re-opens it


def test_store_faults_are_told_from_bugs() -> None:
    assert is_store_fault(sqlite3.OperationalError("database is locked"))
    assert not is_store_fault(sqlite3.OperationalError("no such column: x"))


def test_report_alerts_follow_what_the_reconciliation_found() -> None:
    empty = {"lines": [], "unknown_orders": [], "position_differences": {}, "lost_at_broker": [],
             "stale_canceled": [], "never_submitted": [], "caught_up": [], "fills_recovered": 0}
    assert report_alerts(empty) == []
    found = {**empty, "unknown_orders": [{"client_order_id": "x"}], "fills_recovered": 2}
    assert [(key, severity) for key, severity, _, _ in report_alerts(found)] == [
        ("reconcile:unknown_orders", Severity.CRITICAL), ("reconcile:caught_up", Severity.INFO)]
