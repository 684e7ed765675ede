"""``steadyhand run`` as a user runs it: real processes, real Thespian multiproc, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from harness import Bot, poll, steadyhand
from steadyhand.actors.messages import DebugHang, DebugToActor
from steadyhand.runtime import procs

FAST = ("--speed", "600")  # ten simulated minutes per second: bars (and trades) come quickly
# For tests that trade for a minute: at 60x even an early-close session (3.5 h) lasts 210 s (at
# 600x it is over in 21 s, and the next open may be a weekend away).
STEADY = ("--speed", "60")


def filled(bot: Bot, more_than: int = 0) -> dict[str, Any] | None:
    status = bot.status()
    return status if status["fills"] > more_than and status["running"] else None


def test_default_run_fills_an_order_within_30s_and_sigint_leaves_nothing(make_bot: Any) -> None:
    bot = make_bot().start()
    status = poll(lambda: filled(bot), timeout=30, what="a fill at default speed")
    assert status["trading_state"] == "active"
    assert set(status["actors"]) == {"alerter", "portfolio", "oms", "risk", "strategy", "feed", "dashboard",
                                     "heartbeat"}
    assert all(a["alive"] and a["pid"] > 0 for a in status["actors"].values())
    assert status["last_reconciliation"]["reason"] == "start"
    fills = json.loads(bot.cli("fills", "--json").stdout)
    orders = json.loads(bot.cli("orders", "--json").stdout)
    assert fills and set(fills[0]) == {"fill_id", "client_order_id", "symbol", "side", "qty", "price", "ts"}
    assert {o["client_order_id"] for o in orders} >= {f["client_order_id"] for f in fills}
    assert set(orders[0]) == {"client_order_id", "broker_order_id", "symbol", "side", "qty", "type",
                              "status", "filled_qty", "avg_fill_price"}
    assert bot.stop(signal.SIGINT) == 0
    assert "steadyhand stopped." in "".join(bot.output)
    assert not bot.leftovers()
    assert not procs.port_listening(bot.admin_port)
    assert not (bot.data_dir / "run.json").exists()


def test_every_listening_socket_is_on_loopback(make_bot: Any) -> None:
    bot = make_bot(args=FAST).start()
    pids = [p.pid for p in bot.leftovers()] + [bot.proc.pid]
    sockets = procs.listening_sockets(pids)
    assert len(sockets) >= 8  # admin + one per actor, at least
    assert {ip for _, ip, _ in sockets} == {"127.0.0.1"}, sockets
    assert any(port == bot.admin_port for _, _, port in sockets)


def test_commands_say_not_running_and_start_nothing(data_dir: Path) -> None:
    result = steadyhand("status", data_dir=data_dir)
    assert result.returncode == 1
    assert "steadyhand is not running" in result.stderr
    as_json = json.loads(steadyhand("status", "--json", data_dir=data_dir).stdout)
    assert as_json["running"] is False and as_json["actors"] == {}
    assert steadyhand("orders", "--json", data_dir=data_dir).stdout.strip() == "[]"
    assert not procs.run_processes(data_dir)


def test_killing_each_actor_restarts_it_and_trading_goes_on(make_bot: Any) -> None:
    bot = make_bot(args=STEADY).start()
    before = poll(lambda: filled(bot), timeout=30, what="first fill")
    for name in ("feed", "strategy", "risk", "oms", "portfolio", "alerter", "dashboard", "heartbeat"):
        old_pid = bot.status()["actors"][name]["pid"]
        os.kill(old_pid, signal.SIGKILL)

        def restarted(name: str = name, old_pid: int = old_pid) -> dict[str, Any] | None:
            actor = bot.status()["actors"][name]
            return actor if actor["alive"] and actor["pid"] != old_pid else None

        actor = poll(restarted, timeout=15, what=f"{name} restarted")
        assert actor["restarts"] == 1
    status = poll(lambda: filled(bot, more_than=before["fills"]), timeout=40, what="fills after the kills")
    assert status["trading_state"] == "active"
    assert sum(a["restarts"] for a in status["actors"].values()) == 8
    rows = _query(bot.data_dir, "SELECT actor, event FROM restarts WHERE event = 'restarted'")
    assert sorted(r[0] for r in rows) == sorted(status["actors"])


def test_actor_crashing_in_a_loop_is_left_down_and_trading_halts(make_bot: Any) -> None:
    config = "[supervisor]\nmax_restarts = 3\nperiod_s = 60.0\n"
    bot = make_bot(config=config, args=FAST, env={"STEADYHAND_TEST_CRASH_ON_START": "feed"})
    bot.start()
    status = poll(lambda: (s := bot.status())["trading_state"] == "halted" and s, timeout=30,
                  what="HALTED after the feed's restart intensity")
    assert status["actors"]["feed"]["alive"] is False
    assert status["actors"]["feed"]["restarts"] == 3
    assert "feed" in status["halt_reason"]
    critical = poll(lambda: _query(bot.data_dir, "SELECT title FROM alerts WHERE severity = 'critical'"),
                    timeout=10, what="a CRITICAL alert")
    assert any("feed" in row[0] for row in critical)
    assert bot.stop() == 0
    # The halt is persisted: the next start comes back halted, even with a healthy feed.
    again = make_bot(args=FAST).start()
    assert again.status()["trading_state"] == "halted"


def test_hung_actor_is_found_by_the_heartbeat_and_restarted(make_bot: Any) -> None:
    config = "[heartbeat]\ninterval_s = 0.25\ndeadline_s = 1.5\n"
    bot = make_bot(config=config, args=FAST).start()
    old_pid = bot.status()["actors"]["strategy"]["pid"]
    _debug(bot.data_dir, "strategy", DebugHang(seconds=120))
    actor = poll(lambda: (a := bot.status()["actors"]["strategy"])["pid"] != old_pid and a["alive"] and a,
                 timeout=20, what="the hung strategy restarted")
    assert actor["restarts"] == 1
    assert not procs.pid_alive(old_pid)
    rows = _query(bot.data_dir, "SELECT detail FROM restarts WHERE event = 'unresponsive'")
    assert rows and str(old_pid) in rows[0][0]


def test_a_slow_start_is_not_taken_for_a_hang(make_bot: Any) -> None:
    # The OMS takes three deadlines to set up (as with a large replay file): until its first answer
    # the heartbeat allows startup_deadline_s, so it is not reported hung, and it starts once.
    config = "[heartbeat]\ninterval_s = 0.25\ndeadline_s = 1.0\nstartup_deadline_s = 30\n"
    bot = make_bot(config=config, args=FAST, env={"STEADYHAND_TEST_SLOW_START": "oms:3"}).start()
    poll(lambda: bot.status()["actors"]["oms"]["alive"], timeout=30, what="the OMS up")
    assert bot.status()["actors"]["oms"]["restarts"] == 0
    assert _query(bot.data_dir, "SELECT detail FROM restarts WHERE event = 'unresponsive'") == []


def test_replayed_bad_bars_are_rejected_with_reasons(make_bot: Any, tmp_path: Path) -> None:
    replay = tmp_path / "bars.csv"
    replay.write_text(
        "ts,symbol,open,high,low,close,volume\n"
        "2026-11-20T14:30:00Z,AAPL,100,101,99,100.5,1000\n"
        "2026-11-20T14:31:00Z,AAPL,nan,101,99,100.5,1000\n"
        "2026-11-20T14:31:00Z,MSFT,-5,101,99,100.5,1000\n"
        "2026-11-20T14:32:00Z,AAPL,100,99,101,100,1000\n"
        "2026-11-20T14:33:00Z,AAPL,100,101,99,100.5,1000\n"
        "2026-11-20T14:33:00Z,AAPL,100,101,99,100.5,1000\n"
        "2026-11-20T14:34:00Z,AAPL,100,101,99,100.5,1000\n"
    )
    bot = make_bot(config='symbols = ["AAPL", "MSFT"]\n', args=("--replay", str(replay), "--speed", "60"))
    bot.start()
    rows = poll(lambda: len(r := _query(bot.data_dir, "SELECT reason FROM bad_bars")) >= 4 and r,
                timeout=30, what="bad bars journaled")
    assert sorted(r[0] for r in rows) == ["duplicate", "high_below_low", "nan", "non_positive"]


def _debug(data_dir: Path, actor: str, message: Any) -> None:
    from steadyhand.control.client import connect

    assert connect(data_dir).ask(DebugToActor(actor, message)) is True


def _query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize(
    "config, key",
    [
        ("[risk]\nmax_order_qtty = 5\n", "risk.max_order_qtty"),
        ("[risk]\nmax_order_qty = \"lots\"\n", "risk.max_order_qty"),
        ("[risk]\nmax_daily_loss = -100.0\n", "risk.max_daily_loss"),
        ('broker = "alpaca"\n', "ALPACA_API_KEY"),
        ("[strategy]\nfast = 20\nslow = 5\n", "strategy.slow"),
        ("not toml at all [", "not valid TOML"),
        ("[retention]\nequity_days = 3\n", "retention.equity_days"),
        ("[retention]\nalerts_days = \"forever\"\n", "retention.alerts_days"),
        ("[retention]\nrisk_decisions_days = -1\n", "retention.risk_decisions_days"),
        ("[retention]\ncheckpoint_interval_s = 0.001\n", "retention.checkpoint_interval_s"),
    ],
)
def test_bad_config_is_one_clear_message_exit_2_nothing_started(
    tmp_path: Path, data_dir: Path, config: str, key: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPACA_")}
    result = steadyhand("run", "--config", str(path), data_dir=data_dir, env=env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr
    assert not data_dir.exists()
    assert not procs.run_processes(data_dir)
