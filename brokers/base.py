"""The Broker interface the OMS talks to, and the broker's view of orders, fills and positions.

Every broker (sim, alpaca, ibkr) lives in its own file in this package and implements
:class:`Broker`. Errors are classified by what the OMS must do about them, not by where they came
from: a transient error may be retried (after looking the order up by client id), an unknown
outcome must be looked up before anything else, a rejection is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from steadyhand.actors.messages import OrderStatus, OrderType, Side, TimeInForce


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """What the OMS asks the broker to do; ``client_order_id`` is the idempotency key."""

    client_order_id: str
    symbol: str
    side: Side
    qty: int
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker knows it. ``status`` uses the journal's vocabulary:
    SUBMITTED (accepted / new / working), PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED."""

    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    filled_qty: int
    avg_fill_price: Decimal | None
    submitted_at: datetime
    updated_at: datetime
    reason: str = ""  # rejection / cancel reason when the broker gives one


@dataclass(frozen=True, slots=True)
class BrokerFill:
    fill_id: str  # unique at the broker
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    price: Decimal
    ts: datetime


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    symbol: str
    qty: int  # signed: negative is short
    avg_entry_price: Decimal


@dataclass(frozen=True, slots=True)
class Account:
    cash: Decimal
    equity: Decimal
    buying_power: Decimal


@dataclass(frozen=True, slots=True)
class MarketClock:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(frozen=True, slots=True)
class BrokerUpdates:
    """What changed since ``cursor`` (opaque to the OMS; pass it back next time)."""

    orders: tuple[BrokerOrder, ...]
    fills: tuple[BrokerFill, ...]
    cursor: str


# --- errors ----------------------------------------------------------------------------------


class BrokerError(Exception):
    """Base of everything a broker adapter raises."""


class TransientBrokerError(BrokerError):
    """Nothing happened (connection refused, 5xx before processing, 429): safe to retry."""


class UnknownOutcome(BrokerError):
    """The request may or may not have been processed (timeout): look up by client id first."""


class DuplicateClientOrderId(BrokerError):
    """The broker already has this client order id: it was accepted earlier. Never resubmit."""


class OrderRejected(BrokerError):
    """Final: the broker refused the order (insufficient buying power, bad symbol ...)."""


class OrderNotFound(BrokerError):
    """The broker knows no such order."""


class NotCancelable(BrokerError):
    """The order is already terminal at the broker."""


@runtime_checkable
class Broker(Protocol):
    """What the OMS needs from a broker. Implementations are synchronous and used by one actor."""

    name: str

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        """Place an order. Raises DuplicateClientOrderId, OrderRejected, TransientBrokerError,
        UnknownOutcome."""
        ...

    def cancel(self, broker_order_id: str) -> None:
        """Request cancellation. Raises OrderNotFound, NotCancelable, TransientBrokerError."""
        ...

    def cancel_all(self) -> int:
        """Request cancellation of every open order at once (the kill switch); how many.
        Raises TransientBrokerError, UnknownOutcome (cancels are idempotent: the poll settles it)."""
        ...

    def get_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client id, or None when the broker never saw it."""
        ...

    def fills_for(self, broker_order_id: str) -> list[BrokerFill]:
        """Every fill of one order (reconciliation catches up missed fills with it)."""
        ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def positions(self) -> list[BrokerPosition]: ...

    def account(self) -> Account: ...

    def clock(self) -> MarketClock: ...

    def poll(self, cursor: str | None) -> BrokerUpdates:
        """Order changes and new fills since ``cursor`` (None: from now on, nothing old)."""
        ...

    def close(self) -> None: ...
