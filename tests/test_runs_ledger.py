"""The run ledger (state/runs.py, ``steadyhand runs``): real runs stopped, SIGKILLed and halted."""

from __future__ import annotations

import json
import signal
from typing import Any

from harness import Bot, poll
from steadyhand.runtime import procs

FAST = ("--speed", "120")  # a session lasts 195 s: all three runs stay inside it
KEYS = {"run_id", "started_at", "ended_at", "broker", "strategies", "start_equity", "end_equity", "total_pnl",
        "fills", "ended_by"}


def ledger(bot: Bot) -> list[dict[str, Any]]:
    result = bot.cli("runs", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stop_crash_and_halt_are_recorded_and_nothing_is_left(make_bot: Any) -> None:
    bot = make_bot(args=FAST).start()
    poll(lambda: bot.status()["fills"] > 0, timeout=40, what="a fill")
    running = ledger(bot)
    assert [r["ended_by"] for r in running] == ["running"] and running[0]["ended_at"] is None
    assert bot.stop(signal.SIGINT) == 0

    first = ledger(bot)
    assert len(first) == 1 and KEYS <= set(first[0])
    run = first[0]
    fills = json.loads(bot.cli("fills", "--json").stdout)
    assert run["ended_by"] == "stop" and run["ended_at"] >= run["started_at"]
    assert run["broker"] == "sim" and run["strategies"] == ["sma_crossover"]
    assert run["fills"] == len(fills) > 0
    assert run["start_equity"] is not None and run["end_equity"] is not None
    assert run["total_pnl"] == round(run["end_equity"] - run["start_equity"], 2)

    # A power cut: the supervisor and every actor SIGKILLed, nothing closes the row.
    bot.start()
    poll(lambda: [r["ended_by"] for r in ledger(bot)] == ["stop", "running"], timeout=20, what="run 2 running")
    fills_before = bot.status()["fills"]
    poll(lambda: bot.status()["fills"] > fills_before, timeout=40, what="a fill in run 2")
    bot.kill_group()
    poll(lambda: not bot.leftovers(), timeout=10, what="every process of run 2 gone")
    shown = ledger(bot)
    assert [r["ended_by"] for r in shown] == ["stop", "crash"]  # seen as a crash before anyone restarts
    assert shown[1]["ended_at"] is not None

    # The next start records it, with the figures it left (its fills, its last equity); a run that
    # ends HALTED says so.
    fills_run2 = len(json.loads(bot.cli("fills", "--json").stdout)) - run["fills"]
    bot.start()
    poll(lambda: len(ledger(bot)) == 3, timeout=20, what="run 3 in the ledger")
    runs = ledger(bot)
    assert [r["ended_by"] for r in runs] == ["stop", "crash", "running"]
    crashed = runs[1]
    assert crashed["fills"] == fills_run2 > 0 and crashed["ended_at"] > crashed["started_at"]
    assert crashed["total_pnl"] == round(crashed["end_equity"] - crashed["start_equity"], 2)
    assert bot.cli("halt").returncode == 0
    assert bot.stop(signal.SIGINT) == 0
    final = ledger(bot)
    assert [r["ended_by"] for r in final] == ["stop", "crash", "halt"]
    assert [r["run_id"] for r in final] == sorted(r["run_id"] for r in final)  # newest last
    assert not bot.leftovers() and not procs.port_listening(bot.admin_port)
    text = bot.cli("runs").stdout
    assert "crash" in text and "halt" in text and "stop" in text
