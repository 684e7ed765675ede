"""``exchange.db``: its schema (numbered migrations), how it is opened, and its ``meta`` table.

Several processes open the same file at once (the bot's OMS, ``steadyhand verify``, the exchange
server), so opening checks and applies migrations inside one transaction. Times are stored as
fixed-width UTC ISO text, so the text sorts like the time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from steadyhand.state.store import SchemaTooNew, connect, transaction

EXCHANGE_DB = "exchange.db"  # in the data dir, next to steadyhand.db


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


def _m3_replace_links(conn: sqlite3.Connection) -> None:
    # A replace (Alpaca's shape) ends the old order REPLACED and links both ways by broker order id.
    conn.execute("ALTER TABLE orders ADD COLUMN replaces TEXT")
    conn.execute("ALTER TABLE orders ADD COLUMN replaced_by TEXT")


# Numbered migrations: append, never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "order book, fills, positions, change log", _m1_book),
    (2, "log of submissions that reused a client order id", _m2_duplicate_submits),
    (3, "replace links between orders", _m3_replace_links),
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
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, iso(wall_now()))
                )
    return db


# ---------------------------------------------------------------------------------------------
# Times and the meta table
# ---------------------------------------------------------------------------------------------


def wall_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    # Fixed width (always microseconds, always UTC), so the text sorts like the time.
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: sqlite3.Connection, **values: str) -> None:
    for key, value in values.items():
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
