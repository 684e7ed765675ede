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

import math
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from steadyhand.brokers.base import (
    BrokerError,
    BrokerUpdates,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    UnknownOutcome,
    replacement_client_id,
)
from steadyhand.config import Settings
from steadyhand.domain import (
    Account,
    BrokerOrder,
    Fill,
    MarketClock,
    OrderSpec,
    OrderStatus,
    OrderType,
    Position,
    Side,
    TimeInForce,
    TopOfBook,
    market_hours,
)
from steadyhand.sim.book_reads import OPEN_IN as _OPEN_IN
from steadyhand.sim.book_reads import BookReads
from steadyhand.sim.book_reads import row_to_fill as _row_to_fill
from steadyhand.sim.book_reads import row_to_order as _row_to_order
from steadyhand.sim.clock import NowSource
from steadyhand.sim.faults import FAULTS_FILE, FaultSwitch
from steadyhand.sim.market import MarketModel, Quote, QuoteArrays, load_market, may_quote_between, quote_arrays
from steadyhand.sim.matching import CENT, CHUNK, LIMIT_TYPES, STOP_TYPES, MatchEvent, OpenOrder, cents, match
from steadyhand.sim.schema import EXCHANGE_DB, get_meta, iso, open_exchange_db, parse_iso, set_meta, wall_now
from steadyhand.state.store import rows_where_in, transaction

PRICE_PLACES = Decimal("0.000001")  # average entry prices keep sub-cent precision


class SimExchange(BookReads):
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
        self._tradable = frozenset(market.symbols)  # a set: a 5,000-symbol tuple scanned per order cost a burst O(n^2)
        self._clock = clock
        self.partial_fill_probability = partial_fill_probability
        self.slippage_bps = slippage_bps
        self.latency = timedelta(milliseconds=latency_ms)
        self.seed = seed
        self._fault = fault
        self._faults = FaultSwitch(self.db_path.with_name(FAULTS_FILE)) if faults else None
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
        """Apply a switched-on fault to this call (see :meth:`FaultSwitch.inject`)."""
        return self._faults.inject(op) if self._faults is not None else False

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
        adv_text = get_meta(self._conn, "advanced_to")
        advanced_to = parse_iso(adv_text) if adv_text else None
        if advanced_to is not None and now <= advanced_to:
            return  # another process (its clock a hair ahead) already did this stretch
        if advanced_to is not None and math.ceil(advanced_to.timestamp()) >= now.timestamp():
            return  # the path is per second: no new second (hence no event) in [advanced_to, now)
        events: list[MatchEvent] = []
        paths: dict[tuple[str, datetime, datetime], QuoteArrays] = {}  # shared by orders of a symbol
        if advanced_to is None:
            rows = self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} ORDER BY id")
        else:
            rows = self._may_change(advanced_to, now, paths)
        for row in rows:
            order = OpenOrder.from_row(row)
            start = order.eligible_at if advanced_to is None else max(advanced_to, order.eligible_at)
            events.extend(match(self.market, order, start, now, paths))
        events.sort(key=lambda e: e.key)
        for event in events:
            self._apply(event)
        set_meta(self._conn, advanced_to=iso(now))

    def _may_change(self, advanced_to: datetime, now: datetime,
                    paths: dict[tuple[str, datetime, datetime], QuoteArrays]) -> list[sqlite3.Row]:
        """The open orders something can happen to in [advanced_to, now): without a new quote for
        its symbol, an order already eligible that does not expire by now stays as it is. On a
        minute-bar replay most catch-ups see no new quote at all, and skipping those orders before
        parsing them keeps a book of thousands of open orders from costing O(book) per submission."""
        since, until = iso(advanced_to), iso(now)
        if not may_quote_between(self.market, advanced_to, now):
            # No quote for any symbol (a replay between two bars): only eligibility and expiry matter.
            return self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} AND (eligible_at > ? "
                              "OR expires_at <= ?) ORDER BY id", (since, until))
        rows = self._rows(f"SELECT * FROM orders WHERE status IN {_OPEN_IN} ORDER BY id")
        if now - advanced_to > CHUNK:
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

    def _apply(self, e: MatchEvent) -> None:
        conn = self._conn
        ts = iso(e.ts)
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
        cash = Decimal(get_meta(conn, "cash") or "0") - side.sign * e.qty * e.price
        set_meta(conn, cash=str(cash))
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
        if spec.symbol not in self._tradable:
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
                             (spec.client_order_id, iso(wall_now())))
            raise
        if lose_reply:
            raise UnknownOutcome(f"timed out (simulated fault) submitting {spec.client_order_id}")
        return order

    def _submit(self, spec: OrderSpec, otype: OrderType, tif: TimeInForce, side: Side) -> BrokerOrder:
        with self._write():
            now = self._now()
            self._catch_up(now)
            broker_order_id, quote = self._place(spec, otype, tif, side, now)
            self._hook("submit:before_commit")
            row = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,))[0]
        self._hook("submit:after_commit")
        return _with_quote(_row_to_order(row), quote)

    def _place(self, spec: OrderSpec, otype: OrderType, tif: TimeInForce, side: Side,
               now: datetime) -> tuple[str, Quote | None]:
        """Check and insert one new order (inside a write transaction, caught up to ``now``): its
        broker order id and the quote it met. Raises DuplicateClientOrderId, OrderRejected."""
        if self._conn.execute("SELECT 1 FROM orders WHERE client_order_id = ?", (spec.client_order_id,)).fetchone():
            raise DuplicateClientOrderId(spec.client_order_id)
        quote = self._reference_quote(spec.symbol, now)  # in memory: costs no round trip
        if side is Side.BUY:
            self._check_buying_power(spec, otype, quote)
        # A day order belongs to the session it is submitted in, or (submitted while closed)
        # to the next one.
        expires_at = market_hours.next_close(now) if tif is TimeInForce.DAY else None
        broker_order_id = self._insert_order(spec, otype, tif, side, now, expires_at)
        self._changed("order", broker_order_id, iso(now))
        return broker_order_id, quote

    def submit_many(self, specs: Sequence[OrderSpec], between: Callable[[], None] | None = None,
                    ) -> list[BrokerOrder | BrokerError]:
        """A tick's orders in ONE transaction (one catch-up, one commit): the Broker protocol's
        batch. A switched-on fault hits the batch as one request. ``between`` is not needed."""
        try:
            lose_reply = self._injected("submit")
        except BrokerError as exc:  # error, disconnect, reject: the same answer for every order
            return [exc for _ in specs]
        results: list[BrokerOrder | BrokerError] = []
        placed: dict[int, tuple[str, Quote | None]] = {}
        duplicates: list[str] = []
        with self._write():
            now = self._now()
            self._catch_up(now)
            for i, spec in enumerate(specs):
                results.append(OrderRejected("not placed"))  # replaced below
                try:
                    placed[i] = self._place(spec, *self._validate(spec), now)
                except DuplicateClientOrderId as exc:
                    duplicates.append(spec.client_order_id)
                    results[i] = exc
                except OrderRejected as exc:
                    results[i] = exc
            self._conn.executemany("INSERT INTO duplicate_submits (client_order_id, ts) VALUES (?, ?)",
                                   [(cid, iso(wall_now())) for cid in duplicates])
            self._hook("submit:before_commit")
            rows = {r["broker_order_id"]: r for r in rows_where_in(self._conn, "orders", "broker_order_id",
                                                                    [bid for bid, _ in placed.values()])}
        self._hook("submit:after_commit")
        for i, (broker_order_id, quote) in placed.items():
            results[i] = (UnknownOutcome(f"timed out (simulated fault) submitting {specs[i].client_order_id}")
                          if lose_reply else _with_quote(_row_to_order(rows[broker_order_id]), quote))
        return results

    def _insert_order(self, spec: OrderSpec, otype: OrderType, tif: TimeInForce, side: Side, now: datetime,
                      expires_at: datetime | None, replaces: str | None = None) -> str:
        """A new working order row (call inside a write transaction); its broker order id."""
        broker_order_id = str(uuid.uuid4())
        self._conn.execute(
            "INSERT INTO orders (broker_order_id, client_order_id, symbol, side, qty, type, "
            "time_in_force, limit_price, stop_price, status, submitted_at, eligible_at, "
            "expires_at, updated_at, slippage_bps, partial_fill_probability, rng_seed, replaces) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (broker_order_id, spec.client_order_id, spec.symbol, side.value, spec.qty, otype.value, tif.value,
             None if spec.limit_price is None else str(spec.limit_price),
             None if spec.stop_price is None else str(spec.stop_price),
             OrderStatus.SUBMITTED.value, iso(now), iso(now + self.latency),
             None if expires_at is None else iso(expires_at), iso(now),
             self.slippage_bps, self.partial_fill_probability, self.seed, replaces),
        )
        return broker_order_id

    def _check_buying_power(self, spec: OrderSpec, otype: OrderType, q: Quote | None) -> None:
        # What the order may cost at most: a limit buy never pays more than its limit (as real
        # brokers reserve it); otherwise the current ask (a stop buy: the higher of ask and stop).
        ask = None if q is None else cents(q.ask)
        if otype in LIMIT_TYPES:
            price = spec.limit_price
        elif otype is OrderType.STOP and spec.stop_price is not None:
            price = spec.stop_price if ask is None else max(ask, spec.stop_price)
        else:
            price = ask
        if price is None:
            raise OrderRejected(f"no price for {spec.symbol} to check buying power against")
        cash = Decimal(get_meta(self._conn, "cash") or "0")
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
                (OrderStatus.CANCELED.value, iso(now), "canceled by request", broker_order_id),
            )
            self._changed("order", broker_order_id, iso(now))
        self._hook("cancel:after_commit")
        if lose_reply:
            raise UnknownOutcome(f"timed out (simulated fault) canceling {broker_order_id}")

    def modify(self, broker_order_id: str, *, qty: int | None = None, limit_price: Decimal | None = None,
               stop_price: Decimal | None = None) -> BrokerOrder:
        """Amend a working order in place, keeping its ids (IB's placeOrder with the same order id;
        issue 12). What happened up to now happened under the old terms; the new ones apply from
        now. ``qty`` may not go below what has filled. Raises OrderNotFound, NotCancelable (the
        order is terminal), OrderRejected (the new terms are invalid)."""
        with self._write() as conn:
            now = self._now()
            _, old = self._working_order(broker_order_id, now, "modified")
            spec = OrderSpec(old.client_order_id, old.symbol, old.side, old.qty if qty is None else qty,
                             old.type, old.time_in_force, old.limit_price if limit_price is None else limit_price,
                             old.stop_price if stop_price is None else stop_price)
            self._validate(spec)
            if spec.qty <= old.filled_qty:
                raise OrderRejected(f"qty {spec.qty} is not above the {old.filled_qty} already filled")
            conn.execute(
                "UPDATE orders SET qty = ?, limit_price = ?, stop_price = ?, updated_at = ? WHERE broker_order_id = ?",
                (spec.qty, None if spec.limit_price is None else str(spec.limit_price),
                 None if spec.stop_price is None else str(spec.stop_price), iso(now), broker_order_id))
            self._changed("order", broker_order_id, iso(now))
            row = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,))[0]
        return _row_to_order(row)

    def _working_order(self, broker_order_id: str, now: datetime, verb: str) -> tuple[sqlite3.Row, BrokerOrder]:
        """Inside a write transaction: the book caught up to ``now``, then the order that is to be
        ``verb`` (its row and itself). Raises OrderNotFound, NotCancelable (already terminal)."""
        self._catch_up(now)
        rows = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,))
        if not rows:
            raise OrderNotFound(broker_order_id)
        order = _row_to_order(rows[0])
        if order.status.is_terminal:
            raise NotCancelable(f"{broker_order_id} is {order.status.value}: it cannot be {verb}")
        return rows[0], order

    def replace(self, broker_order_id: str, qty: int | None = None, limit_price: Decimal | None = None,
                stop_price: Decimal | None = None, *, client_order_id: str | None = None) -> BrokerOrder:
        """The Broker protocol's replace, in Alpaca's shape (DESIGN §5): in one transaction the old
        order ends REPLACED (``replaced_by``) and a new one (``replaces``) works on the new terms
        for what is left to trade. ``qty`` is the new total, filled part included; the new order's
        client id is ``client_order_id`` or :func:`replacement_client_id` of the old. What filled
        before now filled under the old terms. Raises OrderNotFound, NotCancelable (it filled or
        ended first), OrderRejected (bad terms: the old order goes on), DuplicateClientOrderId
        (that replacement id exists: an earlier attempt got here), UnknownOutcome (fault switch)."""
        lose_reply = self._injected("replace")
        with self._write() as conn:
            now = self._now()
            old_row, old = self._working_order(broker_order_id, now, "replaced")
            total = old.qty if qty is None else qty
            if isinstance(total, int) and not isinstance(total, bool) and total <= old.filled_qty:
                raise OrderRejected(f"qty {total} is not above the {old.filled_qty} already filled")
            spec = OrderSpec(client_order_id or replacement_client_id(old.client_order_id), old.symbol, old.side,
                             total - old.filled_qty if isinstance(total, int) else total, old.type,
                             old.time_in_force, old.limit_price if limit_price is None else limit_price,
                             old.stop_price if stop_price is None else stop_price)
            otype, tif, side = self._validate(spec)
            if conn.execute("SELECT 1 FROM orders WHERE client_order_id = ?", (spec.client_order_id,)).fetchone():
                raise DuplicateClientOrderId(spec.client_order_id)
            if side is Side.BUY:
                self._check_buying_power(spec, otype, self._reference_quote(spec.symbol, now))
            expires = old_row["expires_at"]  # a day order stays in its session
            new_id = self._insert_order(spec, otype, tif, side, now, None if expires is None else parse_iso(expires),
                                        replaces=broker_order_id)
            conn.execute("UPDATE orders SET status = ?, replaced_by = ?, updated_at = ?, reason = ? "
                         "WHERE broker_order_id = ?",
                         (OrderStatus.REPLACED.value, new_id, iso(now), f"replaced by {new_id}", broker_order_id))
            self._changed("order", broker_order_id, iso(now))
            self._changed("order", new_id, iso(now))
            self._hook("replace:before_commit")
            row = self._rows("SELECT * FROM orders WHERE broker_order_id = ?", (new_id,))[0]
        self._hook("replace:after_commit")
        if lose_reply:
            raise UnknownOutcome(f"timed out (simulated fault) replacing {broker_order_id}")
        return _row_to_order(row)

    def cancel_all(self) -> int:
        """Cancel every open order in one transaction (the kill switch); how many were open."""
        lose_reply = self._injected("cancel")
        with self._write() as conn:
            now = self._now()
            self._catch_up(now)
            ids = [r[0] for r in conn.execute(f"SELECT broker_order_id FROM orders WHERE status IN {_OPEN_IN}")]
            conn.execute(
                f"UPDATE orders SET status = ?, updated_at = ?, reason = ? WHERE status IN {_OPEN_IN}",
                (OrderStatus.CANCELED.value, iso(now), "canceled by request (all)"),
            )
            for broker_order_id in ids:
                self._changed("order", broker_order_id, iso(now))
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

    def all_fills(self) -> list[Fill]:
        self._sync()
        return [_row_to_fill(r) for r in self._rows("SELECT * FROM fills ORDER BY ts, fill_id")]

    def duplicate_submits(self) -> list[str]:
        """Client order ids that were submitted again after the exchange already had them."""
        return [r[0] for r in self._conn.execute("SELECT client_order_id FROM duplicate_submits ORDER BY id")]

    def fills_for(self, broker_order_id: str) -> list[Fill]:
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

    def positions(self) -> list[Position]:
        self._injected("positions")
        self._sync()
        rows = self._rows("SELECT * FROM positions WHERE qty != 0 ORDER BY symbol")
        return [Position(r["symbol"], r["qty"], Decimal(r["avg_entry_price"])) for r in rows]

    def account(self) -> Account:
        self._injected("account")
        now = self._sync()
        with self._read() as conn:
            cash = Decimal(get_meta(conn, "cash") or "0")
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


def _with_quote(order: BrokerOrder, quote: Quote | None) -> BrokerOrder:
    """The quote the order met at submission (the execution report's bid/ask/mid at submit)."""
    if quote is None:
        return order
    return replace(order, quote=TopOfBook(order.symbol, quote.ts, quote.bid, quote.ask, "sim"))


# ---------------------------------------------------------------------------------------------
# The one way a run opens its exchange
# ---------------------------------------------------------------------------------------------


def open_sim_exchange(settings: Settings, data_dir: str | Path, clock: NowSource, *,
                      market: MarketModel | None = None, faults: bool = True) -> SimExchange:
    """The run's exchange in ``<data_dir>/exchange.db``, on its ``[sim]`` settings: for the OMS,
    ``steadyhand verify`` (``faults=False``: it inspects the book) and the exchange server (which
    passes a ``market`` covering its extra symbols). ``market`` None: the configured one."""
    sim = settings.sim
    return SimExchange(
        Path(data_dir) / EXCHANGE_DB,
        market if market is not None else load_market(sim, settings.symbols),
        clock,
        partial_fill_probability=sim.partial_fill_probability,
        slippage_bps=sim.slippage_bps,
        latency_ms=sim.latency_ms,
        start_cash=sim.start_cash,
        seed=sim.seed,
        faults=faults,
    )
