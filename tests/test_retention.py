"""Retention rules (state/retention.py) on a real steadyhand.db: what each pass removes, what it never
touches, the daily equity roll-up, WAL checkpoints, the pacing, and the [retention] settings."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from steadyhand.actors.portfolio import PortfolioActor
from steadyhand.alerts import outbox
from steadyhand.config import ConfigError, RetentionSettings, parse_settings
from steadyhand.orders.journal import journal_positions
from steadyhand.state import retention, store

MON = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday; every time below is pinned to it
DAY = timedelta(days=1)


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = store.open_store(tmp_path / "var")
    yield database
    database.close()


def _count(db: Any, table: str, where: str = "1") -> int:
    return db.execute(f"SELECT count(*) FROM [{table}] WHERE {where}").fetchone()[0]


# --- equity: per-bar rows, then one row per day --------------------------------------------------------


def _equity_day(db: Any, day: datetime, values: list[str]) -> list[str]:
    """One per-bar row per minute from the day's 14:30 UTC open; returns their ts."""
    stamps = []
    with store.transaction(db):
        for i, value in enumerate(values):
            ts = store.iso(day + timedelta(hours=14, minutes=30 + i))
            db.execute("INSERT INTO equity (ts, equity, cash, realized, unrealized) VALUES (?, ?, ?, ?, ?)",
                       [ts, value, f"cash-{i}", f"realized-{i}", f"unrealized-{i}"])
            stamps.append(ts)
    return stamps


def _roll_all(db: Any, now: datetime, days: float) -> int:
    total = 0
    while handled := retention.roll_up_equity(db.conn, now, days):
        total += handled
    return total


def test_an_old_day_keeps_one_row_its_close_with_open_high_low_and_bar_count(db: Any) -> None:
    stamps = _equity_day(db, MON, ["100.00", "103.50", "98.25", "101.00"])
    _equity_day(db, MON + DAY, ["101.00", "102.00"])
    assert _roll_all(db, MON + 2 * DAY + timedelta(hours=12), days=1) == 4  # Monday only: Tuesday is < 1 day old
    monday = db.execute("SELECT ts, equity, cash, realized, unrealized, day_open, day_high, day_low, day_bars"
                        " FROM equity WHERE ts < ?", [store.iso(MON + DAY)]).fetchall()
    # the last row, as it was (the close: the run's P&L), plus the day's open, high, low and size
    assert monday == [(stamps[-1], "101.00", "cash-3", "realized-3", "unrealized-3", "100.00", "103.50", "98.25", 4)]
    assert _count(db, "equity", f"ts >= '{store.iso(MON + DAY)}' AND day_bars IS NULL") == 2  # Tuesday untouched


def test_rolling_up_twice_changes_nothing_and_a_late_row_folds_in(db: Any) -> None:
    _equity_day(db, MON, ["100.00", "90.00", "95.00"])
    now = MON + 3 * DAY
    _roll_all(db, now, days=1)
    once = db.execute("SELECT * FROM equity").fetchall()
    assert _roll_all(db, now, days=1) == 0
    assert db.execute("SELECT * FROM equity").fetchall() == once
    # a row of that day written after the roll-up (the day's open re-done, say) folds in, open kept
    db.execute("INSERT INTO equity (ts, equity, cash, realized, unrealized) VALUES (?, '120.00', 'c', 'r', 'u')",
               [store.iso(MON + timedelta(hours=20))])
    _roll_all(db, now, days=1)
    assert db.execute("SELECT equity, day_open, day_high, day_low, day_bars FROM equity").fetchall() == [
        ("120.00", "100.00", "120.00", "90.00", 4)]


def test_today_is_never_rolled_up_however_short_the_retention(db: Any) -> None:
    _equity_day(db, MON, ["100.00", "101.00"])
    _equity_day(db, MON + DAY, ["101.00", "102.00", "99.00"])
    now = MON + DAY + timedelta(hours=20)  # Tuesday: its rows are hours old, a 0.01-day retention is 14 min
    _roll_all(db, now, days=0.01)
    assert _count(db, "equity", f"ts >= '{store.iso(MON + DAY)}' AND day_bars IS NULL") == 3
    assert _count(db, "equity", f"ts < '{store.iso(MON + DAY)}'") == 1
    # what a restarted portfolio reads for today's start-of-day equity and peak (the breaker) is all there
    day = (MON + DAY).date().isoformat()
    assert db.execute("SELECT equity FROM equity WHERE ts >= ? ORDER BY ts LIMIT 1", [day]).fetchone()[0] == "101.00"
    assert db.execute("SELECT max(CAST(equity AS REAL)) FROM equity WHERE ts >= ?", [day]).fetchone()[0] == 102.0


def test_the_daily_summary_of_a_rolled_up_day_is_the_same(db: Any) -> None:
    _equity_day(db, MON, ["100.00", "104.00", "97.50"])
    session = (MON + timedelta(hours=14, minutes=30), MON + timedelta(hours=21))
    portfolio = SimpleNamespace(db=db)  # _summary reads only the database
    before = PortfolioActor._summary(portfolio, "2026-11-16", session)  # type: ignore[arg-type]
    _roll_all(db, MON + 3 * DAY, days=1)
    assert PortfolioActor._summary(portfolio, "2026-11-16", session) == before  # type: ignore[arg-type]
    assert before["pnl"] == "-2.50"


def test_zero_days_keeps_every_row(db: Any) -> None:
    _equity_day(db, MON, ["100.00", "101.00"])
    assert retention.roll_up_equity(db.conn, MON + 100 * DAY, days=0) == 0
    assert _count(db, "equity") == 2
    assert retention.cutoff(MON, 0) is None


# --- risk decisions and bad bars: by the run clock, oldest first, in batches ------------------------------


def _decision(db: Any, clock_ts: datetime | None, wall_ts: datetime = MON) -> None:
    db.execute("INSERT INTO risk_decisions (ts, clock_ts, client_order_id, symbol, side, qty, approved, reason)"
               " VALUES (?, ?, 'c', 'AAPL', 'buy', 1, 1, 'ok')", [store.iso(wall_ts), store.iso(clock_ts)])


def test_risk_decisions_older_than_the_retention_go_in_batches(db: Any) -> None:
    for i in range(5):
        _decision(db, MON + timedelta(hours=i))  # Monday 00:00 .. 04:00 of the run clock
    _decision(db, MON + 2 * DAY)
    now = MON + 2 * DAY + timedelta(hours=2)  # keep from Monday 02:00 on (wall clock: irrelevant)
    assert retention.prune_risk_decisions(db.conn, now, days=2, batch=1) == 1
    assert retention.prune_risk_decisions(db.conn, now, days=2, batch=5) == 1
    assert retention.prune_risk_decisions(db.conn, now, days=2) == 0
    kept = [r[0] for r in db.execute("SELECT clock_ts FROM risk_decisions ORDER BY id")]
    assert kept == [store.iso(MON + timedelta(hours=h)) for h in (2, 3, 4)] + [store.iso(MON + 2 * DAY)]


def test_pruning_stops_at_the_first_row_young_enough(db: Any) -> None:
    # journal order is time order; a row out of order holds back the ones after it (no table scan)
    _decision(db, MON)
    _decision(db, MON + 5 * DAY)
    _decision(db, MON + timedelta(hours=1))
    assert retention.prune_risk_decisions(db.conn, MON + 5 * DAY, days=1) == 1
    assert _count(db, "risk_decisions") == 2


def test_rows_from_before_clock_ts_are_aged_by_their_wall_stamp(db: Any) -> None:
    _decision(db, None, wall_ts=MON)
    _decision(db, None, wall_ts=MON + 3 * DAY)
    assert retention.prune_risk_decisions(db.conn, MON + 3 * DAY, days=1) == 1


def test_bad_bars_older_than_the_retention_go(db: Any) -> None:
    for clock_ts in (MON, MON + timedelta(hours=1), MON + 3 * DAY):
        db.execute("INSERT INTO bad_bars (recorded_at, clock_ts, symbol, bar_ts, reason, raw)"
                   " VALUES (?, ?, 'AAPL', ?, 'nan', '{}')", [store.now_iso(), store.iso(clock_ts), store.iso(MON)])
    assert retention.prune_bad_bars(db.conn, MON + 3 * DAY, days=1) == 2
    assert retention.prune_bad_bars(db.conn, MON + 3 * DAY, days=0) == 0
    assert _count(db, "bad_bars") == 1


def test_journaled_bars_older_than_the_retention_go_by_bar_time(db: Any) -> None:
    for run_id, ts in ((1, MON), (1, MON + timedelta(hours=1)), (2, MON + 3 * DAY)):
        db.execute("INSERT INTO bars (run_id, symbol, ts, open, high, low, close, volume, kind)"
                   " VALUES (?, 'AAPL', ?, 1, 1, 1, 1, 1, 'live')", [run_id, store.iso(ts)])
    assert retention.prune_bars(db.conn, MON + 3 * DAY, days=1, batch=1) == 1  # one batch at a time
    assert retention.prune_bars(db.conn, MON + 3 * DAY, days=1) == 1
    assert retention.prune_bars(db.conn, MON + 3 * DAY, days=0) == 0  # 0 keeps everything
    assert db.execute("SELECT run_id, ts FROM bars").fetchall() == [(2, store.iso(MON + 3 * DAY))]


# --- alerts: only what nobody waits for ----------------------------------------------------------------


def _alert(db: Any, key: str, severity: str, delivered: bool = True, acked: bool = False,
           last_error: str | None = None, clock_ts: datetime = MON) -> None:
    db.execute("INSERT INTO alerts (key, severity, title, body, source, created_at, delivered_at, attempts,"
               " suppressed, last_error, acked_at, clock_ts) VALUES (?, ?, 't', 'b', 's', ?, ?, 1, 0, ?, ?, ?)",
               [key, severity, store.iso(MON), store.iso(MON) if delivered else None, last_error,
                store.iso(MON) if acked else None, store.iso(clock_ts)])


def test_alerts_never_an_undelivered_one_nor_an_unacknowledged_critical(db: Any) -> None:
    _alert(db, "delivered-info", "info")
    _alert(db, "expired", "high", delivered=False, last_error="expired: not delivered within 86400s")
    _alert(db, "acked-critical", "critical", acked=True)
    _alert(db, "reminder:3", "critical")  # a delivered reminder: a copy, its original carries the ack
    _alert(db, "pending", "high", delivered=False, last_error="connection refused")
    _alert(db, "unacked-critical", "critical")
    _alert(db, "unacked-critical-expired", "critical", delivered=False, last_error="expired: ...")
    _alert(db, "pending-reminder", "critical", delivered=False)
    _alert(db, "young", "info", clock_ts=MON + 10 * DAY)
    assert retention.prune_alerts(db.conn, MON + 10 * DAY, days=1) == 4
    kept = {r[0] for r in db.execute("SELECT key FROM alerts")}
    assert kept == {"pending", "unacked-critical", "unacked-critical-expired", "pending-reminder", "young"}
    assert retention.EXPIRED_PREFIX == outbox.EXPIRED_PREFIX  # the outbox's mark of a given-up alert


# --- what retention never touches ---------------------------------------------------------------------


def test_a_pass_with_the_shortest_retention_never_deletes_the_journal_or_the_audit(db: Any) -> None:
    old = store.iso(MON)
    with store.transaction(db):
        db["orders"].insert({"client_order_id": "o1", "broker_order_id": "b1", "symbol": "AAPL", "side": "buy",
                             "qty": 10, "type": "market", "time_in_force": "day", "status": "filled",
                             "filled_qty": 10, "bar_ts": old, "created_at": old, "updated_at": old})
        db["fills"].insert({"fill_id": "f1", "client_order_id": "o1", "broker_order_id": "b1", "symbol": "AAPL",
                            "side": "buy", "qty": 10, "price": "100", "ts": old, "recorded_at": old})
        db["reconciliations"].insert({"started_at": old, "finished_at": old, "reason": "start", "report": store.to_json(
            {"position_differences": {"MSFT": {"local": 0, "broker": 5}}})})
        db["operator_commands"].insert({"command_id": "c1", "name": "halt", "args": "{}", "operator": "me",
                                        "issued_at": 0.0, "received_at": old, "status": "ok", "result": "{}"})
        db["restarts"].insert({"ts": old, "actor": "oms", "event": "restarted", "detail": ""})
    store.set_control(db, trading_state="active")
    store.set_risk_state(db, session_day="2026-11-16")
    store.set_portfolio_state(db, summarized_day="2026-11-16", fills_applied_through="1")
    before = {t: db.execute(f"SELECT * FROM [{t}]").fetchall() for t in db.table_names()
              if t not in ("equity", "risk_decisions", "bad_bars", "bars", "alerts")}
    positions = journal_positions(db)
    now = MON + 400 * DAY
    for step in (retention.roll_up_equity, retention.prune_risk_decisions, retention.prune_bad_bars,
                 retention.prune_bars, retention.prune_alerts):
        while step(db.conn, now, 0.0001):
            pass
    assert {t: db.execute(f"SELECT * FROM [{t}]").fetchall() for t in before} == before
    assert journal_positions(db) == positions == {"AAPL": 10, "MSFT": 5}  # what verify compares


# --- WAL checkpoints ------------------------------------------------------------------------------------


def _fill_wal(db: Any, rows: int = 2000) -> None:
    with store.transaction(db):
        for i in range(rows):
            _decision(db, MON + timedelta(seconds=i))


def test_a_checkpoint_empties_the_wal_file(db: Any, tmp_path: Path) -> None:
    path = tmp_path / "var" / "steadyhand.db"
    db.execute("PRAGMA wal_autocheckpoint = 0")  # let the WAL grow, as a busy run's can between checkpoints
    _fill_wal(db)
    assert Path(f"{path}-wal").stat().st_size > 100_000
    result = retention.checkpoint(path)
    assert result is not None and result.busy == 0  # (TRUNCATE reports the frames left: 0)
    assert result.wal_bytes == 0 == Path(f"{path}-wal").stat().st_size
    assert _count(db, "risk_decisions") == 2000  # nothing lost: it is all in the database file now
    assert retention.checkpoint(tmp_path / "nothing.db") is None


def test_a_checkpoint_never_waits_for_a_reader_or_a_writer(db: Any, tmp_path: Path) -> None:
    path = tmp_path / "var" / "steadyhand.db"
    db.execute("PRAGMA wal_autocheckpoint = 0")
    _fill_wal(db)
    reader = sqlite3.connect(str(path), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM risk_decisions").fetchone()  # holds its snapshot
        _fill_wal(db, 10)  # frames the reader's snapshot does not see
        started = time.monotonic()
        result = retention.checkpoint(path)
        assert time.monotonic() - started < store.BUSY_TIMEOUT_MS / 1000 / 2  # did not sit in a busy wait
        assert result is not None and result.busy == 1 and result.wal_bytes > 0
        reader.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")  # a writer in the middle of a transaction
        result = retention.checkpoint(path)
        assert result is not None and result.busy == 1
        db.execute("COMMIT")
    finally:
        reader.close()
    assert retention.checkpoint(path).wal_bytes == 0  # type: ignore[union-attr]


def test_store_connections_cap_the_wal_after_a_checkpoint(db: Any) -> None:
    assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == store.WAL_SIZE_LIMIT_BYTES


# --- when a pass runs -----------------------------------------------------------------------------------


def test_a_pass_is_due_hourly_while_closed_and_daily_regardless() -> None:
    last = MON + timedelta(hours=22)
    assert not retention.pass_due(last, last + timedelta(minutes=59), market_open=False)
    assert retention.pass_due(last, last + timedelta(hours=1), market_open=False)
    assert not retention.pass_due(last, last + timedelta(hours=20), market_open=True)
    assert retention.pass_due(last, last + DAY, market_open=True)


# --- the [retention] settings ---------------------------------------------------------------------------


def test_retention_settings_defaults_and_validation() -> None:
    settings = parse_settings({"retention": {"equity_bars_days": 7, "alerts_days": 0.5, "checkpoint_interval_s": 0}})
    assert settings.retention == RetentionSettings(equity_bars_days=7.0, alerts_days=0.5, checkpoint_interval_s=0.0)
    assert parse_settings({}).retention == RetentionSettings()
    for table, key in (({"equity_bar_days": 1}, "retention.equity_bar_days: unknown setting"),
                       ({"bad_bars_days": "week"}, "retention.bad_bars_days: must be a number"),
                       ({"risk_decisions_days": -1}, "retention.risk_decisions_days: must be a non-negative"),
                       ({"checkpoint_interval_s": 0.01}, "retention.checkpoint_interval_s: must be 0 (off) or")):
        with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
            parse_settings({"retention": table})
    with pytest.raises(ConfigError, match=r"retention: must be a table \[retention\]"):
        parse_settings({"retention": 5})


def test_equity_values_keep_their_text(db: Any) -> None:
    # equity is stored as Decimal text; high/low must come back exactly as written (no float round trip)
    _equity_day(db, MON, ["100000.01", "100000.10", "99999.99"])
    _roll_all(db, MON + 3 * DAY, days=1)
    high, low = db.execute("SELECT day_high, day_low FROM equity").fetchone()
    assert (Decimal(high), Decimal(low)) == (Decimal("100000.10"), Decimal("99999.99"))
