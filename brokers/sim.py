"""The simulated exchange: an order book in its own SQLite file that outlives the bot.

Several processes may open the same ``exchange.db`` at once (the bot's OMS, the ``verify`` CLI, a
server), so nothing that another process could change is cached in memory: every call reads fresh,
and every state change happens inside ``BEGIN IMMEDIATE``.

Matching is lazy and deterministic. Every public call first *catches up*: it walks the market's
per-second bid/ask path from ``advanced_to`` (kept in the database) to the clock's now and applies
what would have happened meanwhile — fills at the prices the path had then, stop triggers, day
orders expiring at their session's close. So the exchange keeps working while the bot is down, and
it does not matter which process happens to do the catching up: outcomes depend only on the path
and on parameters frozen into each order at submission (latency, slippage, partial-fill odds, seed).

Money is ``Decimal`` stored as TEXT; fill prices are whole cents.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import sqlite_utils
from steadyhand import market_hours
from steadyhand.actors.messages import OrderStatus, OrderType, Side, TimeInForce
from steadyhand.brokers.base import (
    Account,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    BrokerUpdates,
    DuplicateClientOrderId,
    MarketClock,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    OrderSpec,
    TransientBrokerError,
    UnknownOutcome,
)
from steadyhand.clock import SimClock
from steadyhand.market import MarketModel, Quote, QuoteArrays, may_quote_between, quote_arrays, stable_int
from steadyhand.state.store import SchemaTooNew, connect, transaction

CENT = Decimal("0.01")
PRICE_PLACES = Decimal("0.000001")  # average entry prices keep sub-cent precision
OPEN_STATUSES = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)
_OPEN_IN = "(" + ", ".join(f"'{s}'" for s in OPEN_STATUSES) + ")"  # for "status IN ..." clauses
STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_CHUNK = timedelta(days=1)  # catch-up walks the path at most a day at a time (bounded memory)
_EPS = 1e-9  # quotes are float cents; compare against Decimal prices with a hair of slack


class NowSource(Protocol):
    """Anything with ``now()``: a :class:`SimClock`, or a manual clock in tests."""

    def now(self) -> datetime: ...


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def _m1_book(conn: sqlite3.Connection) -> None:
    for sql in (
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            broker_order_id TEXT NOT NULL UNIQUE,
            client_order_id TEXT NOT NULL UNIQUE,
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            qty INTEGER NOT NULL,
            type TEXT NOT NULL,
            time_in_force TEXT NOT NULL,
            limit_price TEXT,
            stop_price TEXT,
            status TEXT NOT NULL,
            filled_qty INTEGER NOT NULL DEFAULT 0,
            filled_notional TEXT NOT NULL DEFAULT '0',
            avg_fill_price TEXT,
            fill_count INTEGER NOT NULL DEFAULT 0,
            submitted_at TEXT NOT NULL,
            eligible_at TEXT NOT NULL,
            expires_at TEXT,
            triggered_at TEXT,
            updated_at TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            slippage_bps REAL NOT NULL,
            partial_fill_probability REAL NOT NULL,
            rng_seed INTEGER NOT NULL
        )""",
        "CREATE INDEX orders_status ON orders (status)",
        """CREATE TABLE fills (
            fill_id TEXT PRIMARY KEY,
            broker_order_id TEXT NOT NULL,
            client_order_id TEXT NOT NULL,
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            qty INTEGER NOT NULL,
            price TEXT NOT NULL,
            ts TEXT NOT NULL
        )""",
        "CREATE INDEX fills_order ON fills (broker_order_id)",
        """CREATE TABLE positions (
            symbol TEXT PRIMARY KEY,
            qty INTEGER NOT NULL,
            avg_entry_price TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        # Every order state change and fill gets the next seq; poll cursors are seqs.
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            ref TEXT NOT NULL,
            ts TEXT NOT NULL
        )""",
    ):
        conn.execute(sql)


def _m2_duplicate_submits(conn: sqlite3.Connection) -> None:
    # A real broker answers a reused client order id with an error and forgets it; we keep a note,
    # so ``steadyhand verify`` can prove that no client order id was ever submitted twice.
    conn.execute(
        "CREATE TABLE duplicate_submits (id INTEGER PRIMARY KEY, client_order_id TEXT NOT NULL, "
        "ts TEXT NOT NULL)"
    )


# Numbered migrations: append, never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "order book, fills, positions, change log", _m1_book),
    (2, "log of submissions that reused a client order id", _m2_duplicate_submits),
]


def open_exchange_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating and migrating as needed) an exchange database: WAL, busy timeout, NORMAL.

    NORMAL, not FULL: the exchange stands for a remote broker, not for our journal. In WAL mode a
    NORMAL commit survives any process crash (every kill drill); only a power loss can roll back
    its last commits, and that looks to the bot like a broker that lost orders, which
    reconciliation already handles (journaled but unknown at the broker: cancelled, alerted). Our
    own journal stays FULL. This saves an fsync on every submission, cancel and catch-up."""
    db = connect(path, synchronous="NORMAL")
    # One transaction for check-and-apply, so two processes opening a new file at once cannot
    # both apply the same migration.
    with transaction(db):
        conn = db.conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)"
        )
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise SchemaTooNew(f"{path} has schema version {current}, this steadyhand knows up to {latest}")
        for version, name, apply in MIGRATIONS:
            if version > current:
                apply(conn)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, _iso(_wall_now()))
                )
    return db


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _wall_now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    # Fixed width (always microseconds, always UTC), so the text sorts like the time.
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _cents(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


def _epoch_dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def _first(mask: np.ndarray) -> int:
    """Index of the first True, or -1."""
    if not len(mask):
        return -1
    i = int(np.argmax(mask))
    return i if mask[i] else -1


def _get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: sqlite3.Connection, **values: str) -> None:
    for key, value in values.items():
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


@dataclass(frozen=True, slots=True)
class _Order:
    """An open order as the matcher needs it (one row of ``orders``)."""

    id: int
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    type: OrderType
    limit_price: Decimal | None
    stop_price: Decimal | None
    filled_qty: int
    fill_count: int
    eligible_at: datetime
    expires_at: datetime | None
    triggered: bool
    slippage_bps: float
    partial_fill_probability: float
    rng_seed: int

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> _Order:
        return cls(
            id=r["id"],
            broker_order_id=r["broker_order_id"],
            client_order_id=r["client_order_id"],
            symbol=r["symbol"],
            side=Side(r["side"]),
            qty=r["qty"],
            type=OrderType(r["type"]),
            limit_price=_dec(r["limit_price"]),
            stop_price=_dec(r["stop_price"]),
            filled_qty=r["filled_qty"],
            fill_count=r["fill_count"],
            eligible_at=_parse(r["eligible_at"]),
            expires_at=_parse(r["expires_at"]) if r["expires_at"] else None,
            triggered=r["triggered_at"] is not None,
            slippage_bps=r["slippage_bps"],
            partial_fill_probability=r["partial_fill_probability"],
            rng_seed=r["rng_seed"],
        )


# Catch-up events, applied in time order across all orders (cash and average prices depend on
# the order fills happen in). ``rank`` orders events of the same second: trigger, fill, expiry.
@dataclass(frozen=True, slots=True)
class _Event:
    ts: datetime
    rank: int
    order_id: int
    kind: Literal["trigger", "fill", "expire"]
    fill_no: int = 0
    qty: int = 0
    price: Decimal = Decimal(0)

    @property
    def key(self) -> tuple[datetime, int, int, int]:
        return (self.ts, self.order_id, self.rank, self.fill_no)


def _row_to_order(r: sqlite3.Row) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=r["broker_order_id"],
        client_order_id=r["client_order_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        qty=r["qty"],
        type=OrderType(r["type"]),
        time_in_force=TimeInForce(r["time_in_force"]),
        limit_price=_dec(r["limit_price"]),
        stop_price=_dec(r["stop_price"]),
        status=OrderStatus(r["status"]),
        filled_qty=r["filled_qty"],
        avg_fill_price=_dec(r["avg_fill_price"]),
        submitted_at=_parse(r["submitted_at"]),
        updated_at=_parse(r["updated_at"]),
        reason=r["reason"],
    )


def _row_to_fill(r: sqlite3.Row) -> BrokerFill:
    return BrokerFill(
        fill_id=r["fill_id"],
        broker_order_id=r["broker_order_id"],
        client_order_id=r["client_order_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        qty=r["qty"],
        price=Decimal(r["price"]),
        ts=_parse(r["ts"]),
    )


# ---------------------------------------------------------------------------------------------
# Fault injection (switchable at run time, by a test, a drill or an operator)
# ---------------------------------------------------------------------------------------------

FAULTS_FILE = "sim_faults.json"  # next to exchange.db
FAULT_MODES = ("reject", "error", "timeout", "slow", "disconnect")
OPS = ("submit", "cancel", "get_by_client_id", "fills_for", "open_orders", "positions", "account",
       "clock", "poll")


def faults_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FAULTS_FILE


def set_fault(data_dir: str | Path, mode: str, *, delay_s: float = 0.2, ops: tuple[str, ...] = ()) -> Path:
    """Switch a broker fault on for every process using this exchange (atomic replace).

    ``reject``: every submission is rejected. ``error``: every call fails with a 5xx-style
    TransientBrokerError. ``disconnect``: every call fails as a refused connection (also transient).
    ``timeout``: every call waits ``delay_s`` and raises UnknownOutcome -- submissions and cancels
    *are* carried out first (the reply is what gets lost: the case that breeds duplicate orders).
    ``slow``: every call waits ``delay_s`` and then works. ``ops`` limits it to some calls.
    """
    if mode not in FAULT_MODES:
        raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}, got {mode!r}")
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown broker calls {sorted(unknown)}; known: {', '.join(OPS)}")
    path = faults_path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"mode": mode, "delay_s": delay_s, "ops": list(ops)}))
    os.replace(tmp, path)
    return path


def clear_fault(data_dir: str | Path) -> None:
    faults_path(data_dir).unlink(missing_ok=True)


class _FaultSwitch:
    """Reads the faults file when it changes (one ``stat`` per call when nothing changed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._fault: dict[str, object] | None = None

    def current(self) -> dict[str, object] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key = self._fault = None
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:
            self._key = key
            try:
                fault = json.loads(self.path.read_text())
                self._fault = fault if fault.get("mode") in FAULT_MODES else None
            except (OSError, ValueError, AttributeError):
                self._fault = None  # half-written or hand-edited badly: no fault rather than a crash
        return self._fault


# ---------------------------------------------------------------------------------------------
# The exchange
# ---------------------------------------------------------------------------------------------


class SimExchange:
    """A :class:`~steadyhand.brokers.base.Broker` backed by ``exchange.db``.

    ``clock`` is anything with ``now()`` (a :class:`SimClock`, or a manual clock in tests).
    ``fault`` is an optional hook called with a point name (``"submit:before_commit"``,
    ``"submit:after_commit"``, ``"cancel:after_commit"``) so crash tests can die exactly there.
    ``faults``: honour the run-time fault switch (``sim_faults.json`` next to the database, see
    :func:`set_fault`); tools that inspect the book (``steadyhand verify``) pass False.
    """

    name = "sim"

    def __init__(
        self,
        db_path: str | Path,
        market: MarketModel,
        clock: NowSource,
        *,
        partial_fill_probability: float = 0.10,
        slippage_bps: float = 1.0,
        latency_ms: float = 50.0,
        start_cash: float = 100_000.0,
        seed: int = 7,
        fault: Callable[[str], None] | None = None,
        faults: bool = True,
    ) -> None:
        if not 0.0 <= partial_fill_probability <= 1.0:
            raise ValueError("partial_fill_probability must be between 0 and 1")
        if slippage_bps < 0 or latency_ms < 0:
            raise ValueError("slippage_bps and latency_ms must not be negative")
        self.db_path = Path(db_path)
        self.market = market
        self._clock = clock
        self.partial_fill_probability = partial_fill_probability
        self.slippage_bps = slippage_bps
        self.latency = timedelta(milliseconds=latency_ms)
        self.seed = seed
        self._fault = fault
        self._faults = _FaultSwitch(self.db_path.with_name(FAULTS_FILE)) if faults else None
        self._db = open_exchange_db(self.db_path)
        self._conn = self._db.conn
        with self._write():
            # The first opener funds the account; later ones (other processes, restarts) keep it.
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('cash', ?)",
                (str(Decimal(str(start_cash)).quantize(CENT)),),
            )

    # --- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with transaction(self._db):
            yield self._conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot across several SELECTs."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        cur = self._conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, params).fetchall()

    def _injected(self, op: str) -> bool:
        """Apply a switched-on fault to this call; True when the call must end in UnknownOutcome
        after doing its work (a timeout of a submission or cancel)."""
        fault = self._faults.current() if self._faults is not None else None
        if fault is None or (fault.get("ops") and op not in fault["ops"]):  # type: ignore[operator]
            return False
        mode = fault["mode"]
        if mode in ("slow", "timeout"):
            time.sleep(float(fault.get("delay_s", 0.2)))  # type: ignore[arg-type]
        if mode == "error":
            raise TransientBrokerError(f"503 service unavailable (simulated fault) on {op}")
        if mode == "disconnect":
            raise TransientBrokerError(f"connection refused (simulated disconnect) on {op}")
        if mode == "reject" and op == "submit":
            raise OrderRejected("simulated fault: the exchange rejects every order")
        if mode == "timeout":
            if op in ("submit", "cancel"):
                return True
            raise UnknownOutcome(f"timed out (simulated fault) on {op}")
        return False

    def _hook(self, point: str) -> None:
        if self._fault is not None:
            self._fault(point)

    def _now(self) -> datetime:
        return self._clock.now().astimezone(UTC)

    def _sync(self) -> datetime:
        """Catch up to now; takes the write lock only when there is something to match."""
        now = self._now()
        if self._conn.execute(
            f"SELECT 1 FROM orders WHERE status IN {_OPEN_IN} LIMIT 1"
        ).fetchone():
            with self._write():
                self._catch_up(now)
        return now

    # --- catch-up (call inside a write transaction) ----------------------------------------------

    def _catch_up(self, now: datetime) -> None:
        adv_text = _get_meta(self._conn, "advanced_to")
        advanced_to = _parse(adv_text) if adv_text else None
        if advanced_to is not None and now <= advanced_to:
            return  # another process (its clock a hair ahead) already did this stretch
        if advanced_to is not None and math.ceil(advanced_to.timestamp()) >= now.timestamp():
            return  # the path is per second: no new second (hence no event) in [advanced_to, now)
        events: list[_Event] = []
        paths: dict[tuple[str, datetime, datetime], QuoteArrays] = {}  # shared by orders of a symbol
        if advanced_to is None:
            rows = self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} ORDER BY id")
        else:
            rows = self._may_change(advanced_to, now, paths)
        for row in rows:
            order = _Order.from_row(row)
            start = order.eligible_at if advanced_to is None else max(advanced_to, order.eligible_at)
            events.extend(self._match(order, start, now, paths))
        events.sort(key=lambda e: e.key)
        for event in events:
            self._apply(event)
        _set_meta(self._conn, advanced_to=_iso(now))

    def _may_change(self, advanced_to: datetime, now: datetime,
                    paths: dict[tuple[str, datetime, datetime], QuoteArrays]) -> list[sqlite3.Row]:
        """The open orders something can happen to in [advanced_to, now): without a new quote for
        its symbol, an order already eligible that does not expire by now stays as it is. On a
        minute-bar replay most catch-ups see no new quote at all, and skipping those orders before
        parsing them keeps a book of thousands of open orders from costing O(book) per submission."""
        since, until = _iso(advanced_to), _iso(now)
        if not may_quote_between(self.market, advanced_to, now):
            # No quote for any symbol (a replay between two bars): only eligibility and expiry matter.
            return self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} AND (eligible_at > ? "
                              "OR expires_at <= ?) ORDER BY id", (since, until))
        rows = self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} ORDER BY id")
        if now - advanced_to > _CHUNK:
            return rows  # a long gap: let the matcher walk it chunk by chunk
        quoted: dict[str, bool] = {}
        kept = []
        for row in rows:
            if row["eligible_at"] > since or (row["expires_at"] is not None and row["expires_at"] <= until):
                kept.append(row)
                continue
            symbol = row["symbol"]
            if symbol not in quoted:
                qa = quote_arrays(self.market, symbol, advanced_to, now)
                paths[(symbol, advanced_to, now)] = qa  # the matcher's first chunk: computed once
                quoted[symbol] = len(qa) > 0
            if quoted[symbol]:
                kept.append(row)
        return kept

    def _match(self, o: _Order, start: datetime, now: datetime,
               paths: dict[tuple[str, datetime, datetime], QuoteArrays] | None = None) -> list[_Event]:
        """What happens to one order between ``start`` and ``now`` (independent of other orders:
        liquidity is unlimited and the market does not react to us)."""
        end = now if o.expires_at is None else min(now, o.expires_at)
        remaining = o.qty - o.filled_qty
        fill_no = o.fill_count
        triggered = o.triggered or o.type not in STOP_TYPES
        buy = o.side is Side.BUY
        limit = float(o.limit_price) if o.limit_price is not None else math.nan
        stop = float(o.stop_price) if o.stop_price is not None else math.nan
        events: list[_Event] = []
        chunk_start = start
        while chunk_start < end and remaining > 0:
            chunk_end = min(end, chunk_start + _CHUNK)
            key = (o.symbol, chunk_start, chunk_end)
            qa = paths.get(key) if paths is not None else None
            if qa is None:
                qa = quote_arrays(self.market, o.symbol, chunk_start, chunk_end)
                if paths is not None:
                    paths[key] = qa
            i, n = 0, len(qa)
            while i < n and remaining > 0:
                if not triggered:
                    j = _first(qa.ask[i:] >= stop - _EPS if buy else qa.bid[i:] <= stop + _EPS)
                    if j < 0:
                        break
                    i += j
                    triggered = True
                    events.append(_Event(_epoch_dt(qa.ts[i]), 0, o.id, "trigger"))
                if o.type in LIMIT_TYPES:
                    # Marketable limit: fills at the limit or better.
                    j = _first(qa.ask[i:] <= limit + _EPS if buy else qa.bid[i:] >= limit - _EPS)
                    if j < 0:
                        break
                    i += j
                    assert o.limit_price is not None  # validated at submission
                    if buy:
                        price = min(o.limit_price, _cents(qa.ask[i]))
                    else:
                        price = max(o.limit_price, _cents(qa.bid[i]))
                else:
                    price = self._slipped(o, float(qa.ask[i] if buy else qa.bid[i]))
                fill_no += 1
                qty = self._fill_qty(o, remaining, fill_no)
                events.append(_Event(_epoch_dt(qa.ts[i]), 1, o.id, "fill", fill_no, qty, price))
                remaining -= qty
                i += 1  # the rest of a partial fill goes on a later second
            chunk_start = chunk_end
        if remaining > 0 and o.expires_at is not None and now >= o.expires_at:
            events.append(_Event(o.expires_at, 2, o.id, "expire"))
        return events

    @staticmethod
    def _slipped(o: _Order, quote: float) -> Decimal:
        # Market and triggered stop orders pay the spread plus slippage, rounded against us.
        factor = Decimal(str(o.slippage_bps)) / Decimal(10_000)
        if o.side is Side.BUY:
            return (_cents(quote) * (1 + factor)).quantize(CENT, rounding=ROUND_UP)
        return max(CENT, (_cents(quote) * (1 - factor)).quantize(CENT, rounding=ROUND_DOWN))

    @staticmethod
    def _fill_qty(o: _Order, remaining: int, fill_no: int) -> int:
        """Deterministic partial fills: the same order fills the same way in every process."""
        if remaining < 2 or o.partial_fill_probability <= 0:
            return remaining
        rng = random.Random(stable_int("partial", o.rng_seed, o.client_order_id, fill_no))
        if rng.random() < o.partial_fill_probability:
            return rng.randint(1, remaining - 1)
        return remaining

    def _apply(self, e: _Event) -> None:
        conn = self._conn
        ts = _iso(e.ts)
        if e.kind == "trigger":
            conn.execute("UPDATE orders SET triggered_at = ? WHERE id = ?", (ts, e.order_id))
            return
        row = self._rows("SELECT * FROM orders WHERE id = ?", (e.order_id,))[0]
        if e.kind == "expire":
            conn.execute(
                "UPDATE orders SET status = ?, updated_at = ?, reason = ? WHERE id = ?",
                (OrderStatus.EXPIRED.value, ts, "day order expired at the close", e.order_id),
            )
            self._changed("order", row["broker_order_id"], ts)
            return
        filled = row["filled_qty"] + e.qty
        notional = Decimal(row["filled_notional"]) + e.price * e.qty
        status = OrderStatus.FILLED if filled >= row["qty"] else OrderStatus.PARTIALLY_FILLED
        conn.execute(
            "UPDATE orders SET filled_qty = ?, filled_notional = ?, avg_fill_price = ?, "
            "fill_count = ?, status = ?, updated_at = ? WHERE id = ?",
            (
                filled,
                str(notional),
                str((notional / filled).quantize(CENT, rounding=ROUND_HALF_UP)),
                e.fill_no,
                status.value,
                ts,
                e.order_id,
            ),
        )
        fill_id = f"{row['broker_order_id']}-{e.fill_no}"
        conn.execute(
            "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fill_id,
                row["broker_order_id"],
                row["client_order_id"],
                row["symbol"],
                row["side"],
                e.qty,
                str(e.price),
                ts,
            ),
        )
        side = Side(row["side"])
        self._book_position(row["symbol"], side.sign * e.qty, e.price, ts)
        cash = Decimal(_get_meta(conn, "cash") or "0") - side.sign * e.qty * e.price
        _set_meta(conn, cash=str(cash))
        self._changed("fill", fill_id, ts)
        self._changed("order", row["broker_order_id"], ts)

    def _book_position(self, symbol: str, delta: int, price: Decimal, ts: str) -> None:
        row = self._conn.execute(
            "SELECT qty, avg_entry_price FROM positions WHERE symbol = ?", (symbol,)
        ).fetchone()
        qty, avg = (row[0], Decimal(row[1])) if row else (0, Decimal(0))
        new = qty + delta
        if new == 0:
            new_avg = Decimal(0)
        elif qty == 0 or (qty > 0) == (delta > 0):  # opening or adding: weighted average
            new_avg = (avg * abs(qty) + price * abs(delta)) / abs(new)
        elif (qty > 0) == (new > 0):  # reducing: the remaining shares keep their cost
            new_avg = avg
        else:  # flipped through zero: the new side's cost is this fill's price
            new_avg = price
        self._conn.execute(
            "INSERT INTO positions (symbol, qty, avg_entry_price, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (symbol) DO UPDATE SET qty = excluded.qty, "
            "avg_entry_price = excluded.avg_entry_price, updated_at = excluded.updated_at",
            (symbol, new, str(new_avg.quantize(PRICE_PLACES)), ts),
        )

    def _changed(self, kind: str, ref: str, ts: str) -> None:
        self._conn.execute("INSERT INTO changes (kind, ref, ts) VALUES (?, ?, ?)", (kind, ref, ts))

    # --- prices ---------------------------------------------------------------------------------

    def _reference_quote(self, symbol: str, t: datetime) -> Quote | None:
        """The quote at ``t``, or while closed the last one of the latest session."""
        q = self.market.quote(symbol, t)
        if q is not None:
            return q
        try:
            close = market_hours.next_close(market_hours.previous_open(t))
        except ValueError:
            return None
        if close <= t:
            return self.market.quote(symbol, close - timedelta(seconds=1))
        return None

    # --- Broker ---------------------------------------------------------------------------------

    def _validate(self, spec: OrderSpec) -> tuple[OrderType, TimeInForce, Side]:
        try:
            otype, tif, side = OrderType(spec.type), TimeInForce(spec.time_in_force), Side(spec.side)
        except ValueError as exc:
            raise OrderRejected(str(exc)) from None
        if not spec.client_order_id:
            raise OrderRejected("client_order_id is required")
        if isinstance(spec.qty, bool) or not isinstance(spec.qty, int) or spec.qty < 1:
            raise OrderRejected(f"qty must be a whole number >= 1, got {spec.qty!r}")
        if spec.symbol not in self.market.symbols:
            raise OrderRejected(f"unknown symbol {spec.symbol!r}")
        for label, price, needed in (
            ("limit_price", spec.limit_price, otype in LIMIT_TYPES),
            ("stop_price", spec.stop_price, otype in STOP_TYPES),
        ):
            if not needed:
                continue
            if price is None:
                raise OrderRejected(f"{label} is required for a {otype.value} order")
            if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
                raise OrderRejected(f"{label} must be a positive Decimal, got {price!r}")
            if price != price.quantize(CENT):
                raise OrderRejected(f"{label} {price} is a sub-penny price")
        return otype, tif, side

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        lose_reply = self._injected("submit")
        otype, tif, side = self._validate(spec)
        try:
            order = self._submit(spec, otype, tif, side)
        except DuplicateClientOrderId:
            with self._write() as conn:
                conn.execute("INSERT INTO duplicate_submits (client_order_id, ts) VALUES (?, ?)",
                             (spec.client_order_id, _iso(_wall_now())))
            raise
        if lose_reply:
            raise UnknownOutcome(f"timed out (simulated fault) submitting {spec.client_order_id}")
        return order

    def _submit(self, spec: OrderSpec, otype: OrderType, tif: TimeInForce, side: Side) -> BrokerOrder:
        with self._write() as conn:
            now = self._now()
            self._catch_up(now)
            if conn.execute(
                "SELECT 1 FROM orders WHERE client_order_id = ?", (spec.client_order_id,)
            ).fetchone():
                raise DuplicateClientOrderId(spec.client_order_id)
            if side is Side.BUY:
                self._check_buying_power(spec, otype, now)
            # A day order belongs to the session it is submitted in, or (submitted while closed)
            # to the next one.
            expires_at = market_hours.next_close(now) if tif is TimeInForce.DAY else None
            broker_order_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO orders (broker_order_id, client_order_id, symbol, side, qty, type, "
                "time_in_force, limit_price, stop_price, status, submitted_at, eligible_at, "
                "expires_at, updated_at, slippage_bps, partial_fill_probability, rng_seed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    broker_order_id,
                    spec.client_order_id,
                    spec.symbol,
                    side.value,
                    spec.qty,
                    otype.value,
                    tif.value,
                    None if spec.limit_price is None else str(spec.limit_price),
                    None if spec.stop_price is None else str(spec.stop_price),
                    OrderStatus.SUBMITTED.value,
                    _iso(now),
                    _iso(now + self.latency),
                    None if expires_at is None else _iso(expires_at),
                    _iso(now),
                    self.slippage_bps,
                    self.partial_fill_probability,
                    self.seed,
                ),
            )
            self._changed("order", broker_order_id, _iso(now))
            self._hook("submit:before_commit")
            row = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,))[0]
        self._hook("submit:after_commit")
        return _row_to_order(row)

    def _check_buying_power(self, spec: OrderSpec, otype: OrderType, now: datetime) -> None:
        # What the order may cost at most: a limit buy never pays more than its limit (as real
        # brokers reserve it); otherwise the current ask (a stop buy: the higher of ask and stop).
        q = self._reference_quote(spec.symbol, now)
        ask = None if q is None else _cents(q.ask)
        if otype in LIMIT_TYPES:
            price = spec.limit_price
        elif otype is OrderType.STOP and spec.stop_price is not None:
            price = spec.stop_price if ask is None else max(ask, spec.stop_price)
        else:
            price = ask
        if price is None:
            raise OrderRejected(f"no price for {spec.symbol} to check buying power against")
        cash = Decimal(_get_meta(self._conn, "cash") or "0")
        if price * spec.qty > cash:
            raise OrderRejected("insufficient buying power")

    def cancel(self, broker_order_id: str) -> None:
        lose_reply = self._injected("cancel")
        with self._write() as conn:
            now = self._now()
            self._catch_up(now)
            row = conn.execute(
                "SELECT status FROM orders WHERE broker_order_id = ?", (broker_order_id,)
            ).fetchone()
            if row is None:
                raise OrderNotFound(broker_order_id)
            if OrderStatus(row[0]).is_terminal:
                raise NotCancelable(f"{broker_order_id} is {row[0]}")
            conn.execute(
                "UPDATE orders SET status = ?, updated_at = ?, reason = ? WHERE broker_order_id = ?",
                (OrderStatus.CANCELED.value, _iso(now), "canceled by request", broker_order_id),
            )
            self._changed("order", broker_order_id, _iso(now))
        self._hook("cancel:after_commit")
        if lose_reply:
            raise UnknownOutcome(f"timed out (simulated fault) canceling {broker_order_id}")

    def cancel_all(self) -> int:
        """Cancel every open order in one transaction (the kill switch); how many were open."""
        lose_reply = self._injected("cancel")
        with self._write() as conn:
            now = self._now()
            self._catch_up(now)
            ids = [r[0] for r in conn.execute(f"SELECT broker_order_id FROM orders WHERE status IN {_OPEN_IN}")]
            conn.execute(
                f"UPDATE orders SET status = ?, updated_at = ?, reason = ? WHERE status IN {_OPEN_IN}",
                (OrderStatus.CANCELED.value, _iso(now), "canceled by request (all)"),
            )
            for broker_order_id in ids:
                self._changed("order", broker_order_id, _iso(now))
        self._hook("cancel:after_commit")
        if lose_reply:
            raise UnknownOutcome("timed out (simulated fault) canceling all orders")
        return len(ids)

    def get_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        self._injected("get_by_client_id")
        self._sync()
        rows = self._rows("SELECT * FROM orders WHERE client_order_id = ?", (client_order_id,))
        return _row_to_order(rows[0]) if rows else None

    def get_order(self, broker_order_id: str) -> BrokerOrder:
        """The order with this broker id (not in the Broker protocol; handy for tools)."""
        self._sync()
        rows = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,))
        if not rows:
            raise OrderNotFound(broker_order_id)
        return _row_to_order(rows[0])

    # Whole-book reads for tools (``steadyhand verify``); not in the Broker protocol.

    def all_orders(self) -> list[BrokerOrder]:
        self._sync()
        return [_row_to_order(r) for r in self._rows("SELECT * FROM orders ORDER BY id")]

    def all_fills(self) -> list[BrokerFill]:
        self._sync()
        return [_row_to_fill(r) for r in self._rows("SELECT * FROM fills ORDER BY ts, fill_id")]

    def duplicate_submits(self) -> list[str]:
        """Client order ids that were submitted again after the exchange already had them."""
        return [r[0] for r in self._conn.execute("SELECT client_order_id FROM duplicate_submits ORDER BY id")]

    def fills_for(self, broker_order_id: str) -> list[BrokerFill]:
        self._injected("fills_for")
        self._sync()
        rows = self._rows(
            "SELECT * FROM fills WHERE broker_order_id = ? ORDER BY ts, fill_id", (broker_order_id,)
        )
        return [_row_to_fill(r) for r in rows]

    def open_orders(self) -> list[BrokerOrder]:
        self._injected("open_orders")
        self._sync()
        rows = self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} ORDER BY id")
        return [_row_to_order(r) for r in rows]

    def positions(self) -> list[BrokerPosition]:
        self._injected("positions")
        self._sync()
        rows = self._rows("SELECT * FROM positions WHERE qty != 0 ORDER BY symbol")
        return [BrokerPosition(r["symbol"], r["qty"], Decimal(r["avg_entry_price"])) for r in rows]

    def account(self) -> Account:
        self._injected("account")
        now = self._sync()
        with self._read() as conn:
            cash = Decimal(_get_meta(conn, "cash") or "0")
            held = conn.execute(
                "SELECT symbol, qty, avg_entry_price FROM positions WHERE qty != 0"
            ).fetchall()
        equity = cash
        for symbol, qty, avg in held:
            q = self._reference_quote(symbol, now)
            mark = Decimal(str(round(q.mid, 4))) if q is not None else Decimal(avg)
            equity += qty * mark
        return Account(cash=cash, equity=equity.quantize(CENT), buying_power=cash)

    def clock(self) -> MarketClock:
        self._injected("clock")
        now = self._sync()
        return MarketClock(
            timestamp=now,
            is_open=market_hours.is_open(now),
            next_open=market_hours.next_open(now),
            next_close=market_hours.next_close(now),
        )

    def poll(self, cursor: str | None) -> BrokerUpdates:
        self._injected("poll")
        self._sync()
        with self._read() as conn:
            latest = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            if cursor is None:
                return BrokerUpdates(orders=(), fills=(), cursor=str(latest))
            try:
                since = int(cursor)
            except ValueError:
                raise ValueError(f"not a sim exchange cursor: {cursor!r}") from None
            if since > latest:
                since = 0  # a cursor from an older exchange.db: deliver everything, nothing lost
            changes = conn.execute(
                "SELECT kind, ref FROM changes WHERE seq > ? ORDER BY seq", (since,)
            ).fetchall()
            order_ids = list(dict.fromkeys(ref for kind, ref in changes if kind == "order"))
            fill_ids = [ref for kind, ref in changes if kind == "fill"]
            orders = [
                _row_to_order(r)
                for oid in order_ids
                for r in self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (oid,))
            ]
            fills = [
                _row_to_fill(r)
                for fid in fill_ids
                for r in self._rows("SELECT * FROM fills WHERE fill_id = ?", (fid,))
            ]
        return BrokerUpdates(orders=tuple(orders), fills=tuple(fills), cursor=str(latest))

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------------------------------------
# The clock anchor
# ---------------------------------------------------------------------------------------------


def jump_clock(db_path: str | Path, to: datetime) -> SimClock:
    """Move a simulated run's clock forward to ``to`` (the bot being down overnight, say); only
    while the bot is down, and only forward: the book is caught up to ``to`` on its next call."""
    db = open_exchange_db(db_path)
    try:
        with transaction(db):
            conn = db.conn
            if _get_meta(conn, "clock_mode") != "simulated":
                raise ValueError("only a simulated clock can jump")
            speed = float(_get_meta(conn, "clock_speed") or "1")
            current = SimClock(anchor_sim=_parse(_get_meta(conn, "clock_anchor_sim") or ""),
                               anchor_real=float(_get_meta(conn, "clock_anchor_real") or "0"), speed=speed)
            if to <= current.now():
                raise ValueError(f"the clock only moves forward: {to} <= {current.now()}")
            clock = SimClock(anchor_sim=to.astimezone(UTC), anchor_real=time.time(), speed=speed)
            _set_meta(conn, clock_anchor_sim=_iso(clock.anchor_sim), clock_anchor_real=repr(clock.anchor_real))
    finally:
        db.conn.close()
    return clock


def stored_clock(db_path: str | Path) -> SimClock | None:
    """The clock a run anchored in ``exchange.db`` (read-only: changes nothing), or None."""
    path = Path(db_path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'clock_%'").fetchall())
    except sqlite3.OperationalError:
        return None  # no book yet
    finally:
        conn.close()
    if "clock_anchor_sim" not in meta:
        return None
    return SimClock(anchor_sim=_parse(meta["clock_anchor_sim"]), anchor_real=float(meta["clock_anchor_real"]),
                    speed=float(meta.get("clock_speed", "1")))


def clock_origin(db_path: str | Path) -> tuple[str, datetime | None] | None:
    """``(mode, start)`` of the clock anchored in ``exchange.db`` (read-only), or None when there is
    none yet. ``start`` is where a simulated clock first started (jumps and speed changes keep it);
    None for the real clock and for an anchor made before the start was recorded."""
    path = Path(db_path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('clock_mode', 'clock_start')"))
    except sqlite3.OperationalError:
        return None  # no book yet
    finally:
        conn.close()
    if "clock_mode" not in meta:
        return None
    mode, start = meta["clock_mode"], meta.get("clock_start")
    return mode, _parse(start) if start and mode == "simulated" else None


def anchor_clock(
    db_path: str | Path,
    *,
    speed: float,
    mode: str = "simulated",
    start: datetime | None = None,
) -> SimClock:
    """The run's clock, anchored in ``exchange.db`` so a restarted bot continues the same day.

    First call: ``simulated`` starts at ``start`` (a replay's first bar), else at the open of the
    latest session (so a new bot trades right away); ``real`` is the wall clock. Later calls return
    the stored anchor (``start`` is then ignored), re-anchored if ``speed`` changed. A change of
    ``mode`` starts a fresh anchor.
    """
    if mode not in ("simulated", "real"):
        raise ValueError(f"clock mode must be 'simulated' or 'real', got {mode!r}")
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if start is not None and start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    db = open_exchange_db(db_path)
    try:
        with transaction(db):
            conn = db.conn
            stored_mode = _get_meta(conn, "clock_mode")
            if stored_mode == mode:
                clock = SimClock(
                    anchor_sim=_parse(_get_meta(conn, "clock_anchor_sim") or ""),
                    anchor_real=float(_get_meta(conn, "clock_anchor_real") or "0"),
                    speed=float(_get_meta(conn, "clock_speed") or "1"),
                )
                wanted = 1.0 if mode == "real" else speed
                if clock.speed != wanted:
                    clock = clock.reanchored(wanted)
            elif mode == "real":
                clock = SimClock.real()
            else:
                real = time.time()
                sim_start = start if start is not None else market_hours.previous_open(
                    datetime.fromtimestamp(real, UTC)
                )
                clock = SimClock(anchor_sim=sim_start.astimezone(UTC), anchor_real=real, speed=speed)
                _set_meta(conn, clock_start=_iso(clock.anchor_sim))  # kept, so a later start can be compared
            _set_meta(
                conn,
                clock_mode=mode,
                clock_anchor_sim=_iso(clock.anchor_sim),
                clock_anchor_real=repr(clock.anchor_real),
                clock_speed=repr(clock.speed),
            )
    finally:
        db.conn.close()
    return clock
