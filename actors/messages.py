"""The protocol: everything steadyhand's actors can say to each other.

Every message is a small frozen dataclass, picklable (Thespian sends them over TCP between
processes). Times are timezone-aware UTC ``datetime``s; money that is summed is ``Decimal``.
The things messages carry (``Bar``, ``Signal``, ``OrderSpec``, ``Fill``, ``Alert``, the enums) are
the domain's types, defined in ``steadyhand.domain``: a message that carries one is the domain
type itself (``Alert``, ``Signal``) or a batch of them (``Bars``, ``Signals``, ``OrderRequests``,
``Fills``).

Hot-path messages are batches (``Bars``, ``Signals``, ``OrderRequests``, ``Fills``): Thespian's TCP
transport acknowledges every message, so one message per tick, never one per symbol.

Who sends what (-> receiver):

    Feed        Bars -> strategy, risk, portfolio; HistoryReply -> strategy
    Strategy    Signals, ReplaceOrder, CancelOrder -> risk; HistoryRequest -> feed
    Risk        OrderRequests, ReplaceOrder, CancelOrder -> oms; OpenOrders -> strategy (forwarded);
                RequestHalt -> supervisor
    OMS         Fills -> portfolio, risk; OpenOrders -> risk; ReconcileStarted/Completed -> risk;
                BrokerSnapshot -> portfolio
    Portfolio   PositionsSnapshot -> strategy, risk; PnlUpdate -> risk
    Heartbeat   Ping -> every actor; ActorUnresponsive -> supervisor; FeedStale/FeedFresh -> risk
    Feed        Step -> along its route and back, Rewind -> strategy (lock-step replay only, sim/lockstep.py)
    Supervisor  Configure, Wiring, TradingStateChanged -> children; replies to operator requests
    anyone      Alert -> alerter
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from steadyhand.domain import Bar, Fill, OrderSpec, Signal, TradingState, utcnow

# ---------------------------------------------------------------------------------------------
# Market data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bars:
    """Every symbol's bar for one tick. ``sent_at`` is wall time (time.time) for latency."""

    ts: datetime
    bars: tuple[Bar, ...]
    sent_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Strategy asks the feed for the last ``count`` bars per symbol (after a (re)start)."""

    count: int


@dataclass(frozen=True, slots=True)
class HistoryReply:
    bars: tuple[Bar, ...]


# ---------------------------------------------------------------------------------------------
# Order path
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signals:
    signals: tuple[Signal, ...]
    bar_ts: datetime
    bar_sent_at: float = 0.0  # Bars.sent_at, carried for end-to-end latency


@dataclass(frozen=True, slots=True)
class OrderRequests:
    requests: tuple[OrderSpec, ...]
    bar_sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """Strategy -> risk -> OMS: amend one of the strategy's working orders. ``qty`` is the new total
    (what filled included); None keeps a term. Risk checks it like a new order (size, value, price
    band); the OMS journals the intent before the broker hears of it (DESIGN §5).

    ``strategy`` is the sender's name, the prefix of its client order ids (``sma`` for
    ``sma-AAPL-...``): a strategy may amend only its own orders, so one without a name is refused.
    ``client_order_id`` may be an order's original id after a replace gave it a new one (Alpaca, the
    sim): the OMS follows the chain to the order that works now."""

    client_order_id: str
    qty: int | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    reason: str = ""
    strategy: str = ""


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Strategy -> risk -> OMS: cancel one of the strategy's working orders. Risk always lets a cancel
    through (it only reduces risk) once ``strategy`` owns the id (see :class:`ReplaceOrder`)."""

    client_order_id: str
    reason: str = ""
    strategy: str = ""


@dataclass(frozen=True, slots=True)
class CrashReport:
    """Any actor -> supervisor, just before it crashes: why, so an escalation's alert can say it."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class SubmitBacklog:
    """OMS -> itself: journaled requests still to submit (a burst is submitted in chunks so the OMS
    keeps answering its heartbeat in between)."""

    requests: tuple[OrderSpec, ...]
    bar_sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Fills:
    fills: tuple[Fill, ...]


@dataclass(frozen=True, slots=True)
class OpenOrders:
    """OMS -> risk after any change: what is working at the broker, by symbol."""

    by_symbol: dict[str, int]  # symbol -> number of open orders
    pending_qty: dict[str, int]  # symbol -> signed qty still to fill
    # strategy (client order id prefix) -> symbol -> signed qty still to fill ([[strategies]])
    pending_by_strategy: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReconcileStarted:
    reason: str


@dataclass(frozen=True, slots=True)
class ReconcileCompleted:
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BrokerSnapshot:
    """OMS -> portfolio: the broker's view, for the periodic position comparison."""

    positions: dict[str, int]
    cash: Decimal
    equity: Decimal
    ts: datetime
    authoritative: bool = False  # from a reconciliation: the portfolio adopts it (the broker wins)


@dataclass(frozen=True, slots=True)
class PositionsSnapshot:
    """Portfolio -> strategy, risk: current positions (symbol -> signed qty).

    Risk gets the net and, in ``by_strategy``, every strategy's sub-book (strategy -> symbol -> qty);
    with several strategies each strategy actor gets its own sub-book as ``positions``."""

    positions: dict[str, int]
    by_strategy: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PnlUpdate:
    """Portfolio -> risk, once per bar tick."""

    equity: Decimal
    day_pnl: Decimal
    peak_equity: Decimal
    gross_exposure: Decimal
    ts: datetime
    # [[strategies]]: each strategy's P&L since the session's first tick (its max_daily_loss).
    strategy_day_pnl: tuple[tuple[str, Decimal], ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """Lock-step replay's token (``sim/lockstep.py``): each actor on ``route`` handles it after the
    messages it got before it on the same hop, then passes it on; the last hop is the feed.

    ``poll``: the OMS drains the broker's updates first. Each hop adds its busy time since its
    last token (``busy``), whether it is ready to trade (``not_ready`` lists who is not), and the
    OMS whether any order is still open."""

    seq: int
    phase: str  # probe | fills | bars
    route: tuple[str, ...]  # the hops still to go; "name:bars": that hop takes the tick's bars
    poll: bool = False
    # The tick's good rows of the replay file (indices) and their ts: a hop told to take the bars
    # reads them from its own copy of the file, instead of a Bars message per actor (sim/lockstep.py).
    rows: tuple[int, ...] = ()
    tick_ts: datetime | None = None
    take_bars: bool = False
    busy: dict[str, float] = field(default_factory=dict)  # actor -> wall seconds in handlers
    not_ready: tuple[str, ...] = ()
    open_orders: bool = False


@dataclass(frozen=True, slots=True)
class Rewind:
    """Feed -> strategy, lock-step only: start over as just restarted (fresh state, history up to
    the tick in flight), so a tick run again after a crash yields its intents again; the OMS's
    journal drops those it already has."""


# ---------------------------------------------------------------------------------------------
# Control (supervisor <-> children)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configure:
    """First message a child gets: its name and the whole run configuration."""

    name: str
    settings: Any  # steadyhand.config.RunSettings (kept Any to avoid an import cycle)


@dataclass(frozen=True, slots=True)
class Wiring:
    """The current address of every peer; re-sent to everyone after any (re)start."""

    peers: dict[str, Any]  # name -> ActorAddress


@dataclass(frozen=True, slots=True)
class ChildReady:
    """Child -> supervisor once configured: its process id (for kill-by-pid)."""

    name: str
    pid: int


@dataclass(frozen=True, slots=True)
class TradingStateChanged:
    state: TradingState
    reason: str


@dataclass(frozen=True, slots=True)
class RequestHalt:
    """Any actor -> supervisor: stop trading now (breaker trip, store fault ...)."""

    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class FeedStale:
    last_bar_at: datetime | None
    since_s: float


@dataclass(frozen=True, slots=True)
class FeedFresh:
    last_bar_at: datetime


# ---------------------------------------------------------------------------------------------
# Heartbeat
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    name: str
    pid: int
    seq: int
    info: dict[str, Any] = field(default_factory=dict)  # e.g. feed: last_bar_at


@dataclass(frozen=True, slots=True)
class ActorUnresponsive:
    name: str
    pid: int
    silent_for_s: float


# ---------------------------------------------------------------------------------------------
# Operator requests (CLI -> supervisor) and replies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestShutdown:
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class ShutdownCompleted:
    pass


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """An operator's command (CLI -> supervisor), authenticated by an HMAC over every other field
    (see steadyhand.operator). ``command_id`` makes it idempotent: a repeat returns the first result."""

    command_id: str
    name: str  # status | pause | resume | halt | flatten | cancel-all | restart | reload | shutdown | ack
    args: dict[str, Any]
    issued_at: float  # unix time; stale commands are refused
    operator: str  # who (user@host), journaled
    signature: str = ""


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Supervisor -> risk, alerter: new settings after a validated ``reload``."""

    settings: Any  # steadyhand.config.Settings


@dataclass(frozen=True, slots=True)
class AckAlert:
    """Supervisor -> alerter: the operator acknowledged a CRITICAL alert; stop re-sending it."""

    alert_id: int
    operator: str


@dataclass(frozen=True, slots=True)
class CancelAll:
    """Supervisor -> OMS: cancel every open order now (halt, cancel-all, flatten)."""

    command_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelAllCompleted:
    command_id: str
    cancel_requests: int  # cancels sent to the broker
    sent_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Flatten:
    """Supervisor -> OMS: cancel every open order, then close every broker position at market."""

    command_id: str


@dataclass(frozen=True, slots=True)
class FlattenCompleted:
    command_id: str
    cancel_requests: int
    closing_orders: tuple[str, ...]  # client order ids of the closing orders


# ---------------------------------------------------------------------------------------------
# Test hooks (honoured only when STEADYHAND_TEST_HOOKS=1)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DebugHang:
    """Block the handler for ``seconds`` (a hung actor, for the heartbeat test)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class DebugToActor:
    """Operator client -> supervisor: forward ``message`` (a Debug* hook) to the named actor."""

    actor: str
    message: Any


@dataclass(frozen=True, slots=True)
class DebugCrash:
    """Raise inside the handler (a crashing actor, for let-it-crash tests)."""

    reason: str = "debug crash"


# ---------------------------------------------------------------------------------------------
# --- crash safety ---
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerHealth:
    """OMS -> risk: the broker circuit opened (``ok=False``: deny every order) or closed again.

    Opens after repeated transient failures (5xx, timeouts, disconnects) or repeated rejections;
    closes by itself once the broker answers (or accepts) again."""

    ok: bool
    reason: str = ""
    ts: datetime = field(default_factory=utcnow)
