"""ib_async objects in the Broker interface's vocabulary, both ways (no I/O here).

- An order is placed as a ``Stock(symbol, "SMART", "USD")`` with ``orderRef`` = the client order id.
- ``broker_order_id`` is the IB order id as text: the adapter never reuses one (the highest is
  persisted, see :mod:`ids`). A completed order read back carries no order id (TWS leaves it out),
  so it is found by ``orderRef`` and given the id it was placed with; one placed elsewhere gets
  ``perm:<permId>``.
- Status: IB's PendingSubmit / PreSubmitted / Submitted are SUBMITTED (PARTIALLY_FILLED once
  something filled); Filled is FILLED; Cancelled / ApiCancelled / Inactive are CANCELED unless the
  order was rejected: ib_async marks a 201 rejection ``Cancelled`` too, so ``trade.log`` (error
  201) or the completed order's ``completedStatus`` ("Rejected...") tells them apart.
- A fill's id is IB's ``execId`` (unique per execution, the same through every path: live
  ``execDetails`` and ``reqExecutions``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ib_async import Fill as IbFill
from ib_async import Order, Stock, Trade
from ib_async.util import UNSET_DOUBLE
from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus, OrderType, Position, Side, TimeInForce

ORDER_TYPES = {OrderType.MARKET: "MKT", OrderType.LIMIT: "LMT", OrderType.STOP: "STP",
               OrderType.STOP_LIMIT: "STP LMT"}
FROM_ORDER_TYPE = {v: k for k, v in ORDER_TYPES.items()}
WORKING = frozenset({"PendingSubmit", "ApiPending", "PreSubmitted", "Submitted", "PendingCancel",
                     "ValidationError"})
DONE_CANCELLED = frozenset({"Cancelled", "ApiCancelled", "Inactive"})
REJECTED_CODES = frozenset({201, 203, 10289})  # rejected; 202 is a cancel
INFO_CODES = frozenset({2104, 2106, 2107, 2108, 2119, 2158})  # farm status: information, not errors
PACING_CODES = frozenset({100, 162, 420})
CONNECTIVITY = {1100: "lost", 1101: "restored, data lost", 1102: "restored, data kept"}


def contract(symbol: str) -> Stock:
    return Stock(symbol, "SMART", "USD")


def ib_order(spec: OrderSpec, order_id: int, account: str) -> Order:
    """The ib_async Order for a spec; ``orderRef`` carries the client order id."""
    order = Order(orderId=order_id, action="BUY" if spec.side is Side.BUY else "SELL",
                  totalQuantity=spec.qty, orderType=ORDER_TYPES[spec.type], tif=spec.time_in_force.value.upper(),
                  orderRef=spec.client_order_id, account=account, transmit=True)
    if spec.limit_price is not None:
        order.lmtPrice = float(spec.limit_price)
    if spec.stop_price is not None:
        order.auxPrice = float(spec.stop_price)
    return order


def _price(value: float) -> Decimal | None:
    if value is None or value == UNSET_DOUBLE or value <= 0:
        return None
    return Decimal(str(value))


def rejection(trade: Trade, completed_status: str = "") -> str | None:
    """The rejection reason when IB rejected this order (201 in its log), else None."""
    for entry in trade.log:
        if entry.errorCode in REJECTED_CODES:
            return entry.message
    if completed_status.startswith("Rejected"):
        return completed_status
    # Any other error on an order the Gateway never acknowledged (no permId, never Submitted):
    # e.g. 200 "no security definition" - ib_async marks it Cancelled, but it never lived.
    acknowledged = trade.order.permId or trade.orderStatus.permId or any(
        e.status in ("PreSubmitted", "Submitted", "Filled") for e in trade.log)
    errors = [e for e in trade.log if e.errorCode and e.errorCode != 202]
    if errors and not acknowledged:
        return errors[-1].message
    return None


def status_of(trade: Trade, filled: int, completed_status: str = "") -> tuple[OrderStatus, str]:
    status = trade.orderStatus.status
    if status == "Filled" or (filled and filled >= trade.order.totalQuantity):
        return OrderStatus.FILLED, ""
    if status in DONE_CANCELLED:
        reason = rejection(trade, completed_status)
        return (OrderStatus.REJECTED, reason) if reason else (OrderStatus.CANCELED, completed_status)
    return (OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.SUBMITTED), ""


def filled_qty(trade: Trade) -> int:
    """What filled: the status's count, the fills seen, or (completed orders) ``filledQuantity``."""
    from_fills = sum(int(f.execution.shares) for f in trade.fills)
    completed = trade.order.filledQuantity
    completed_qty = 0 if completed is None or completed == UNSET_DOUBLE else int(completed)
    return max(int(trade.orderStatus.filled or 0), from_fills, completed_qty)


def order_from_trade(trade: Trade, broker_order_id: str, submitted_at: datetime, *,
                     completed_status: str = "", now: datetime | None = None) -> BrokerOrder:
    o = trade.order
    filled = filled_qty(trade)
    status, reason = status_of(trade, filled, completed_status)
    avg = trade.orderStatus.avgFillPrice
    if not avg and trade.fills:
        shares = sum(f.execution.shares for f in trade.fills)
        avg = sum(f.execution.shares * f.execution.price for f in trade.fills) / shares if shares else 0.0
    updated = now or (trade.log[-1].time if trade.log else submitted_at)  # now: the run's (simulated) time
    return BrokerOrder(
        broker_order_id=broker_order_id, client_order_id=o.orderRef, symbol=trade.contract.symbol,
        side=Side.BUY if o.action == "BUY" else Side.SELL, qty=int(o.totalQuantity),
        type=FROM_ORDER_TYPE.get(o.orderType, OrderType.MARKET),
        time_in_force=TimeInForce.GTC if o.tif == "GTC" else TimeInForce.DAY,
        limit_price=_price(o.lmtPrice), stop_price=_price(o.auxPrice), status=status, filled_qty=filled,
        avg_fill_price=Decimal(str(round(avg, 6))) if avg else None, submitted_at=submitted_at,
        updated_at=_aware(updated), reason=reason or "")


def fill_from_ib(fill: IbFill, broker_order_id: str) -> Fill:
    ex = fill.execution
    return Fill(fill_id=ex.execId, broker_order_id=broker_order_id, client_order_id=ex.orderRef,
                      symbol=fill.contract.symbol, side=Side.BUY if ex.side == "BOT" else Side.SELL,
                      qty=int(ex.shares), price=Decimal(str(ex.price)), ts=_aware(ex.time))


def position_from_ib(position: Any) -> Position:
    return Position(symbol=position.contract.symbol, qty=int(position.position),
                          avg_entry_price=Decimal(str(round(position.avgCost, 6))))


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
