"""Operator commands through the CLI against a running multiproc steadyhand: state, journal, reply."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import Bot, poll
from steadyhand.actors.messages import CommandResult, OperatorCommand
from steadyhand.control import commands

FAST = ("--speed", "600")


def command(bot: Bot, *args: str) -> dict[str, Any]:
    result = bot.cli(*args, "--json")
    reply = json.loads(result.stdout)
    assert (result.returncode == 0) == reply["ok"], result.stderr
    return reply


def journal(data_dir: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT command_id, name, status, operator, result FROM operator_commands ORDER BY id")\
            .fetchall()
    finally:
        db.close()


def test_every_command_through_the_cli(make_bot: Any, tmp_path: Path) -> None:
    config = "[risk]\nmax_order_qty = 1000\n"
    # The flatten at the end needs the market still open: at 60x even an early-close session (3.5 h)
    # lasts 210 s, twice this test on a busy machine (at 600x it is gone in 21 s).
    bot = make_bot(config=config, args=("--speed", "60")).start()
    poll(lambda: bot.status()["fills"] > 0, timeout=30, what="a fill")

    reply = command(bot, "pause")
    assert reply["result"]["trading_state"] == "reducing"
    assert bot.status()["trading_state"] == "reducing"
    assert command(bot, "resume")["result"]["trading_state"] == "active"

    reply = command(bot, "cancel-all")
    assert reply["ok"] and "cancel_requests" in reply["result"]

    old_pid = bot.status()["actors"]["strategy"]["pid"]
    assert command(bot, "restart", "strategy")["result"] == {"actor": "strategy", "restarting": True}
    poll(lambda: (a := bot.status()["actors"]["strategy"])["alive"] and a["pid"] != old_pid, timeout=15,
         what="strategy restarted by the operator")
    bad = bot.cli("restart", "nosuchactor", "--json")
    assert bad.returncode == 1 and "no actor 'nosuchactor'" in json.loads(bad.stdout)["error"]

    assert bot.config_path is not None
    bot.config_path.write_text("[risk]\nmax_order_qty = 7\n")
    assert command(bot, "reload")["result"] == {"applied": ["risk"], "needs_restart": []}
    bot.config_path.write_text("[risk]\nmax_order_qty = -7\n")
    refused = bot.cli("reload", "--json")
    assert refused.returncode == 1 and "risk.max_order_qty" in json.loads(refused.stdout)["error"]

    reply = command(bot, "halt")
    assert reply["result"]["trading_state"] == "halted" and reply["result"]["elapsed_ms"] >= 0
    assert bot.status()["trading_state"] == "halted"

    reply = command(bot, "flatten")
    closing = reply["result"]["closing_orders"]
    assert reply["result"]["trading_state"] == "halted"
    if closing:  # positions at the broker get closed at market
        poll(lambda: not bot.status()["positions"], timeout=20, what="flat after flatten")

    names = [row[1] for row in journal(bot.data_dir)]
    for name in ("pause", "resume", "cancel-all", "restart", "reload", "halt", "flatten"):
        assert name in names
    assert all(row[3] and "@" in row[3] for row in journal(bot.data_dir))  # who issued it

    assert command(bot, "shutdown")["result"] == {"stopping": True}
    assert bot.proc is not None and bot.proc.wait(40) == 0
    assert not bot.leftovers()


def test_repeating_a_command_id_returns_the_first_result_and_does_nothing(make_bot: Any) -> None:
    bot = make_bot(args=FAST).start()
    first = command(bot, "pause", "--command-id", "op-1")
    command(bot, "resume")
    again = command(bot, "pause", "--command-id", "op-1")
    assert again["result"] == {**first["result"], "repeated": True}
    assert bot.status()["trading_state"] == "active"  # the repeat did not pause again
    other = bot.cli("halt", "--command-id", "op-1", "--json")
    assert other.returncode == 1 and "reused" in json.loads(other.stdout)["error"]
    assert bot.status()["trading_state"] == "active"


def test_forged_unsigned_stale_and_unknown_commands_are_refused_journaled_alerted(make_bot: Any) -> None:
    from steadyhand.control.client import connect

    bot = make_bot(args=FAST).start()
    connection = connect(bot.data_dir)
    secret = commands.load_secret(bot.data_dir)
    good = commands.new_command("halt", secret)
    cases = {
        "unsigned": replace(good, command_id="c-unsigned", signature=""),
        "bad signature": replace(commands.new_command("halt", b"not the secret"), command_id="c-forged"),
        "tampered": replace(good, command_id="c-tampered"),  # signature no longer matches the id
        "stale": _signed(replace(good, command_id="c-stale", issued_at=time.time() - 3600), secret),
        "unknown": _signed(replace(good, command_id="c-unknown", name="format-disk"), secret),
    }
    for why, forged in cases.items():
        reply = connection.ask(forged)
        assert isinstance(reply, CommandResult) and not reply.ok, why
        assert reply.error.startswith("refused:"), (why, reply.error)
    assert bot.status()["trading_state"] == "active"  # none of the halts happened
    refused = [row for row in journal(bot.data_dir) if row[2] == "refused"]
    assert {row[0] for row in refused} == {f.command_id for f in cases.values()}
    poll(lambda: _alerts(bot.data_dir, "operator:refused"), timeout=10, what="a refused-command alert")


def test_secret_file_is_private_and_a_readable_one_is_refused(make_bot: Any) -> None:
    bot = make_bot(args=FAST).start()
    path = bot.data_dir / commands.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    result = bot.cli("pause")
    assert result.returncode == 1 and "readable by others" in result.stderr
    path.chmod(0o600)
    assert bot.status()["trading_state"] == "active"


def _signed(command: OperatorCommand, secret: bytes) -> OperatorCommand:
    return replace(command, signature=commands.sign(replace(command, signature=""), secret))


def _alerts(data_dir: Path, key: str) -> list[Any]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id FROM alerts WHERE key = ?", [key]).fetchall()
    finally:
        db.close()
