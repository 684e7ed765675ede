"""Alerts from a running bot, delivered for real (apprise json:// to a local HTTP receiver)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from harness import poll

FAST = ("--speed", "600")


class Receiver:
    """A local webhook: records every POSTed JSON body; can be told to fail or to hang."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.gets = 0
        self.mode = "ok"  # ok | fail | hang
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                receiver.gets += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/alerts"

    def titles(self) -> list[str]:
        return [p.get("title", "") for p in self.posts]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_alerts_reach_the_webhook_and_survive_a_sigkill_of_the_alerter(make_bot: Any, receiver: Receiver) -> None:
    bot = make_bot(args=FAST, env={"STEADYHAND_ALERT_URLS": receiver.url}).start()
    assert bot.cli("pause").returncode == 0
    poll(lambda: any("paused" in t for t in receiver.titles()), timeout=15, what="the pause alert")
    post = next(p for p in receiver.posts if "paused" in p["title"])
    assert post["title"].startswith("[HIGH]") and post["type"] == "failure"
    assert '"event": "alert"' in (bot.data_dir / "logs" / "alerter.jsonl").read_text()  # and in the log
    assert "steadyhand paused" not in "".join(bot.output)  # not leaked to the console by Thespian

    receiver.mode = "fail"  # the next alert cannot be delivered ...
    assert bot.cli("resume").returncode == 0
    poll(lambda: _undelivered(bot, "resumed"), timeout=10, what="the resume alert stored, undelivered")
    alerter = bot.status()["actors"]["alerter"]["pid"]
    os.kill(alerter, signal.SIGKILL)  # ... and the alerter dies with it in its outbox
    poll(lambda: (a := bot.status()["actors"]["alerter"])["alive"] and a["pid"] != alerter, timeout=15,
         what="alerter restarted")
    receiver.mode = "ok"
    poll(lambda: any("resumed" in t for t in receiver.titles()), timeout=20, what="delivery after the restart")
    assert sum("resumed" in t for t in receiver.titles()) == 1


def test_an_endpoint_that_never_answers_does_not_delay_trading(make_bot: Any, receiver: Receiver) -> None:
    receiver.mode = "hang"
    # 120x: trading must go on for a while, with the market open even on an early-close day.
    bot = make_bot(args=("--speed", "120"), env={"STEADYHAND_ALERT_URLS": receiver.url}).start()
    assert bot.cli("pause").returncode == 0  # an alert now hangs in delivery
    assert bot.cli("resume").returncode == 0
    first = poll(lambda: (s := bot.status())["fills"] > 0 and s, timeout=30, what="a fill")
    poll(lambda: bot.status()["fills"] > first["fills"], timeout=30, what="trading goes on")


def test_deadman_pings_only_while_every_actor_is_healthy(make_bot: Any, receiver: Receiver) -> None:
    config = (f'[alerts]\ndeadman_url = "http://127.0.0.1:{receiver.port}/ping"\ndeadman_interval_s = 0.3\n'
              "[supervisor]\nmax_restarts = 0\n")
    bot = make_bot(config=config, args=FAST).start()
    poll(lambda: receiver.gets >= 3, timeout=15, what="dead-man pings")
    os.kill(bot.status()["actors"]["feed"]["pid"], signal.SIGKILL)  # max_restarts 0: left down
    poll(lambda: not bot.status()["actors"]["feed"]["alive"], timeout=10, what="feed left down")
    poll(lambda: _deadman_skipped(bot), timeout=10, what="pings withheld")
    seen = receiver.gets
    poll(lambda: _deadman_skipped(bot) >= 3, timeout=10, what="more withheld pings")
    assert receiver.gets <= seen + 1  # at most one that was already on its way


def _undelivered(bot: Any, word: str) -> bool:
    import sqlite3

    db = sqlite3.connect(f"file:{bot.data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT title FROM alerts WHERE delivered_at IS NULL AND attempts > 0").fetchall()
    finally:
        db.close()
    return any(word in r[0] for r in rows)


def _deadman_skipped(bot: Any) -> int:
    path = bot.data_dir / "logs" / "heartbeat.jsonl"
    return path.read_text().count('"deadman_skipped"') if path.exists() else 0


def test_daily_summary_after_the_close(make_bot: Any, receiver: Receiver) -> None:
    # 3000x: the simulated session (6.5 h from the open) closes within about 8 s.
    bot = make_bot(args=("--speed", "3000"), env={"STEADYHAND_ALERT_URLS": receiver.url}).start()
    poll(lambda: any("daily summary" in t for t in receiver.titles()), timeout=40, what="the daily summary")
    post = next(p for p in receiver.posts if "daily summary" in p["title"])
    for line in ("pnl:", "trades:", "fill rate:", "slippage bps:", "slippage split bps: delay",
                 "signal to submit ms p50:"):
        assert line in post["message"]
    assert sum("daily summary" in t for t in receiver.titles()) == 1
    assert '"daily_summary"' in (bot.data_dir / "logs" / "portfolio.jsonl").read_text()


def test_unacknowledged_critical_alerts_are_resent_until_acked(make_bot: Any, receiver: Receiver) -> None:
    import re

    config = "[alerts]\nescalation_interval_s = 0.5\n"
    bot = make_bot(config=config, args=FAST, env={"STEADYHAND_ALERT_URLS": receiver.url}).start()
    assert bot.cli("halt").returncode == 0
    reminder = poll(lambda: next((p for p in receiver.posts if "REMINDER" in p["title"] and "HALTED" in p["title"]),
                                 None), timeout=20, what="a reminder of the unacknowledged halt")
    alert_id = re.search(r"steadyhand ack (\d+)", reminder["message"]).group(1)  # type: ignore[union-attr]
    acked = bot.cli("ack", alert_id, "--json")
    assert acked.returncode == 0 and json.loads(acked.stdout)["result"] == {"acknowledged": int(alert_id)}
    halted_reminders = sum("REMINDER" in t and "HALTED" in t for t in receiver.titles())

    # Another CRITICAL alert keeps the escalation passes visibly running ...
    assert bot.cli("flatten").returncode == 0
    poll(lambda: sum("REMINDER" in t and "flattening" in t for t in receiver.titles()) >= 2, timeout=20,
         what="reminders of the unacknowledged flatten")
    # ... while the acknowledged one is not re-sent (one may have been on its way when acked).
    assert sum("REMINDER" in t and "HALTED" in t for t in receiver.titles()) <= halted_reminders + 1


def test_stale_feed_alert_then_resolved(make_bot: Any, receiver: Receiver, tmp_path: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from steadyhand.domain import market_hours
    from steadyhand.sim.market import SyntheticMarket

    # Replay bars with a 12-minute hole in an open session: stale during the hole, fresh after it.
    market = SyntheticMarket(seed=3, symbols=("AAPL",))
    opens = market_hours.previous_open(datetime(2026, 11, 19, 16, tzinfo=UTC))
    minutes = [opens + timedelta(minutes=m) for m in (*range(0, 6), *range(18, 26))]
    lines = ["ts,symbol,open,high,low,close,volume"]
    for minute in minutes:
        bar = market.bar("AAPL", minute)
        lines.append(f"{bar.ts.isoformat()},AAPL,{bar.open},{bar.high},{bar.low},{bar.close},{bar.volume}")
    replay = tmp_path / "gap.csv"
    replay.write_text("\n".join(lines) + "\n")
    config = 'symbols = ["AAPL"]\n[risk]\nstale_after_s = 120.0\n[heartbeat]\ninterval_s = 0.25\n'
    bot = make_bot(config=config, args=("--replay", str(replay), "--speed", "60"),
                   env={"STEADYHAND_ALERT_URLS": receiver.url})
    bot.start()
    poll(lambda: any("market data is stale" in t for t in receiver.titles()), timeout=30, what="stale alert")
    poll(lambda: any("fresh again (resolved)" in t for t in receiver.titles()), timeout=30, what="resolved")
    stale_at = next(i for i, t in enumerate(receiver.titles()) if "stale" in t)
    fresh_at = next(i for i, t in enumerate(receiver.titles()) if "resolved" in t)
    assert stale_at < fresh_at
