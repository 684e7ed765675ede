"""The run ledger: one row of ``runs`` per ``steadyhand run`` (the supervisor is its only writer).

A run opens a row with ``ended_by = 'running'`` and refreshes it now and then (end equity, fills,
``last_seen_at``), so a run that dies without a word (SIGKILL, power cut) still leaves its best-known
end. The next start turns every row it finds still 'running' into 'crash' before it opens its own.
A stop closes the row as 'stop', or 'halt' when the bot was HALTED when it stopped.

Equity comes from the portfolio's ``equity`` table (one row per bar tick, on the run clock), fills
from the OMS's ``fills`` table (their ``recorded_at`` wall stamps fall inside the run); both are
only read here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from steadyhand.state import store

ENDINGS = ("stop", "crash", "halt", "running")


def mark_crashed(db: Any) -> list[int]:
    """Close every row still 'running' (its run died without closing it) as 'crash'; their ids."""
    ids = [int(r[0]) for r in db.execute("SELECT run_id FROM runs WHERE ended_by = 'running'").fetchall()]
    with store.transaction(db):
        for run_id in ids:
            # Nothing of a newer run has been written yet (this runs before any actor starts), so the
            # latest equity row and every fill since its start are the dead run's own; its end is
            # the last sign of life it left in the journal.
            _refresh(db, run_id, until=_last_sign_of_life(db, run_id))
            db.execute("UPDATE runs SET ended_by = 'crash', ended_at = last_seen_at WHERE run_id = ?", [run_id])
    return ids


def open_run(db: Any, broker: str, strategies: Sequence[str], clock_now: str, pid: int,
             config: dict[str, Any] | None = None) -> int:
    """A new 'running' row; its id. ``config``: what a backtest of this run needs (strategy settings)."""
    now = store.now_iso()
    with store.transaction(db):
        cursor = db.execute(
            "INSERT INTO runs (started_at, last_seen_at, broker, strategies, fills, ended_by, clock_start,"
            " clock_end, pid, config) VALUES (?, ?, ?, ?, 0, 'running', ?, ?, ?, ?)",
            [now, now, broker, json.dumps(list(strategies)), clock_now, clock_now, pid,
             store.to_json(config or {})])
        run_id = int(cursor.lastrowid)
        _refresh(db, run_id)
    return run_id


def refresh(db: Any, run_id: int, clock_now: str | None = None) -> None:
    """Bring a running row's end equity, fills and last-seen time up to date."""
    with store.transaction(db):
        if clock_now is not None:
            db.execute("UPDATE runs SET clock_end = ? WHERE run_id = ?", [clock_now, run_id])
        _refresh(db, run_id)


def close_run(db: Any, run_id: int, ended_by: str, clock_now: str | None = None) -> None:
    """The run stopped: its final figures and how it ended ('stop' or 'halt')."""
    if ended_by not in ENDINGS:
        raise ValueError(f"ended_by must be one of {ENDINGS}, got {ended_by!r}")
    with store.transaction(db):
        refresh(db, run_id, clock_now)
        db.execute("UPDATE runs SET ended_by = ?, ended_at = last_seen_at WHERE run_id = ?", [ended_by, run_id])


def _last_sign_of_life(db: Any, run_id: int) -> str:
    """The latest wall stamp a run wrote: its last refresh, or a later order, fill or risk decision."""
    started, seen = db.execute("SELECT started_at, last_seen_at FROM runs WHERE run_id = ?", [run_id]).fetchone()
    stamps = [seen or started]
    for sql in ("SELECT max(updated_at) FROM orders WHERE updated_at >= ?",
                "SELECT max(recorded_at) FROM fills WHERE recorded_at >= ?",
                "SELECT max(ts) FROM risk_decisions WHERE ts >= ?"):
        value = db.execute(sql, [started]).fetchone()[0]
        if value:
            stamps.append(value)
    return max(stamps)


def _refresh(db: Any, run_id: int, until: str | None = None) -> None:
    """End equity (the latest equity row), fills and last-seen time up to ``until`` (default now)."""
    row = db.execute("SELECT started_at, clock_start, start_equity FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        return
    started_at, clock_start, start_equity = row
    now = until or store.now_iso()
    if start_equity is None:
        start_equity = _first_equity(db, clock_start)
    fills = db.execute("SELECT count(*) FROM fills WHERE recorded_at >= ? AND recorded_at <= ?",
                       [started_at, now]).fetchone()[0]
    last = db.execute("SELECT equity FROM equity ORDER BY ts DESC LIMIT 1").fetchone()
    db.execute("UPDATE runs SET start_equity = ?, end_equity = coalesce(?, end_equity), fills = ?,"
               " last_seen_at = ? WHERE run_id = ?",
               [start_equity, last[0] if last else None, fills, now, run_id])


def _first_equity(db: Any, clock_start: str | None) -> str | None:
    """The run's first equity row (on or after its clock's start), else the last one before it."""
    row = db.execute("SELECT equity FROM equity WHERE ts >= ? ORDER BY ts LIMIT 1", [clock_start or ""]).fetchone()
    if row is None:
        row = db.execute("SELECT equity FROM equity ORDER BY ts DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def current_run_id(db: Any) -> int | None:
    """The newest run's id (what the feed stamps its journaled bars with), or None."""
    if "runs" not in db.table_names():
        return None
    row = db.execute("SELECT max(run_id) FROM runs").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def list_runs(db: Any, alive: bool) -> list[dict[str, Any]]:
    """Every run, oldest first, as ``steadyhand runs --json`` prints it (README: the promised keys).

    ``alive``: whether a bot runs on this data dir now. A row still 'running' while none does is a
    crash the next start will record; it is shown as 'crash' already."""
    if "runs" not in db.table_names():
        return []
    rows = list(db.query("SELECT * FROM runs ORDER BY run_id"))
    newest = rows[-1]["run_id"] if rows else None
    out = []
    for r in rows:
        ended_by = r["ended_by"]
        if ended_by == "running" and not (alive and r["run_id"] == newest):
            ended_by = "crash"
        start = _num(r["start_equity"])
        end = _num(r["end_equity"])
        out.append({
            "run_id": r["run_id"], "started_at": r["started_at"],
            "ended_at": None if ended_by == "running" else (r["ended_at"] or r["last_seen_at"]),
            "broker": r["broker"], "strategies": json.loads(r["strategies"] or "[]"),
            "start_equity": start, "end_equity": end,
            "total_pnl": None if start is None or end is None else round(end - start, 2),
            "fills": r["fills"] or 0, "ended_by": ended_by,
            "clock_start": r["clock_start"], "clock_end": r["clock_end"],
        })
    return out


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)
