"""`steadyhand run --replay FILE --lockstep`: the real actors trade exactly what `backtest` trades.

Every test runs real processes (Thespian multiproc, journal, risk, OMS, sim exchange) on a small
replay file whose dates pin the simulated clock, compares trade by trade with `steadyhand backtest`
on the same file, and the ``make_bot`` fixture proves no process or port is left.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import poll, steadyhand
from steadyhand.config import SimSettings
from steadyhand.sim.lockstep import LockstepClock, lockstep_settings
from steadyhand.sim.replay import ReplayMarket

SYMBOLS = ("AAPL", "MSFT", "NVDA")
DAY1_CLOSE = datetime(2026, 11, 23, 21, 0, tzinfo=UTC)
DAY2_OPEN = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
CONFIG = 'symbols = ["AAPL", "MSFT", "NVDA"]\n[strategy]\nfast = 3\nslow = 8\n'
GAP = {DAY2_OPEN + timedelta(minutes=k) for k in (20, 21, 22)}  # NVDA has no bar then


def write_replay(path: Path, minutes: int = 90, seed: int = 7) -> Path:
    """The last ``minutes`` of one session and the first of the next, 3 symbols of a seeded walk in
    whole cents; NVDA misses three minutes and has one bad row (high below low)."""
    rng = np.random.default_rng(seed)
    times = [DAY1_CLOSE - timedelta(minutes=minutes - k) for k in range(minutes)]
    times += [DAY2_OPEN + timedelta(minutes=k) for k in range(minutes)]
    price = {s: 100.0 + 20 * j for j, s in enumerate(SYMBOLS)}
    lines = ["ts,symbol,open,high,low,close,volume"]
    for m in times:
        for s in SYMBOLS:
            o = price[s]
            c = round(o * float(np.exp(rng.normal(0, 0.003))), 2)
            price[s] = c
            if s == "NVDA" and m in GAP:
                continue
            lines.append(f"{m:%Y-%m-%dT%H:%M:%SZ},{s},{o:.2f},{max(o, c):.2f},{min(o, c):.2f},{c:.2f},1000")
    lines.append(f"{times[len(times) // 6]:%Y-%m-%dT%H:%M:%SZ},NVDA,1,0.5,2,1,1000")  # out of place and bad: rejected
    path.write_text("\n".join(lines) + "\n")
    return path


def backtest_trades(replay: Path, tmp_path: Path) -> list[dict[str, Any]]:
    config = tmp_path / "backtest.toml"
    config.write_text(CONFIG)
    done = steadyhand("backtest", "--replay", str(replay), "--config", str(config), "--json",
                      data_dir=tmp_path / "bt")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["trades"])


def lockstep_fills(data_dir: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(data_dir / "steadyhand.db")
    try:
        rows = db.execute("SELECT client_order_id, symbol, side, qty, price, ts FROM fills ORDER BY ts, symbol")
        return [dict(zip(("intent_id", "symbol", "side", "qty", "price", "ts"), r, strict=True)) for r in rows]
    finally:
        db.close()


def assert_same_trades(backtest: list[dict[str, Any]], fills: list[dict[str, Any]]) -> None:
    """One for one: client order id = intent id, side, qty, fill price (whole cents) and fill time."""
    expected = [(t["intent_id"], t["symbol"], t["side"], t["qty"], f"{t['price']:.2f}",
                 datetime.fromisoformat(t["ts"])) for t in backtest]
    got = [(f["intent_id"], f["symbol"], f["side"], f["qty"], f["price"], datetime.fromisoformat(f["ts"]))
           for f in fills]
    missing = [t for t in expected if t not in got]
    extra = [t for t in got if t not in expected]
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == expected


def wait_exit(bot: Any, timeout: float) -> int:
    poll(lambda: bot.proc.poll() is not None, timeout, what="the lock-step run to end by itself")
    return int(bot.proc.returncode)


def test_lockstep_trades_equal_the_backtest_one_for_one(make_bot: Any, tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "bars.csv")
    expected = backtest_trades(replay, tmp_path)
    # The file exercises what matters: many trades, fills across the overnight gap (a signal on
    # the session's last bar fills at the next session's open), and around NVDA's missing minutes.
    assert len(expected) >= 40
    assert any(datetime.fromisoformat(t["ts"]) == DAY2_OPEN for t in expected)
    bot = make_bot(config=CONFIG, args=("--replay", str(replay), "--lockstep")).start()
    assert wait_exit(bot, 120) == 0, "".join(bot.output[-20:])
    summary = [line for line in bot.output if line.startswith("lock-step:")]
    assert summary and f"fills {len(expected)}," in summary[0], bot.output[-5:]
    assert_same_trades(expected, lockstep_fills(bot.data_dir))
    db = sqlite3.connect(bot.data_dir / "steadyhand.db")
    try:
        denied = db.execute("SELECT reason FROM risk_decisions WHERE approved = 0").fetchall()
        bad = db.execute("SELECT reason FROM bad_bars").fetchall()
    finally:
        db.close()
    assert denied == []  # no wall-clock limit, stale window or market-hours check got in the way
    assert bad == [("high_below_low",)]
    result = json.loads((bot.data_dir / "lockstep.json").read_text())
    assert result["bars"] == len(ReplayMarket(replay)) - 1 and result["reruns"] == 0


@pytest.mark.parametrize("victim", ["strategy", "risk", "oms"])
def test_lockstep_survives_a_killed_actor_with_the_same_trades(make_bot: Any, tmp_path: Path, victim: str) -> None:
    replay = write_replay(tmp_path / "bars.csv", minutes=150)
    expected = backtest_trades(replay, tmp_path)
    bot = make_bot(config=CONFIG, args=("--replay", str(replay), "--lockstep")).start()
    # Mid-run: once a third of the trades have filled.
    poll(lambda: len(lockstep_fills(bot.data_dir)) >= len(expected) // 3, 60, interval=0.02,
         what="a third of the trades")
    os.kill(bot.status()["actors"][victim]["pid"], signal.SIGKILL)
    assert wait_exit(bot, 120) == 0, "".join(bot.output[-20:])
    assert_same_trades(expected, lockstep_fills(bot.data_dir))
    db = sqlite3.connect(bot.data_dir / "steadyhand.db")
    try:
        restarts = db.execute("SELECT count(*) FROM restarts WHERE actor = ? AND event = 'restarted'",
                              (victim,)).fetchone()[0]
    finally:
        db.close()
    assert restarts == 1
    assert json.loads((bot.data_dir / "lockstep.json").read_text())["reruns"] >= 1


@pytest.mark.parametrize("point", ["oms.after_journal:8", "oms.after_submit:8", "oms.after_fill_received:4"])
def test_lockstep_survives_an_oms_crash_point_with_the_same_trades(make_bot: Any, tmp_path: Path, point: str) -> None:
    # The OMS dies at an exact place in the order path (runtime/crashpoints.py). After its journal
    # commit but before the broker heard of it is the hard one: reconciliation settles the intent
    # as never submitted, and the tick's re-run must submit it after all (the clock has not moved).
    replay = write_replay(tmp_path / "bars.csv")
    expected = backtest_trades(replay, tmp_path)
    bot = make_bot(config=CONFIG, args=("--replay", str(replay), "--lockstep"),
                   env={"STEADYHAND_CRASH_AT": point}).start()
    assert wait_exit(bot, 120) == 0, "".join(bot.output[-20:])
    assert (bot.data_dir / "crashpoint.fired").exists()  # it did die there
    assert_same_trades(expected, lockstep_fills(bot.data_dir))
    if point.startswith("oms.after_journal"):
        db = sqlite3.connect(bot.data_dir / "steadyhand.db")
        try:
            reports = [json.loads(r[0]) for r in db.execute("SELECT report FROM reconciliations")]
        finally:
            db.close()
        assert any(r["never_submitted"] for r in reports)  # settled as never submitted, then revived


def test_lockstep_needs_a_replay_file(tmp_path: Path) -> None:
    done = steadyhand("run", "--lockstep", data_dir=tmp_path / "var")
    assert done.returncode == 2
    assert "--lockstep needs a replay file" in done.stderr
    assert not (tmp_path / "var").exists()  # nothing started


def test_lockstep_fill_model_is_the_backtests(tmp_path: Path) -> None:
    from steadyhand.config import Settings

    replay = write_replay(tmp_path / "bars.csv", minutes=10)
    settings = lockstep_settings(Settings(sim=SimSettings(replay=str(replay))))
    sim = settings.sim
    assert (sim.lockstep, sim.latency_ms, sim.slippage_bps, sim.partial_fill_probability, sim.spread_bps) == \
        (True, 0.0, 0.0, 0.0, 0.0)
    market = ReplayMarket(replay, price="open")
    first = market.bar("AAPL", DAY1_CLOSE - timedelta(minutes=10))
    assert first is not None
    quote = market.quote("AAPL", first.ts + timedelta(seconds=30))
    assert quote is not None and quote.bid == quote.ask == round(first.open, 2)  # the open, no spread


def test_lockstep_clock_is_shared_through_its_file(tmp_path: Path) -> None:
    import pickle

    t0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    clock = LockstepClock.create(tmp_path / "lockstep.clock", t0)
    other = pickle.loads(pickle.dumps(clock))  # as an actor process gets it
    assert other.now() == t0
    clock.set(t0 + timedelta(minutes=1, microseconds=5))
    assert other.now() == t0 + timedelta(minutes=1, microseconds=5)
    again = LockstepClock.create(tmp_path / "lockstep.clock", t0)  # a restarted run continues
    assert again.now() == t0 + timedelta(minutes=1, microseconds=5)
