"""The domain: the types every layer shares, from the actors down to the brokers and the sim.

Nothing here imports any other part of steadyhand, so brokers, the sim, risk, strategies and
alerts use these without depending on the actors' protocol (``actors/messages.py``, which
imports them from here and carries them in its messages).

Times are timezone-aware UTC ``datetime``s; money that is summed is ``Decimal``. Market data
(``Bar``) carries floats, because it is fed straight into numpy and pandas.

The XNYS session calendar is ``steadyhand.domain.market_hours``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(enum.StrEnum):
    DAY = "day"
    GTC = "gtc"


class OrderStatus(enum.StrEnum):
    """The journal's order state machine (DESIGN §5).

    PENDING_SUBMIT is written before the broker sees the order; NEVER_SUBMITTED is what
    reconciliation concludes when a pending order is unknown to the broker.
    """

    PENDING_SUBMIT = "pending_submit"
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    NEVER_SUBMITTED = "never_submitted"
    REPLACED = "replaced"  # replaced by a new order (Alpaca's shape, the sim's): see ``BrokerOrder.replaced_by``

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


TERMINAL_STATUSES = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REJECTED,
        OrderStatus.NEVER_SUBMITTED,
        OrderStatus.REPLACED,
    }
)


class TradingState(enum.StrEnum):
    ACTIVE = "active"  # everything risk allows
    REDUCING = "reducing"  # only orders that shrink a position
    HALTED = "halted"  # nothing


class Severity(enum.IntEnum):
    INFO = 10
    WARNING = 20
    HIGH = 30
    CRITICAL = 40


# ---------------------------------------------------------------------------------------------
# Market data and intents
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed bar; ``ts`` is the bar's start (UTC)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int


@dataclass(frozen=True, slots=True)
class Signal:
    """A strategy's intent. ``intent_id`` becomes the client order id (DESIGN §5 step 1)."""

    intent_id: str
    strategy: str
    symbol: str
    side: Side
    qty: int
    bar_ts: datetime
    ref_price: float
    reason: str = ""
    # The order the strategy asks for (issue 13); the default is a market order for the day.
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce = TimeInForce.DAY


@dataclass(frozen=True, slots=True)
class Alert:
    """``key`` identifies the condition, for cooldown/dedup (e.g. "restart:feed")."""

    key: str
    severity: Severity
    title: str
    body: str = ""
    source: str = ""
    ts: datetime = field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------
# Orders, fills, positions: what the OMS journals and what every broker speaks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """One order: what risk approves, the OMS journals, and the broker is asked to do.

    ``client_order_id`` is the idempotency key. ``ref_price`` (the price the strategy saw) and
    ``bar_ts`` (the bar that prompted it) are where the order came from: risk values a market order
    with ``ref_price`` and the journal keeps ``bar_ts``; brokers ignore both.
    """

    client_order_id: str
    symbol: str
    side: Side
    qty: int
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    ref_price: float = 0.0
    bar_ts: datetime | None = None


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
    replaces: str = ""  # the broker order id this order replaced ("" when none)
    replaced_by: str = ""  # the broker order id that replaced this one (status REPLACED)
    # The top of book the broker saw when it accepted the order: only on a submit's reply, and only
    # from brokers that know it at no extra cost (the sim); None otherwise (issue 15 §2). Not part of
    # the order's identity: a lookup of the same order compares equal to the submit's reply.
    quote: TopOfBook | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """Bid and ask of one symbol at ``ts`` (the broker's clock), and who said so (``source``)."""

    symbol: str
    ts: datetime
    bid: float
    ask: float
    source: str = ""

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution, recorded once: ``fill_id`` is unique at the broker and the journal's key."""

    fill_id: str
    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: int
    price: Decimal
    ts: datetime


@dataclass(frozen=True, slots=True)
class Position:
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
