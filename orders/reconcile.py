"""Reconciliation (DESIGN §6): on every OMS start, bring the journal in line with the broker.

First every replace a crash left pending is settled (``orders/amend.py``). Then for each open
journal row: the broker's order (one ``open_orders`` request, a lookup each only for orders that
ended or never arrived), its missed fills, its new status; a PENDING_SUBMIT the broker
never saw becomes NEVER_SUBMITTED, a working order it lost is CANCELED. Then orders open at the
broker that the journal does not know (the ``unknown_order_policy``), stale orders, and positions:
the broker wins, and the difference is journaled with the report (verify reads it back).

The OMS actor is the :class:`ReconcileHost`: it makes the broker calls (counting them, feeding the
circuit breaker), journals and passes on fills and order states, and cancels.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from steadyhand.config import OmsSettings
from steadyhand.domain import BrokerOrder, Fill, OrderStatus, Severity
from steadyhand.orders import amend
from steadyhand.orders.journal import OrderJournal
from steadyhand.runtime.crashpoints import crash_point
from steadyhand.state import store

POSITION_SETTLE_ROUNDS = 5  # positions are read between two polls that saw no new fill


class ReconcileHost(Protocol):
    """What reconciliation needs from the OMS."""

    journal: OrderJournal
    cursor: str | None
    broker_calls: int

    def now(self) -> datetime: ...  # broker time (the run's clock)
    def call(self, op: str, *args: Any) -> Any: ...
    def find(self, cid: str) -> BrokerOrder | None: ...
    def mark(self, cid: str, status: OrderStatus, reason: str) -> None: ...
    def record_fills(self, fills: tuple[Fill, ...] | list[Fill]) -> list[Fill]: ...
    def apply_order(self, order: BrokerOrder) -> bool: ...
    def cancel(self, broker_order_id: str) -> None: ...
    def drain_updates(self) -> tuple[bool, int]: ...
    def still_alive(self) -> None: ...
    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None: ...


def reconcile(host: ReconcileHost, reason: str, oms: OmsSettings) -> dict[str, Any]:
    """Bring the journal in line with the broker (DESIGN §6) and journal the report; raises
    BrokerError when the broker cannot be asked (the OMS retries)."""
    started = store.now_iso()
    report: dict[str, Any] = {
        "reason": reason, "started_at": started, "orders_checked": 0, "caught_up": [],
        "never_submitted": [], "lost_at_broker": [], "fills_recovered": 0, "unknown_orders": [],
        "stale_canceled": [], "position_differences": {}, "lines": [],
    }
    lines: list[str] = report["lines"]
    calls_before = host.broker_calls
    # Take the update cursor first: anything that changes while we look is polled again later.
    host.cursor = host.call("poll", None).cursor
    # Replaces a crash left pending first: each ends applied (the row's new terms, or the broker's
    # new order journaled as ours) or not, so the rows below and the unknown-order check see it.
    report["replaces_settled"] = amend.settle_pending(host)
    for cid, outcome in report["replaces_settled"].items():
        lines.append(f"{cid}: pending replace -> {outcome}")
    # One request for what the broker still has open; a lookup each only for the rest (ended
    # while we were down, or never got there): 1 + k requests instead of 2 per order, which
    # matters at a broker's rate limit (Alpaca: 200 a minute).
    open_at_broker = host.call("open_orders")
    by_cid = {o.client_order_id: o for o in open_at_broker}
    open_rows = host.journal.open_with_fill_qty()  # with the qty their journaled fills add up to
    for row in open_rows:
        host.still_alive()
        report["orders_checked"] += 1
        cid = row["client_order_id"]
        order = by_cid.get(cid) or host.find(cid)
        if order is None:
            if row["status"] == OrderStatus.PENDING_SUBMIT.value:
                host.mark(cid, OrderStatus.NEVER_SUBMITTED, reason="not at the broker after restart")
                report["never_submitted"].append(cid)
                lines.append(f"{cid}: pending_submit -> never_submitted (never reached the broker)")
            else:
                host.mark(cid, OrderStatus.CANCELED, reason="unknown at the broker")
                report["lost_at_broker"].append(cid)
                lines.append(f"{cid}: {row['status']} -> canceled (the broker does not know it)")
            crash_point("oms.mid_reconcile")
            continue
        # Fills first, then the status: a crash in between leaves the order open for next time.
        # Asked for only when the broker has filled more than the journal holds fills for.
        recovered = 0
        if order.filled_qty > row["journaled_fill_qty"]:
            recovered = len(host.record_fills(host.call("fills_for", order.broker_order_id)))
        report["fills_recovered"] += recovered
        if host.apply_order(order):
            report["caught_up"].append({"client_order_id": cid, "status": order.status.value})
            lines.append(f"{cid}: {row['status']} -> {order.status.value} "
                         f"(filled {order.filled_qty}/{order.qty}, {recovered} fill(s) recovered)")
        crash_point("oms.mid_reconcile")
    report["fills_recovered"] += _recover_missing_fills(host, lines)
    _reconcile_unknown(host, report, oms.unknown_order_policy, open_at_broker)
    _cancel_stale(host, report, oms.stale_order_age_s, open_at_broker)
    report["position_differences"] = _position_differences(host)
    for symbol, diff in sorted(report["position_differences"].items()):
        lines.append(f"position {symbol}: journal {diff['local']}, broker {diff['broker']} "
                     f"-> adopted the broker's")
    report["broker_calls"] = host.broker_calls - calls_before
    report["finished_at"] = store.now_iso()
    host.journal.record_reconciliation(started, reason, report)
    return report


def _recover_missing_fills(host: ReconcileHost, lines: list[str]) -> int:
    """Safety net: a terminal order whose journaled fills add up to less than its filled qty."""
    rows = host.journal.short_of_fills()
    recovered = 0
    for row in rows:
        got = len(host.record_fills(host.call("fills_for", row["broker_order_id"])))
        recovered += got
        if got:
            lines.append(f"{row['client_order_id']}: {got} missing fill(s) recovered")
    return recovered


def _reconcile_unknown(host: ReconcileHost, report: dict[str, Any], policy: str,
                       open_at_broker: list[BrokerOrder]) -> None:
    for order in open_at_broker:
        if host.journal.row(order.client_order_id) is not None:
            continue
        entry = {"client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id,
                 "symbol": order.symbol, "action": policy}
        if policy == "cancel":
            host.cancel(order.broker_order_id)
            action = "canceled at the broker"
        elif policy == "adopt":
            _adopt(host, order)
            action = "adopted into the journal"
        else:
            action = "left working (alert only)"
        report["unknown_orders"].append(entry)
        report["lines"].append(f"{order.client_order_id}: open at the broker, unknown to the journal "
                               f"-> {action}")


def _adopt(host: ReconcileHost, order: BrokerOrder) -> None:
    host.journal.adopt(order)
    host.record_fills(host.call("fills_for", order.broker_order_id))  # ours now, fills included


def _cancel_stale(host: ReconcileHost, report: dict[str, Any], max_age_s: float,
                  open_at_broker: list[BrokerOrder]) -> None:
    if max_age_s <= 0:
        return
    cutoff = host.now() - timedelta(seconds=max_age_s)
    for order in open_at_broker:
        if order.submitted_at < cutoff and host.journal.row(order.client_order_id) is not None:
            host.cancel(order.broker_order_id)
            report["stale_canceled"].append(order.client_order_id)
            report["lines"].append(f"{order.client_order_id}: open since {order.submitted_at:%H:%M:%S}, "
                                   f"older than {max_age_s:g}s -> canceled")


def _position_differences(host: ReconcileHost) -> dict[str, dict[str, int]]:
    """Broker positions vs. the journal's (its fills plus earlier adopted differences); the
    broker wins, and the difference is journaled with the report (verify reads it back).

    Positions are read between two polls that saw no new fill, so a fill happening while we
    compare is journaled first rather than mistaken for a difference."""
    for _ in range(POSITION_SETTLE_ROUNDS):
        host.drain_updates()
        broker = {p.symbol: p.qty for p in host.call("positions")}
        if host.drain_updates()[1] == 0:
            break
    local = host.journal.positions()
    return {s: {"local": local.get(s, 0), "broker": broker.get(s, 0)}
            for s in set(local) | set(broker) if local.get(s, 0) != broker.get(s, 0)}


def report_alerts(report: dict[str, Any]) -> list[tuple[str, Severity, str, str]]:
    """The alerts a reconciliation report calls for: (key, severity, title, body) each."""
    alerts: list[tuple[str, Severity, str, str]] = []
    lines = "\n".join(report["lines"])
    if report["unknown_orders"]:
        alerts.append(("reconcile:unknown_orders", Severity.CRITICAL, "unknown orders at the broker",
                       f"{len(report['unknown_orders'])} open order(s) unknown to the journal: "
                       f"{report['unknown_orders']}\n{lines}"))
    if report["position_differences"] or report["lost_at_broker"]:
        alerts.append(("reconcile:differences", Severity.HIGH, "reconciliation found differences",
                       f"positions: {report['position_differences']}; lost: {report['lost_at_broker']}\n{lines}"))
    if report["stale_canceled"]:
        alerts.append(("reconcile:stale", Severity.WARNING, "stale orders cancelled",
                       f"{len(report['stale_canceled'])} order(s) older than the stale age cancelled\n{lines}"))
    if report["never_submitted"] or report["caught_up"] or report["fills_recovered"] or report.get("replaces_settled"):
        alerts.append(("reconcile:caught_up", Severity.INFO, "reconciliation caught up with the broker", lines))
    return alerts
