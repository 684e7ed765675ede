"""The heartbeat monitor in a real ``steadyhand run`` (issue 10 §1).

No actor is taken for hung when the market opens, even beside two CPU-bound processes; a really
hung actor (SIGSTOP) is still killed and restarted within its deadline. The simulated clock is
pinned in exchange.db before the bot starts (a bot reuses the stored anchor), so the open falls in
the test's window on any date."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from crashkit import log_events
from harness import Bot, poll
from steadyhand import market_hours, procs
from steadyhand.brokers.sim import anchor_clock, stored_clock

OPEN = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # an ordinary Friday: XNYS opens 9:30 ET
SPEED = 60  # a simulated minute per second


@pytest.fixture
def cpu_hogs() -> Iterator[Callable[[int], list[subprocess.Popen[bytes]]]]:
    """Start CPU-bound processes on demand; afterwards kill them and prove they are gone."""
    hogs: list[subprocess.Popen[bytes]] = []

    def start(count: int) -> list[subprocess.Popen[bytes]]:
        hogs.extend(subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count))
        return hogs

    yield start
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait(10)
    assert not [h.pid for h in hogs if procs.pid_alive(h.pid)]


def _unresponsive_rows(data_dir: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT actor, detail FROM restarts WHERE event = 'unresponsive'").fetchall()
    finally:
        db.close()


def _last_equity_at(data_dir: Path) -> datetime | None:
    """The bar time of the portfolio's latest equity row: how far into the session the bot got."""
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT max(ts) FROM equity").fetchone()
    except sqlite3.OperationalError:
        return None  # no schema yet
    finally:
        db.close()
    return datetime.fromisoformat(row[0]) if row and row[0] else None


def _answered(bot: Bot, actor: str, pid: int) -> bool:
    """The heartbeat has heard from this process of ``actor`` (its startup allowance is over)."""
    return any(e.get("actor_name") == actor and e.get("pid") == pid
               for e in log_events(bot.data_dir, "heartbeat", "responsive"))


def test_the_open_on_a_busy_cpu_takes_no_actor_for_hung(make_bot: Any, data_dir: Path,
                                                         cpu_hogs: Any) -> None:
    # A 1 s beat, 5 s while the market is closed. Before the fix the first open-market beat held
    # the pongs of slow-rate pings against the fast deadline: with the default 5 s deadline a coin
    # flip at each open (a pong 5.00x s old), with a deadline under the closed beat, as here, a
    # kill of every actor at every open. Now only pings left unanswered count, however slow the beat.
    config = "[heartbeat]\ninterval_s = 1.0\ndeadline_s = 3.0\n"
    speed = 2000  # the open's burst of bars, as in the report
    lead_s = 20  # real seconds from the anchor to the open: the bot starts and beats slowly first
    data_dir.mkdir(parents=True)
    start = OPEN - timedelta(seconds=lead_s * speed)
    clock = anchor_clock(data_dir / "exchange.db", speed=speed, start=start)
    bot = make_bot(config=config, args=("--speed", str(speed))).start()
    hogs = cpu_hogs(2)
    assert stored_clock(data_dir / "exchange.db") == clock  # the bot reused the pinned anchor
    assert not market_hours.is_open(clock.now()), "the bot took longer to start than the lead"
    # Well into the session: many fast beats after the switch, the first among them.
    into = timedelta(hours=5)  # 9 s at 2000x, the close (6.5 h) not yet reached
    poll(lambda: (at := _last_equity_at(data_dir)) is not None and at >= OPEN + into,
         timeout=lead_s + 60, what="the bot trading well into the session")
    assert all(h.poll() is None for h in hogs)  # they ran beside it all along
    assert _unresponsive_rows(data_dir) == []
    assert log_events(data_dir, "heartbeat", "unresponsive") == []
    assert log_events(data_dir, "heartbeat", "feed_stale") == []  # nor the feed, for bars before the open
    actors = bot.status()["actors"]
    assert all(a["alive"] for a in actors.values())
    assert {n: a["restarts"] for n, a in actors.items() if a["restarts"]} == {}
    assert bot.stop() == 0


def test_a_stopped_actor_is_killed_and_restarted_within_its_deadline(make_bot: Any, data_dir: Path) -> None:
    interval, deadline, slack = 0.25, 1.5, 3.0
    config = f"[heartbeat]\ninterval_s = {interval}\ndeadline_s = {deadline}\nstartup_deadline_s = 30\n"
    data_dir.mkdir(parents=True)
    anchor_clock(data_dir / "exchange.db", speed=SPEED, start=OPEN + timedelta(minutes=5))  # open: fast beat
    bot = make_bot(config=config, args=("--speed", str(SPEED))).start()
    pid = bot.status()["actors"]["strategy"]["pid"]
    poll(lambda: _answered(bot, "strategy", pid), timeout=15, what="the strategy's first answer")
    stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)  # hung for real: not a handler that sleeps, the whole process
    try:
        actor = poll(lambda: (a := bot.status()["actors"]["strategy"])["pid"] != pid and a["alive"] and a,
                     timeout=30, what="the stopped strategy replaced")
        poll(lambda: _answered(bot, "strategy", actor["pid"]), timeout=15, what="the new strategy answering")
        assert not procs.pid_alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # whatever happened, leave no stopped process behind
    reported = log_events(bot.data_dir, "heartbeat", "unresponsive")
    assert [(e["actor_name"], e["pid"]) for e in reported] == [("strategy", pid)]
    # Reported at the first beat after its oldest unanswered ping passed the deadline: within the
    # deadline and a beat (plus slack for a busy machine), not the 30 s startup allowance.
    reported_after = datetime.fromisoformat(reported[0]["ts"]).timestamp() - stopped_at
    assert 0 < reported_after <= deadline + interval + slack
    answered = next(e for e in log_events(bot.data_dir, "heartbeat", "responsive")
                    if e["pid"] == actor["pid"])
    assert datetime.fromisoformat(answered["ts"]).timestamp() - stopped_at <= deadline + interval + 2 * slack
    assert actor["restarts"] == 1
    rows = _unresponsive_rows(bot.data_dir)
    assert [r[0] for r in rows] == ["strategy"] and str(pid) in rows[0][1]
    assert {n: a["restarts"] for n, a in bot.status()["actors"].items() if a["restarts"]} == {"strategy": 1}
    assert bot.stop() == 0
