"""Replace and cancel of one working order, for the OMS (DESIGN §5 "Replace"): write-ahead like a
submit, settled by looking at the broker whenever the outcome is not known.

1. The intent (new terms, the replacement's derived client id) is committed on the row as
   ``replace_state`` = pending before the broker hears of it (``oms.after_replace_journal``).
2. ``Broker.replace``. Its answer is journaled (``oms.after_replace`` is the crash in between):
   in place (IB) the row takes the new terms; a new order (Alpaca, the sim) becomes a row of its
   own with ``replaces``, and the old row ends REPLACED with ``replaced_by``. A refusal (it filled
   first, bad terms, no such order) or a transient error (nothing happened) settles the intent
   as refused; an unknown outcome leaves it pending.
3. A pending intent is settled by :func:`settle` -- at every reconciliation before anything else,
   and by the poll once it is a little old -- from what the broker has: the old order REPLACED and
   the replacement found by its derived id (applied, its fills journaled), or the order's terms
   equal to the intent's (applied in place), or neither (not applied). Either way the journal ends
   agreeing with the broker.

The OMS actor is the :class:`AmendHost`; these functions make the broker calls through it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Protocol

from steadyhand.brokers.base import (
    BrokerError,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    replacement_client_id,
)
from steadyhand.domain import BrokerOrder, Fill, OrderStatus
from steadyhand.orders.journal import OrderJournal, ReplaceState
from steadyhand.runtime.crashpoints import crash_point
from steadyhand.state import store


class AmendHost(Protocol):
    """What a replace or cancel needs from the OMS."""

    journal: OrderJournal

    def call(self, op: str, *args: Any) -> Any: ...
    def find(self, cid: str) -> BrokerOrder | None: ...
    def record_fills(self, fills: tuple[Fill, ...] | list[Fill]) -> list[Fill]: ...
    def apply_order(self, order: BrokerOrder) -> bool: ...
    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None: ...


def owned_by(strategy: str, cid: str) -> bool:
    """A strategy's client order ids start with its name and a dash (``sma-AAPL-...``)."""
    return bool(strategy) and cid.startswith(f"{strategy}-")


def working_row(journal: OrderJournal, cid: str) -> tuple[Any, str]:
    """(the row that works now for ``cid``, "") or (None, why it cannot be amended)."""
    row = journal.head(cid)
    if row is None:
        return None, "unknown order"
    if OrderStatus(row["status"]).is_terminal:
        return None, f"already {row['status']}"
    if not row["broker_order_id"]:
        return None, "not at the broker yet (pending submit)"
    if row["replace_state"] == ReplaceState.PENDING:
        return None, "a replace of it is already in flight"
    return row, ""


def replace(host: AmendHost, cid: str, qty: int | None, limit_price: Decimal | None,
            stop_price: Decimal | None, reason: str = "") -> str:
    """Replace the order working for ``cid``; the outcome (applied / refused: why / pending)."""
    row, why_not = working_row(host.journal, cid)
    if row is None:
        host.event("replace_refused", level="warning", client_order_id=cid, reason=why_not)
        return f"refused: {why_not}"
    cid = row["client_order_id"]
    intent = {"qty": qty, "limit_price": _text(limit_price), "stop_price": _text(stop_price),
              "new_client_order_id": replacement_client_id(cid), "broker_order_id": row["broker_order_id"],
              "reason": reason, "requested_at": store.now_iso()}
    if not host.journal.begin_replace(cid, intent):
        return "refused: a replace of it is already in flight"
    crash_point("oms.after_replace_journal")
    try:
        order = host.call("replace", row["broker_order_id"], qty, limit_price, stop_price)
    except (NotCancelable, OrderRejected, OrderNotFound, TransientBrokerError) as exc:
        # Nothing changed at the broker: the order goes on as it was (its final state by the poll).
        host.journal.settle_replace(cid, ReplaceState.REFUSED, str(exc))
        host.event("replace_refused", level="warning", client_order_id=cid, reason=str(exc),
                   error=exc.__class__.__name__)
        return f"refused: {exc}"
    except BrokerError as exc:  # unknown outcome: the poll or the next reconciliation settles it
        host.event("replace_uncertain", level="warning", client_order_id=cid, error=repr(exc))
        return "pending"
    crash_point("oms.after_replace")
    old = None
    if order.broker_order_id != row["broker_order_id"]:
        try:
            old = host.find(cid)  # the old order's final state (what it filled up to the replace)
        except BrokerError:
            old = None  # the poll brings it
    _journal_result(host, cid, row["broker_order_id"], order, old)
    host.event("order_replaced", client_order_id=cid, new_client_order_id=order.client_order_id,
               broker_order_id=order.broker_order_id, qty=order.qty, limit_price=_text(order.limit_price),
               stop_price=_text(order.stop_price), reason=reason)
    return "applied"


def _journal_result(host: AmendHost, cid: str, old_broker_id: str, order: BrokerOrder,
                    old: BrokerOrder | None) -> None:
    """Journal what the broker now works for ``cid``: the same order amended, or a new one."""
    if order.broker_order_id == old_broker_id and order.client_order_id == cid:
        with host.journal.transaction():
            host.apply_order(order)  # the new terms, whatever status it has reached
            host.journal.settle_replace(cid, ReplaceState.APPLIED, "amended in place")
        return
    host.journal.record_replacement(cid, old, order)
    if order.filled_qty:  # fills of the new order before its row existed were not ours yet
        host.record_fills(host.call("fills_for", order.broker_order_id))


def settle(host: AmendHost, row: Any) -> str:
    """Settle one pending intent from what the broker has (see the module docstring); the outcome.
    Raises BrokerError when the broker cannot be asked (it stays pending)."""
    cid = row["client_order_id"]
    intent = json.loads(row["replace_intent"] or "{}")
    current = host.find(cid)
    if current is None:
        host.journal.settle_replace(cid, ReplaceState.NOT_APPLIED, "the order is not at the broker")
        return "not_applied"
    if current.status is OrderStatus.REPLACED:
        new = host.find(intent.get("new_client_order_id", ""))
        if new is not None and new.replaces == current.broker_order_id:
            if current.filled_qty:
                host.record_fills(host.call("fills_for", current.broker_order_id))
            _journal_result(host, cid, current.broker_order_id, new, current)
            host.event("replace_settled", client_order_id=cid, outcome="applied",
                       new_client_order_id=new.client_order_id)
            return "applied"
        host.journal.settle_replace(cid, ReplaceState.NOT_APPLIED, "replaced by an order that is not ours")
        host.apply_order(current)
        return "not_applied"
    if current.broker_order_id == row["broker_order_id"] and _has_terms(current, intent):
        _journal_result(host, cid, current.broker_order_id, current, None)
        host.event("replace_settled", client_order_id=cid, outcome="applied", in_place=True)
        return "applied"
    host.journal.settle_replace(cid, ReplaceState.NOT_APPLIED, f"the broker's order is unchanged ({current.status})")
    host.apply_order(current)
    host.event("replace_settled", client_order_id=cid, outcome="not_applied")
    return "not_applied"


def settle_pending(host: AmendHost, older_than: str | None = None) -> dict[str, str]:
    """Settle every pending intent (journaled before ``older_than``, ISO text, when given)."""
    outcomes = {}
    for row in host.journal.pending_replaces():
        intent = json.loads(row["replace_intent"] or "{}")
        if older_than is not None and intent.get("requested_at", "") >= older_than:
            continue  # its reply may still be on the way in this process
        outcomes[row["client_order_id"]] = settle(host, row)
    return outcomes


def cancel(host: AmendHost, cid: str, reason: str = "") -> str:
    """Cancel the order working for ``cid`` (a cancel is idempotent: the poll brings the result)."""
    row = host.journal.head(cid)
    if row is None or OrderStatus(row["status"]).is_terminal or not row["broker_order_id"]:
        why = "unknown order" if row is None else f"already {row['status']}" if OrderStatus(
            row["status"]).is_terminal else "not at the broker yet (pending submit)"
        host.event("cancel_refused", level="warning", client_order_id=cid, reason=why)
        return f"refused: {why}"
    try:
        host.call("cancel", row["broker_order_id"])
    except (NotCancelable, OrderNotFound) as exc:
        return f"refused: {exc}"  # already terminal at the broker; the poll brings its final state
    except BrokerError as exc:
        host.event("cancel_failed", level="warning", client_order_id=row["client_order_id"], error=repr(exc))
        return f"failed: {exc}"
    host.event("order_cancel_requested", client_order_id=row["client_order_id"], reason=reason)
    return "requested"


def _has_terms(order: BrokerOrder, intent: dict[str, Any]) -> bool:
    """Whether the broker's order carries every term the intent asked for."""
    wanted = {"qty": intent.get("qty"), "limit_price": intent.get("limit_price"),
              "stop_price": intent.get("stop_price")}
    have = {"qty": order.qty, "limit_price": _text(order.limit_price), "stop_price": _text(order.stop_price)}
    for key, value in wanted.items():
        if value is None:
            continue
        if key == "qty" and value != have["qty"]:
            return False
        if key != "qty" and (have[key] is None or Decimal(have[key]) != Decimal(value)):
            return False
    return any(v is not None for v in wanted.values())


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
