"""Retention: bounded disk over weeks. Pruning, the daily equity roll-up and WAL checkpoints.

Pure functions on a ``sqlite3.Connection`` of ``steadyhand.db``; each is run by the owner of its
table (``store.TABLE_OWNERS``), in small batches (one short transaction each, ``BATCH_ROWS`` rows),
so an actor's mailbox is never held up for long. ``SteadyActor.start_retention`` does the pacing.

Ages are measured on the run's clock (simulated time on the simulated clock: that is what the data
grows with). A ``days`` of 0 keeps everything. What each table keeps, and why:

- ``equity`` (portfolio): every per-bar row of the last ``equity_bars_days``; an older day keeps
  one row, its last (equity at the close, cash, realized, unrealized: the run's P&L), which also
  carries the day's ``day_open``/``day_high``/``day_low`` and ``day_bars``. The current day is never
  rolled up (its first row and peak are the breaker's start-of-day equity and drawdown peak after a
  restart), and the daily summary reads a rolled-up day's open from ``day_open``.
- ``risk_decisions`` (risk), ``bad_bars`` (feed): rows older than their ``*_days``, by ``clock_ts``
  (rows written before it existed: by their wall-clock stamp). They are an audit trail; nothing
  decides from them. The table is walked oldest id first and pruning stops at the first row that
  is young enough, so a pass costs one batch, never a table scan.
- ``alerts`` (alerter): delivered or expired rows older than ``alerts_days``. Never a row still
  waiting for delivery, never an unacknowledged CRITICAL alert (its reminders go on until ``ack``;
  its reminder rows, copies, may go once delivered). Deduplication only looks at the last row of a
  key within the cooldown, far younger than any retention.
- Never pruned: ``orders`` and ``fills`` (the journal: reconciliation, ``verify``, the portfolio's
  fill cursor, the daily summary), ``reconciliations`` (``verify`` adds up the position differences
  they adopted), ``operator_commands`` (idempotency by command id, the audit), ``restarts``,
  ``control``, ``actors``, ``positions``, the ``*_state`` tables; nor ``exchange.db``'s orders and
  fills (the broker's records, which ``verify`` compares with the journal).

Deleted pages are reused by SQLite, so the file stops growing rather than shrinking.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from steadyhand.state.store import iso

BATCH_ROWS = 500  # rows per transaction: 2-50 ms measured (on 2 cores under a load of 10)
EXPIRED_PREFIX = "expired: "  # alerts.outbox.EXPIRED_PREFIX (an undelivered alert given up on)


def cutoff(now: datetime, days: float) -> str | None:
    """The ISO text of the oldest time still kept ``days`` before ``now``; None: keep everything."""
    if days <= 0:
        return None
    return iso(now - timedelta(days=days))


# --- equity: per-bar rows rolled up to one row per day ---------------------------------------------


def equity_days_to_roll(conn: sqlite3.Connection, before_day: str, limit: int = 1) -> list[str]:
    """Days (``YYYY-MM-DD``, oldest first) before ``before_day`` that still have per-bar rows."""
    rows = conn.execute("SELECT DISTINCT substr(ts, 1, 10) AS day FROM equity WHERE ts < ? AND day_bars IS NULL"
                        " ORDER BY day LIMIT ?", (before_day, limit)).fetchall()
    return [r[0] for r in rows]


def roll_up_equity_day(conn: sqlite3.Connection, day: str) -> int:
    """Fold every row of ``day`` into its last one; returns how many rows it folded (the last one
    included). Idempotent: a day already rolled up (plus any later rows) folds into one row again."""
    next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
    with _transaction(conn):
        rows = conn.execute("SELECT ts, equity, day_open, day_high, day_low, day_bars FROM equity"
                            " WHERE ts >= ? AND ts < ? ORDER BY ts", (day, next_day)).fetchall()
        if not rows:
            return 0
        high = max(Decimal(h or equity) for _, equity, _, h, _, _ in rows)
        low = min(Decimal(lo or equity) for _, equity, _, _, lo, _ in rows)
        day_open = rows[0][2] or rows[0][1]  # a row rolled up before carries the day's true open
        bars = sum(int(n or 1) for *_, n in rows)
        last_ts = rows[-1][0]
        conn.execute("DELETE FROM equity WHERE ts >= ? AND ts < ?", (day, last_ts))
        conn.execute("UPDATE equity SET day_open = ?, day_high = ?, day_low = ?, day_bars = ? WHERE ts = ?",
                     (day_open, str(high), str(low), bars, last_ts))
    return len(rows)


def roll_up_equity(conn: sqlite3.Connection, now: datetime, days: float) -> int:
    """One batch: roll up the oldest day whose every row is older than ``days`` (never ``now``'s
    own day). Returns the rows folded; 0 when nothing is left to roll up."""
    keep_from = cutoff(now, days)
    if keep_from is None:
        return 0
    # A day rolls up once its end is older than the cutoff: all its rows are past keeping.
    before_day = min(keep_from[:10], iso(now)[:10])
    days_left = equity_days_to_roll(conn, before_day)
    return roll_up_equity_day(conn, days_left[0]) if days_left else 0


# --- journals aged by the run clock: risk decisions, bad bars --------------------------------------


def prune_oldest(conn: sqlite3.Connection, table: str, stamp: str, keep_from: str | None,
                 batch: int = BATCH_ROWS) -> int:
    """Delete the oldest rows of ``table`` (by id) whose ``stamp`` (an SQL expression) is before
    ``keep_from``, stopping at the first row that is not: at most ``batch`` rows, one transaction."""
    if keep_from is None:
        return 0
    rows = conn.execute(f"SELECT id, {stamp} FROM [{table}] ORDER BY id LIMIT ?", (batch,)).fetchall()
    last_old = None
    for row_id, ts in rows:
        if ts is None or ts >= keep_from:
            break
        last_old = row_id
    if last_old is None:
        return 0
    with _transaction(conn):
        return conn.execute(f"DELETE FROM [{table}] WHERE id <= ?", (last_old,)).rowcount


def prune_risk_decisions(conn: sqlite3.Connection, now: datetime, days: float, batch: int = BATCH_ROWS) -> int:
    """Risk decisions older than ``days`` of the run clock (one batch)."""
    return prune_oldest(conn, "risk_decisions", "coalesce(clock_ts, ts)", cutoff(now, days), batch)


def prune_bad_bars(conn: sqlite3.Connection, now: datetime, days: float, batch: int = BATCH_ROWS) -> int:
    """Rejected bars journaled more than ``days`` ago on the run clock (one batch)."""
    return prune_oldest(conn, "bad_bars", "coalesce(clock_ts, recorded_at)", cutoff(now, days), batch)


def prune_bars(conn: sqlite3.Connection, now: datetime, days: float, batch: int = BATCH_ROWS) -> int:
    """Journaled bars (the parity report's input) whose bar time is more than ``days`` of the run
    clock ago (one batch, oldest written first: the table has no id, its rowid is the order)."""
    keep_from = cutoff(now, days)
    if keep_from is None:
        return 0
    with _transaction(conn):
        return conn.execute(
            "DELETE FROM bars WHERE rowid IN (SELECT rowid FROM bars WHERE ts < ? ORDER BY rowid LIMIT ?)",
            (keep_from, batch)).rowcount


# --- alerts: only what nobody waits for --------------------------------------------------------------

# Done with: delivered, or given up on (expired). Kept regardless: an unacknowledged CRITICAL alert
# (not a reminder row: reminders are copies; the original carries the acknowledgement).
PRUNABLE_ALERT = ("(delivered_at IS NOT NULL OR substr(coalesce(last_error, ''), 1, ?) = ?)"
                  " AND NOT (severity = 'critical' AND acked_at IS NULL AND substr(key, 1, 9) != 'reminder:')")


def prune_alerts(conn: sqlite3.Connection, now: datetime, days: float, batch: int = BATCH_ROWS) -> int:
    """Delivered or expired alerts older than ``days`` of the run clock, except unacknowledged
    CRITICAL ones (one batch). The outbox is small: a plain filtered delete."""
    keep_from = cutoff(now, days)
    if keep_from is None:
        return 0
    with _transaction(conn):
        return conn.execute(
            f"DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE coalesce(clock_ts, created_at) < ?"
            f" AND {PRUNABLE_ALERT} ORDER BY id LIMIT ?)",
            (keep_from, len(EXPIRED_PREFIX), EXPIRED_PREFIX, batch)).rowcount


# --- when a pass runs ---------------------------------------------------------------------------------

PASS_EVERY = timedelta(hours=1)  # of the run clock
PASS_AT_LEAST_EVERY = timedelta(days=1)  # even if the market never closes


def pass_due(last: datetime, now: datetime, market_open: bool) -> bool:
    """Is a retention pass due? Once an hour of the run clock, while the market is closed (no bars,
    no signals, no orders: the hot path is idle, and on the simulated clock an hour of data is
    what grows), and at least once a day whatever the market does."""
    elapsed = now - last
    return elapsed >= PASS_AT_LEAST_EVERY or (elapsed >= PASS_EVERY and not market_open)


# --- WAL checkpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What ``PRAGMA wal_checkpoint`` reported: busy (1: could not finish, readers or a writer were
    active), frames in the WAL, frames copied into the database; and the -wal size afterwards."""

    busy: int
    wal_frames: int
    checkpointed: int
    wal_bytes: int


def checkpoint(db_path: str | Path, mode: str = "TRUNCATE") -> Checkpoint | None:
    """Checkpoint the WAL of ``db_path`` and (TRUNCATE) empty the -wal file; None if no database.

    Its own connection with no busy timeout: when a writer or a reader is active it does what it can
    without waiting (as PASSIVE does) and says busy, so it never holds up an actor's commit for
    more than the copy itself; the next checkpoint finishes the job."""
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise ValueError(f"unknown checkpoint mode {mode!r}")
    path = Path(db_path)
    if not path.exists():
        return None
    conn = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return Checkpoint(busy, frames, done, wal.stat().st_size if wal.exists() else 0)


# --- small helpers ---------------------------------------------------------------------------------------


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT on a plain autocommit connection (or join the open transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, *_: object) -> None:
        if self.outer:
            self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


Step = Callable[[datetime], int]  # one batch at the run clock's time; returns the rows it handled (0: done)
