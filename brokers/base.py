"""The Broker interface the OMS talks to, and the errors every broker raises.

Every broker (sim, alpaca, ibkr) implements :class:`Broker` in its own package (the sim's is
``steadyhand.sim``); orders, fills and positions are the domain's types (``steadyhand.domain``).
Errors are classified by what the OMS must do about them, not by where they came from: a
transient error may be retried (after looking the order up by client id), an unknown outcome must
be looked up before anything else, a rejection is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from steadyhand.domain import Account, BrokerOrder, Fill, MarketClock, OrderSpec, Position


@dataclass(frozen=True, slots=True)
class BrokerUpdates:
    """What changed since ``cursor`` (opaque to the OMS; pass it back next time)."""

    orders: tuple[BrokerOrder, ...]
    fills: tuple[Fill, ...]
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

    def fills_for(self, broker_order_id: str) -> list[Fill]:
        """Every fill of one order (reconciliation catches up missed fills with it)."""
        ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def positions(self) -> list[Position]: ...

    def account(self) -> Account: ...

    def clock(self) -> MarketClock: ...

    def poll(self, cursor: str | None) -> BrokerUpdates:
        """Order changes and new fills since ``cursor`` (None: from now on, nothing old)."""
        ...

    def close(self) -> None: ...
