"""Retention in a real ``steadyhand run``: at --speed 3000 with a 6-hour retention, the first day's per-bar
equity rows are rolled up to one row and its risk decisions and alerts pruned while the bot runs on,
each by its own table's owner; the WAL is emptied; the journal is whole and ``verify`` is ok."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import poll
from steadyhand.runtime import logs
from steadyhand.sim.clock import anchor_clock
from steadyhand.state.store import TABLE_OWNERS

SPEED = 3000.0  # a simulated day in 29 s
MONDAY = datetime(2026, 11, 16, 14, 30, tzinfo=UTC)  # the open of an ordinary session, pinned
CONFIG = f"""
[sim]
speed = {SPEED}

[retention]
equity_bars_days = 0.25
risk_decisions_days = 0.25
bad_bars_days = 0.25
alerts_days = 0.25
checkpoint_interval_s = 1.0
"""


def _query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _one(data_dir: Path, sql: str) -> Any:
    return _query(data_dir, sql)[0][0]


def _next(day: str) -> str:
    return (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()


def test_a_run_rolls_up_and_prunes_old_rows_and_stays_verifiable(make_bot: Any, data_dir: Path) -> None:
    anchor_clock(data_dir / "exchange.db", speed=SPEED, start=MONDAY)
    bot = make_bot(config=CONFIG).start()

    def a_traded_day_summarized() -> str | None:
        # a session that traded is over: its daily summary is in the outbox (the first session may
        # have had no crossing, if the start took hours of simulated time)
        for (key,) in _query(data_dir, "SELECT key FROM alerts WHERE key LIKE 'summary:%' ORDER BY key"):
            day = key[len("summary:"):]
            if _one(data_dir, f"SELECT count(*) FROM fills WHERE ts >= '{day}' AND ts < '{_next(day)}'"):
                return day
        return None

    day = poll(a_traded_day_summarized, timeout=90, what="a day of trading, summarized")
    next_day = _next(day)
    orders = {r[0] for r in _query(data_dir, f"SELECT client_order_id FROM orders WHERE bar_ts < '{next_day}'")}
    fills = _query(data_dir, f"SELECT * FROM fills WHERE ts < '{next_day}' ORDER BY fill_id")
    assert orders and fills  # so that day's risk approved orders: it journaled decisions

    def day_retired() -> bool:
        equity = _query(data_dir, f"SELECT day_bars FROM equity WHERE ts >= '{day}' AND ts < '{next_day}'")
        return (len(equity) == 1 and (equity[0][0] or 0) > 100  # one row standing for the day's bars
                and _one(data_dir, f"SELECT count(*) FROM risk_decisions WHERE clock_ts < '{next_day}'") == 0
                and _one(data_dir, f"SELECT count(*) FROM alerts WHERE key = 'summary:{day}'") == 0)

    poll(day_retired, timeout=120, what=f"{day} rolled up and pruned")
    # the rolled-up row is the day's last snapshot, with the day's open, high and low
    close, day_open, high, low = _query(data_dir, "SELECT equity, day_open, day_high, day_low FROM equity"
                                                  f" WHERE ts >= '{day}' AND ts < '{next_day}'")[0]
    assert float(low) <= min(float(close), float(day_open)) <= max(float(close), float(day_open)) <= float(high)
    # the journal is whole: every order and fill of that day is still there, unchanged
    assert {r[0] for r in _query(data_dir, f"SELECT client_order_id FROM orders WHERE bar_ts < '{next_day}'")} \
        == orders
    assert _query(data_dir, f"SELECT * FROM fills WHERE ts < '{next_day}' ORDER BY fill_id") == fills
    # the WAL is emptied by the checkpoints (outside the session nothing writes: it gets to 0)
    poll(lambda: (data_dir / "steadyhand.db-wal").stat().st_size < 64 * 1024, timeout=60, what="a small -wal")

    status = bot.status()
    assert status["running"] and status["trading_state"] == "active" and status["fills"] >= len(fills)
    verify = bot.cli("verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout
    # each table was pruned by its owner, and only by it
    passes = [e for e in logs.read_events(data_dir / "logs") if e.get("event") == "retention"]
    pruned = {(e["actor"], table) for e in passes for table in e["rows"]}
    assert {("portfolio", "equity"), ("risk", "risk_decisions"), ("alerter", "alerts")} <= pruned
    assert all(TABLE_OWNERS[table] == actor for actor, table in pruned)
    assert bot.stop() == 0
