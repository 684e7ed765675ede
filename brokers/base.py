"""The Broker interface the OMS talks to, and the errors every broker raises.

Every broker (sim, alpaca, ibkr) implements :class:`Broker` in its own package (the sim's is
``steadyhand.sim``); orders, fills and positions are the domain's types (``steadyhand.domain``).
Errors are classified by what the OMS must do about them, not by where they came from: a
transient error may be retried (after looking the order up by client id), an unknown outcome must
be looked up before anything else, a rejection is final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
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
    """The order is already terminal at the broker (for a replace: it filled or ended first)."""


REPLACE_SEP = "~r"  # replacement_client_id: ``sma-AAPL-...-B0`` -> ``sma-AAPL-...-B0~r1`` -> ``...~r2``


def replacement_client_id(client_order_id: str) -> str:
    """The client order id of the order that replaces ``client_order_id`` on a broker whose replace
    makes a new order (Alpaca, the sim). Derived, never random: after a crash mid-replace the OMS
    looks the replacement up by this id, and a retried replace meets its own earlier attempt as a
    duplicate id instead of placing a second order. It keeps the strategy's prefix."""
    base, sep, n = client_order_id.rpartition(REPLACE_SEP)
    if sep and n.isdigit():
        return f"{base}{REPLACE_SEP}{int(n) + 1}"
    return f"{client_order_id}{REPLACE_SEP}1"


def submit_each(broker: Broker, specs: Sequence[OrderSpec], between: Callable[[], None] | None = None,
                ) -> list[BrokerOrder | BrokerError]:
    """``Broker.submit_many`` for a broker without a batch call (Alpaca, IBKR): one ``submit``
    after another, under that broker's own rate limit; each error is that order's result."""
    results: list[BrokerOrder | BrokerError] = []
    for spec in specs:
        try:
            results.append(broker.submit(spec))
        except BrokerError as exc:
            results.append(exc)
        if between is not None:
            between()
    return results


@runtime_checkable
class Broker(Protocol):
    """What the OMS needs from a broker. Implementations are synchronous and used by one actor."""

    name: str

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        """Place an order. Raises DuplicateClientOrderId, OrderRejected, TransientBrokerError,
        UnknownOutcome."""
        ...

    def submit_many(self, specs: Sequence[OrderSpec], between: Callable[[], None] | None = None,
                    ) -> list[BrokerOrder | BrokerError]:
        """Place several orders (a tick's chunk); one result per spec, in order: the order as
        :meth:`submit` returns it, or the BrokerError :meth:`submit` would have raised for it
        (DuplicateClientOrderId, OrderRejected, TransientBrokerError, UnknownOutcome). Raises
        nothing for one order's outcome. The sim takes them in one exchange transaction (an
        UnknownOutcome then stands for the whole batch); a broker without a batch call submits
        one by one (:func:`submit_each`), calling ``between`` after each (the OMS's busy-pong)."""
        ...

    def cancel(self, broker_order_id: str) -> None:
        """Request cancellation. Raises OrderNotFound, NotCancelable, TransientBrokerError."""
        ...

    def replace(self, broker_order_id: str, qty: int | None = None, limit_price: Decimal | None = None,
                stop_price: Decimal | None = None) -> BrokerOrder:
        """Amend a working order: ``qty`` is its new total quantity (what filled included), None
        keeps a term as it is. Two shapes, both returned as the order that now works:

        - in place (IBKR: ``placeOrder`` again with the same order id): the same broker and client
          order ids, the new terms;
        - a new order (Alpaca ``PATCH /v2/orders/{id}``, the sim): a new broker order id, client
          order id :func:`replacement_client_id` of the old one, ``replaces`` = the old broker id,
          quantity what is left to trade; the old order ends REPLACED with ``replaced_by``.

        Raises OrderNotFound, NotCancelable (already terminal: it filled or ended first),
        OrderRejected (the new terms are refused; the order goes on unchanged),
        TransientBrokerError (nothing happened), UnknownOutcome (look the order up)."""
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
