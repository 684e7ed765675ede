"""What a Gateway remembers about orders that the book does not: IB order ids, client ids, permIds.

``<data dir>/tws.db`` (a data-dir file of the TWS face): one row per book order the face has shown
an API client, with the order id and client id it was placed with (0 and 0 for orders placed
elsewhere, e.g. through the Alpaca face: TWS shows such orders with order id 0), its permId (unique
for ever) and its ``orderRef``. ``epoch`` counts Gateway restarts: order ids are only looked up
within the current one, which is how a restarted Gateway can hand out ids it used before (its
``nextValidId`` goes backwards, LEAN IB issue #242) without mixing the new orders up with the old.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

FILE = "tws.db"
FIRST_PERM_ID = 1_500_000_001  # permIds of real accounts are large numbers too


@dataclass(frozen=True, slots=True)
class IdRow:
    broker_order_id: str
    perm_id: int
    order_id: int
    client_id: int
    epoch: int
    order_ref: str


class TwsIds:
    """The id table; used from one thread (the face's book thread)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.conn = sqlite3.connect(str(Path(data_dir) / FILE), timeout=30)
        # WAL, synchronous NORMAL: a commit survives the process being killed, without an fsync each.
        self.conn.executescript(
            """PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
               CREATE TABLE IF NOT EXISTS orders (
                   broker_order_id TEXT PRIMARY KEY,
                   perm_id INTEGER NOT NULL UNIQUE,
                   order_id INTEGER NOT NULL,
                   client_id INTEGER NOT NULL,
                   epoch INTEGER NOT NULL,
                   order_ref TEXT NOT NULL);
               CREATE INDEX IF NOT EXISTS orders_by_id ON orders (epoch, client_id, order_id);
               CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);""")
        self.conn.commit()

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                          (key, value, value))
        self.conn.commit()

    @property
    def epoch(self) -> int:
        return self._meta("epoch", 0)

    def restart(self) -> None:
        """A Gateway restart: order ids used so far are forgotten (permIds are not)."""
        self._set_meta("epoch", self.epoch + 1)

    def next_perm_id(self) -> int:
        row = self.conn.execute("SELECT max(perm_id) FROM orders").fetchone()
        return max(FIRST_PERM_ID, int(row[0] or 0) + 1, self._meta("perm_floor", 0))

    def reserve_perm_id(self) -> int:
        """A permId for an order that never reaches the book (rejected): never handed out again."""
        perm = self.next_perm_id()
        self._set_meta("perm_floor", perm + 1)
        return perm

    def next_valid_id(self, client_id: int) -> int:
        row = self.conn.execute("SELECT max(order_id) FROM orders WHERE epoch = ? AND client_id = ?",
                                (self.epoch, client_id)).fetchone()
        return max(1, int(row[0] or 0) + 1, self._meta(f"next_id:{self.epoch}:{client_id}", 0))

    def note_used(self, client_id: int, order_id: int) -> None:
        """An order id spent without a book order (a rejection) still counts as used."""
        key = f"next_id:{self.epoch}:{client_id}"
        self._set_meta(key, max(self._meta(key, 0), order_id + 1))

    def by_order_id(self, client_id: int, order_id: int) -> IdRow | None:
        row = self.conn.execute("SELECT * FROM orders WHERE epoch = ? AND client_id = ? AND order_id = ?",
                                (self.epoch, client_id, order_id)).fetchone()
        return IdRow(*row) if row else None

    def get(self, broker_order_id: str) -> IdRow | None:
        row = self.conn.execute("SELECT * FROM orders WHERE broker_order_id = ?", (broker_order_id,)).fetchone()
        return IdRow(*row) if row else None

    def add(self, broker_order_id: str, perm_id: int, order_id: int, client_id: int, order_ref: str) -> IdRow:
        row = IdRow(broker_order_id, perm_id, order_id, client_id, self.epoch, order_ref)
        self.conn.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", (
            row.broker_order_id, row.perm_id, row.order_id, row.client_id, row.epoch, row.order_ref))
        self.conn.commit()
        return row

    def ensure(self, broker_order_id: str, order_ref: str) -> IdRow:
        """The ids of a book order, giving one placed elsewhere a permId on first sight."""
        found = self.get(broker_order_id)
        return found if found else self.add(broker_order_id, self.next_perm_id(), 0, 0, order_ref)

    def close(self) -> None:
        self.conn.close()
