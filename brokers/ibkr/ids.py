"""The adapter's own memory of IB identities, in ``<data dir>/ibkr.db`` (a data-dir file).

- the highest order id this data dir ever used: after every (re)connect the client is told to
  go on above it (``client.updateReqId(max + 1)``), because ``nextValidId`` can go backwards after
  a Gateway restart and hand out ids that were used before (LEAN IB issue #242);
- for every order: its client order id (= ``orderRef``), order id, permId once known (it is 0 right
  after ``placeOrder``), account and when it was submitted (simulated time). The row is written
  *before* ``placeOrder`` goes out, so an id is never used twice even if the process dies then.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

FILE = "ibkr.db"


@dataclass(frozen=True, slots=True)
class Placed:
    client_order_id: str
    order_id: int
    perm_id: int
    account: str
    submitted_at: datetime


class IbkrIds:
    """Thread-safe (one lock); ``path`` None keeps everything in memory (tools, tests)."""

    def __init__(self, data_dir: str | Path | None) -> None:
        target = ":memory:" if data_dir is None else str(Path(data_dir) / FILE)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(target, check_same_thread=False, timeout=30)
        # WAL, synchronous NORMAL: a commit survives the process being killed (what matters here)
        # without an fsync each time.
        self._conn.executescript(
            """PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
               CREATE TABLE IF NOT EXISTS orders (
                   client_order_id TEXT PRIMARY KEY,
                   order_id INTEGER NOT NULL,
                   perm_id INTEGER NOT NULL DEFAULT 0,
                   account TEXT NOT NULL,
                   submitted_at TEXT NOT NULL);
               CREATE INDEX IF NOT EXISTS orders_by_order_id ON orders (order_id);
               CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);""")
        self._conn.commit()

    def max_order_id(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'max_order_id'").fetchone()
            return int(row[0]) if row else 0

    def reserve(self, client_order_id: str, order_id: int, account: str, submitted_at: datetime) -> None:
        """Write-ahead: this id is spent for this order before anything is sent."""
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO orders (client_order_id, order_id, account, submitted_at) "
                               "VALUES (?, ?, ?, ?)", (client_order_id, order_id, account, submitted_at.isoformat()))
            self._conn.execute("INSERT INTO meta (key, value) VALUES ('max_order_id', ?) ON CONFLICT(key) DO "
                               "UPDATE SET value = max(CAST(value AS INTEGER), ?)", (str(order_id), order_id))

    def note_perm_id(self, client_order_id: str, perm_id: int) -> None:
        if perm_id:
            with self._lock, self._conn:
                self._conn.execute("UPDATE orders SET perm_id = ? WHERE client_order_id = ? AND perm_id = 0",
                                   (perm_id, client_order_id))

    def by_client_id(self, client_order_id: str) -> Placed | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM orders WHERE client_order_id = ?", (client_order_id,)).fetchone()
        return _placed(row)

    def by_order_id(self, order_id: int) -> Placed | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM orders WHERE order_id = ? ORDER BY submitted_at DESC LIMIT 1",
                                     (order_id,)).fetchone()
        return _placed(row)

    def account(self) -> str:
        """The account this data dir traded with ("" before the first connection)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'account'").fetchone()
            return str(row[0]) if row else ""

    def set_account(self, account: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('account', ?)", (account,))

    def close(self) -> None:
        self._conn.close()


def _placed(row: tuple[str, int, int, str, str] | None) -> Placed | None:
    if row is None:
        return None
    return Placed(row[0], row[1], row[2], row[3], datetime.fromisoformat(row[4]))
