"""The order journal: the ``orders`` and ``fills`` tables of ``steadyhand.db``, as the OMS writes them.

Write-ahead (DESIGN §5): an order is a PENDING_SUBMIT row, committed, before the broker hears of
it; a status only moves forward (:func:`advances`), so a late, older update never undoes a newer
one; each fill is inserted once (its broker fill id is the primary key). Plain SQL on the hot
path: these run for every order and every broker update.

A replace is write-ahead too: its intent (``replace_intent``, JSON) is committed on the row with
``replace_state`` = pending before the broker hears of it, and settles forward only
(:func:`replace_advances`) to applied, refused or not_applied. A broker that replaces in place (IB)
changes the row's terms; one that makes a new order (Alpaca, the sim) ends the row REPLACED with
``replaced_by`` and journals the new order as a row of its own with ``replaces``.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus, OrderType, Side, TimeInForce
from steadyhand.state import store
from steadyhand.strategies.specs import strategy_of

OPEN_STATUSES = tuple(s.value for s in OrderStatus if s.is_open)
_IS_OPEN = f"status IN ({','.join('?' * len(OPEN_STATUSES))})"  # SQL condition, with OPEN_STATUSES
_WORKING = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)  # open at the broker

# A status may only move forward: a late, older update never undoes a newer one.
_RANK = {OrderStatus.PENDING_SUBMIT: 0, OrderStatus.SUBMITTED: 1, OrderStatus.PARTIALLY_FILLED: 2}

# SQLite primary result codes that mean "the store cannot take writes now", not "our SQL is wrong".
_STORE_FAULT_CODES = {5, 6, 8, 10, 13, 14}  # BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN


def advances(old: OrderStatus, new: OrderStatus) -> bool:
    """Whether moving a row from ``old`` to ``new`` is forward (the state machine's one rule)."""
    if old.is_terminal:
        return False
    return new.is_terminal or _RANK.get(new, 0) >= _RANK.get(old, 0)


class ReplaceState:
    """``orders.replace_state``: a replace intent's life (NULL: never amended)."""

    PENDING = "pending"  # journaled; the broker may or may not have it: look before anything else
    APPLIED = "applied"  # the broker took it
    REFUSED = "refused"  # the broker said no (filled first, bad terms): the order goes on as it was
    NOT_APPLIED = "not_applied"  # found afterwards not to have happened (a crash, a lost reply)


def replace_advances(old: str | None, new: str) -> bool:
    """Forward only: a new intent starts from none or a settled one; only a pending one settles."""
    if new == ReplaceState.PENDING:
        return old != ReplaceState.PENDING
    return old == ReplaceState.PENDING


def is_store_fault(exc: sqlite3.Error) -> bool:
    """A locked, full, read-only or failing database (halt trading), not a bug (crash)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _STORE_FAULT_CODES
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "full", "disk i/o", "readonly"))


class OrderJournal:
    """The OMS's reads and writes of the journal; every write commits (or joins the caller's
    :meth:`transaction`, which then commits them together)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def transaction(self) -> AbstractContextManager[Any]:
        return store.transaction(self.db)

    # --- reads ----------------------------------------------------------------------------------

    def row(self, cid: str) -> sqlite3.Row | None:
        cursor = self.db.conn.cursor()
        cursor.row_factory = sqlite3.Row  # read by column name, without sqlite-utils' per-row dicts
        return cursor.execute("SELECT * FROM orders WHERE client_order_id = ?", [cid]).fetchone()

    def has_open(self) -> bool:
        return bool(self.db.execute(f"SELECT 1 FROM orders WHERE {_IS_OPEN} LIMIT 1", OPEN_STATUSES).fetchone())

    def open_by_symbol(self) -> tuple[dict[str, int], dict[str, int]]:
        """(open orders per symbol, signed qty still to fill per symbol)."""
        by_symbol: Counter[str] = Counter()
        pending: Counter[str] = Counter()
        for row in self.db.query(f"SELECT symbol, side, qty, filled_qty FROM orders WHERE {_IS_OPEN}",
                                 OPEN_STATUSES):
            by_symbol[row["symbol"]] += 1
            pending[row["symbol"]] += Side(row["side"]).sign * (row["qty"] - (row["filled_qty"] or 0))
        return dict(by_symbol), dict(pending)

    def pending_by_strategy(self) -> dict[str, dict[str, int]]:
        """Signed qty still to fill per strategy (its client order ids' prefix) and symbol."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.query(f"SELECT client_order_id, symbol, side, qty, filled_qty FROM orders WHERE {_IS_OPEN}",
                                 OPEN_STATUSES):
            book = out.setdefault(strategy_of(row["client_order_id"]), {})
            book[row["symbol"]] = book.get(row["symbol"], 0) + Side(row["side"]).sign * (
                row["qty"] - (row["filled_qty"] or 0))
        return out

    def pending_since(self, cutoff: str, limit: int) -> list[dict[str, Any]]:
        """PENDING_SUBMIT rows created before ``cutoff`` (ISO text), oldest first."""
        return list(self.db.query(
            "SELECT * FROM orders WHERE status = ? AND created_at < ? ORDER BY created_at LIMIT ?",
            [OrderStatus.PENDING_SUBMIT.value, cutoff, limit]))

    def working(self) -> list[dict[str, Any]]:
        """Rows working at the broker (submitted or partially filled, with a broker id)."""
        return list(self.db.query(
            "SELECT * FROM orders WHERE status IN (?, ?) AND broker_order_id IS NOT NULL", list(_WORKING)))

    def working_submitted_before(self, cutoff: str) -> list[dict[str, Any]]:
        return list(self.db.query(
            "SELECT client_order_id, broker_order_id FROM orders WHERE status IN (?, ?) "
            "AND broker_order_id IS NOT NULL AND submitted_at < ?", [*_WORKING, cutoff]))

    def open_with_fill_qty(self) -> list[dict[str, Any]]:
        """Open rows, each with the quantity its journaled fills add up to (``journaled_fill_qty``)."""
        return list(self.db.query(
            "SELECT o.*, (SELECT coalesce(sum(f.qty), 0) FROM fills f WHERE f.client_order_id = o.client_order_id)"
            f" AS journaled_fill_qty FROM orders o WHERE o.{_IS_OPEN}", OPEN_STATUSES))

    def short_of_fills(self) -> list[dict[str, Any]]:
        """Orders whose journaled fills add up to less than their filled qty."""
        return list(self.db.query(
            "SELECT o.client_order_id, o.broker_order_id, o.filled_qty, coalesce(sum(f.qty), 0) AS got "
            "FROM orders o LEFT JOIN fills f ON f.client_order_id = o.client_order_id "
            "WHERE o.broker_order_id IS NOT NULL AND o.filled_qty > 0 "
            "GROUP BY o.client_order_id HAVING got < o.filled_qty"))

    def positions(self) -> dict[str, int]:
        return journal_positions(self.db)

    # --- writes ---------------------------------------------------------------------------------

    def insert_pending(self, requests: tuple[OrderSpec, ...],
                       signal_at: float = 0.0) -> tuple[list[OrderSpec], list[str]]:
        """Durable PENDING_SUBMIT rows, one transaction per batch: (the fresh ones, the client order
        ids already journaled -- duplicate intents, dropped). ``signal_at``: wall time (epoch) the
        bar behind these requests reached the bot; the signal's time (0: unknown)."""
        fresh, duplicates = [], []
        now = store.now_iso()
        signal = _epoch_iso(signal_at)
        with store.transaction(self.db):
            for r in requests:
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO orders (client_order_id, symbol, side, qty, type, time_in_force,"
                    " limit_price, stop_price, status, filled_qty, bar_ts, created_at, updated_at,"
                    " ref_price, signal_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                    [r.client_order_id, r.symbol, r.side.value, r.qty, r.type.value, r.time_in_force.value,
                     _text(r.limit_price), _text(r.stop_price), OrderStatus.PENDING_SUBMIT.value,
                     store.iso(r.bar_ts), now, now, repr(float(r.ref_price)) if r.ref_price else None, signal],
                )
                if cursor.rowcount == 1:
                    fresh.append(r)
                else:
                    duplicates.append(r.client_order_id)
        return fresh, duplicates

    def revive_never_submitted(self, cids: list[str]) -> set[str]:
        """Those of ``cids`` that reconciliation settled as never submitted, back to PENDING_SUBMIT
        (lock-step only: its clock has not moved, so the intent is still due; live, it is final)."""
        if not cids:
            return set()
        marks = ",".join("?" * len(cids))
        with store.transaction(self.db):
            rows = self.db.execute(
                f"SELECT client_order_id FROM orders WHERE status = ? AND client_order_id IN ({marks})",
                [OrderStatus.NEVER_SUBMITTED.value, *cids]).fetchall()
            revived = {r[0] for r in rows}
            for cid in revived:
                self.db.execute(
                    "UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE client_order_id = ?",
                    [OrderStatus.PENDING_SUBMIT.value, "lock-step: its tick ran again", store.now_iso(), cid])
        return revived

    def mark(self, cid: str, status: OrderStatus, reason: str) -> None:
        with store.transaction(self.db):
            self.db["orders"].update(cid, {"status": status.value, "reason": reason,
                                           "updated_at": store.now_iso()})

    def apply(self, order: BrokerOrder, submit: tuple[float, float, str] | None = None) -> OrderStatus | None:
        """Move our row to the broker's state; the row's old status when something changed, else
        None (not ours, nothing new, or not forward). ``submit``: (sent, acked, broker) of the
        submit call this order is the reply to: when it went out and came back (wall epoch) and the
        quote the broker gave with its reply (none: ``quote_source`` says ``none:<broker>``),
        journaled with it; the first submission's are kept (a retry after a lookup does not move them)."""
        return self.apply_many([(order, submit)])[0]

    def apply_many(self, items: Sequence[tuple[BrokerOrder, tuple[float, float, str] | None]],
                   ) -> list[OrderStatus | None]:
        """:meth:`apply` for several orders in one transaction: one ``SELECT … IN`` for their rows
        and one ``executemany`` per statement shape (a chunk of acks: two statements, not 200).
        Each order's old status or None, in order."""
        cids = [order.client_order_id for order, _ in items]
        if len(set(cids)) < len(cids):  # an order twice: each compared with what the one before wrote
            return [self.apply_many([item])[0] for item in items]
        found = store.rows_where_in(self.db.conn, "orders", "client_order_id", cids)
        rows = {row["client_order_id"]: row for row in found}
        olds: list[OrderStatus | None] = []
        updates: dict[str, list[list[Any]]] = {}
        for order, submit in items:
            row = rows.get(order.client_order_id)
            if row is None:
                olds.append(None)  # not ours (reconciliation decides about unknown orders)
                continue
            old = OrderStatus(row["status"])
            same = (old == order.status and row["filled_qty"] == order.filled_qty
                    and row["broker_order_id"] == order.broker_order_id and _same_terms(row, order))
            if same or not advances(old, order.status):
                olds.append(None)
                if submit is not None and row["sent_at"] is None:
                    updates.setdefault(_RECORD_SUBMIT, []).append(
                        [*_submit_values(order, *submit), order.client_order_id])
                continue
            # The terms follow the broker's too: an order amended in place (IB) has new ones.
            sql = _APPLY
            values = [order.broker_order_id, order.status.value, order.filled_qty, _text(order.avg_fill_price),
                      row["submitted_at"] or store.iso(order.submitted_at), store.now_iso(),
                      order.reason or row["reason"], order.qty, _text(order.limit_price), _text(order.stop_price)]
            if submit is not None and row["sent_at"] is None:  # the first submission's times and quote only
                sql = _APPLY_WITH_SUBMIT
                values += _submit_values(order, *submit)
            updates.setdefault(sql, []).append([*values, order.client_order_id])
            olds.append(old)
        if updates:
            with store.transaction(self.db):
                for sql, batch in updates.items():
                    self.db.conn.executemany(sql, batch)
        return olds

    # --- replace (orders/amend.py drives these) ---------------------------------------------------

    def head(self, cid: str) -> sqlite3.Row | None:
        """The row that works now for ``cid``: itself, or the end of its ``replaced_by`` chain."""
        row = self.row(cid)
        for _ in range(1000):  # a chain is as long as the replaces made: a cycle would be a bug
            if row is None or not row["replaced_by"]:
                return row
            row = self.row(row["replaced_by"])
        raise RuntimeError(f"{cid}: replaced_by chain does not end")

    def pending_replaces(self) -> list[sqlite3.Row]:
        cursor = self.db.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute("SELECT * FROM orders WHERE replace_state = ? ORDER BY updated_at",
                              [ReplaceState.PENDING]).fetchall()

    def begin_replace(self, cid: str, intent: dict[str, Any]) -> bool:
        """Commit the intent before the broker hears of it; False when one is already pending."""
        with store.transaction(self.db):
            cursor = self.db.execute(
                "UPDATE orders SET replace_state = ?, replace_intent = ?, updated_at = ? WHERE client_order_id = ?"
                " AND (replace_state IS NULL OR replace_state != ?)",
                [ReplaceState.PENDING, json.dumps(intent), store.now_iso(), cid, ReplaceState.PENDING])
        return cursor.rowcount == 1

    def settle_replace(self, cid: str, state: str, reason: str = "") -> bool:
        """Settle a pending intent (forward only); False when none was pending."""
        assert state != ReplaceState.PENDING, "use begin_replace"
        with store.transaction(self.db):
            intent = self.db.execute(
                "SELECT replace_intent FROM orders WHERE client_order_id = ? AND replace_state = ?",
                [cid, ReplaceState.PENDING]).fetchone()
            if intent is None:
                return False
            settled = {**json.loads(intent[0] or "{}"), "outcome": reason}
            self.db.execute("UPDATE orders SET replace_state = ?, replace_intent = ?, updated_at = ? "
                            "WHERE client_order_id = ?", [state, json.dumps(settled), store.now_iso(), cid])
        return True

    def record_replacement(self, old_cid: str, old: BrokerOrder | None, new: BrokerOrder) -> None:
        """The broker made ``new`` for the row ``old_cid`` (Alpaca's shape): in one commit the new
        order becomes a row linked by ``replaces``, the old one ends REPLACED (its final filled qty
        from ``old`` when known) with ``replaced_by``, and the intent is applied."""
        row = self.row(old_cid)
        assert row is not None
        now = store.now_iso()
        with store.transaction(self.db):
            self.db.execute(
                "INSERT OR IGNORE INTO orders (client_order_id, broker_order_id, symbol, side, qty, type,"
                " time_in_force, limit_price, stop_price, status, filled_qty, avg_fill_price, bar_ts, created_at,"
                " submitted_at, updated_at, reason, replaces)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [new.client_order_id, new.broker_order_id, row["symbol"], row["side"], new.qty, row["type"],
                 row["time_in_force"], _text(new.limit_price), _text(new.stop_price), new.status.value,
                 new.filled_qty, _text(new.avg_fill_price), row["bar_ts"], now, store.iso(new.submitted_at), now,
                 f"replaces {old_cid}", old_cid])
            filled = old.filled_qty if old is not None else row["filled_qty"]
            avg = _text(old.avg_fill_price) if old is not None else row["avg_fill_price"]
            self.db.execute(
                "UPDATE orders SET status = ?, replaced_by = ?, filled_qty = ?, avg_fill_price = ?, updated_at = ?,"
                " reason = ? WHERE client_order_id = ?",
                [OrderStatus.REPLACED.value, new.client_order_id, max(filled, row["filled_qty"] or 0), avg, now,
                 f"replaced by {new.client_order_id}", old_cid])
            self.settle_replace(old_cid, ReplaceState.APPLIED, f"replaced by {new.client_order_id}")

    def record_fills(self, fills: tuple[Fill, ...] | list[Fill]) -> list[Fill]:
        """Each fill of one of our orders, once; the ones that were new."""
        new: list[Fill] = []
        if not fills:
            return new
        with store.transaction(self.db):
            for f in fills:
                if self.row(f.client_order_id) is None:
                    continue  # a fill of an order we do not own
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO fills (fill_id, client_order_id, broker_order_id, symbol, side,"
                    " qty, price, ts, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [f.fill_id, f.client_order_id, f.broker_order_id, f.symbol, f.side.value, f.qty,
                     str(f.price), store.iso(f.ts), store.now_iso()],
                )
                if cursor.rowcount == 1:
                    new.append(f)
        return new

    def adopt(self, order: BrokerOrder) -> None:
        """Journal an order the broker has and we did not (reconciliation's ``adopt`` policy)."""
        now = store.now_iso()
        with store.transaction(self.db):
            self.db["orders"].insert({
                "client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id,
                "symbol": order.symbol, "side": order.side.value, "qty": order.qty, "type": order.type.value,
                "time_in_force": order.time_in_force.value, "limit_price": _text(order.limit_price),
                "stop_price": _text(order.stop_price), "status": order.status.value,
                "filled_qty": order.filled_qty, "avg_fill_price": _text(order.avg_fill_price),
                "created_at": now, "submitted_at": store.iso(order.submitted_at), "updated_at": now,
                "reason": "adopted at reconciliation",
            })

    def record_reconciliation(self, started: str, reason: str, report: dict[str, Any]) -> None:
        with store.transaction(self.db):
            self.db["reconciliations"].insert({"started_at": started, "finished_at": report["finished_at"],
                                               "reason": reason, "report": store.to_json(report)})


def journal_positions(db: Any) -> dict[str, int]:
    """What the journal says we hold: every fill, plus each difference a reconciliation adopted
    from the broker (the broker wins, and the journal records that it did)."""
    local: Counter[str] = Counter()
    for row in db.query("SELECT symbol, side, sum(qty) AS q FROM fills GROUP BY symbol, side"):
        local[row["symbol"]] += Side(row["side"]).sign * int(row["q"])
    for row in db.query("SELECT report FROM reconciliations"):
        for symbol, diff in json.loads(row["report"]).get("position_differences", {}).items():
            local[symbol] += int(diff["broker"]) - int(diff["local"])
    return {s: q for s, q in local.items() if q}


def spec_from_row(row: dict[str, Any]) -> OrderSpec:
    """The order a journal row describes (to submit a PENDING_SUBMIT row again)."""
    return OrderSpec(
        client_order_id=row["client_order_id"], symbol=row["symbol"], side=Side(row["side"]),
        qty=int(row["qty"]), type=OrderType(row["type"]), time_in_force=TimeInForce(row["time_in_force"]),
        limit_price=Decimal(row["limit_price"]) if row["limit_price"] else None,
        stop_price=Decimal(row["stop_price"]) if row["stop_price"] else None,
    )


_APPLY = ("UPDATE orders SET broker_order_id = ?, status = ?, filled_qty = ?, avg_fill_price = ?, submitted_at = ?,"
          " updated_at = ?, reason = ?, qty = ?, limit_price = ?, stop_price = ?")
_SUBMIT_COLUMNS = "sent_at = ?, acked_at = ?, bid_at_submit = ?, ask_at_submit = ?, quote_ts = ?, quote_source = ?"
_APPLY_WITH_SUBMIT = f"{_APPLY}, {_SUBMIT_COLUMNS} WHERE client_order_id = ?"
_APPLY += " WHERE client_order_id = ?"
_RECORD_SUBMIT = f"UPDATE orders SET {_SUBMIT_COLUMNS} WHERE client_order_id = ? AND sent_at IS NULL"


def _same_terms(row: Any, order: BrokerOrder) -> bool:
    def dec(text: str | None) -> Decimal | None:
        return None if text is None else Decimal(text)
    return (row["qty"] == order.qty and dec(row["limit_price"]) == order.limit_price
            and dec(row["stop_price"]) == order.stop_price)


def _submit_values(order: BrokerOrder, sent_at: float, acked_at: float, broker: str) -> list[str | None]:
    """sent_at, acked_at, bid, ask, quote_ts, quote_source for the journal."""
    q = order.quote
    if q is None:
        return [_epoch_iso(sent_at), _epoch_iso(acked_at), None, None, None, f"none:{broker}"]
    return [_epoch_iso(sent_at), _epoch_iso(acked_at), repr(q.bid), repr(q.ask), store.iso(q.ts), q.source]


def _epoch_iso(epoch: float) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
