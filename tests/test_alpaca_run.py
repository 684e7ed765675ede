"""steadyhand with ``broker = "alpaca"`` against ``steadyhand exchange serve``: the real alpaca-py
clients on both streams, the exchange a separate process that outlives the bot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, poll, start_args
from steadyhand.runtime import procs

SPEED = "120"  # even an early-close session (3.5 h) lasts 105 s here: open through the test


@pytest.fixture
def exchange(data_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`steadyhand exchange serve` as its own process on the bot's data dir; stopped and proven gone."""
    config = tmp_path / "exchange.toml"
    config.write_text(f"[sim]\nspeed = {SPEED}\n")
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand.cli", "exchange", "serve", "--port", "0",
                             "--data-dir", str(data_dir), "--config", str(config), *start_args()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    info_file = data_dir / "exchange.json"
    try:
        poll(lambda: info_file.exists(), timeout=30, what="the exchange to serve")
        info = json.loads(info_file.read_text())
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        port = json.loads(info_file.read_text())["port"] if info_file.exists() else None
        assert port is None or not procs.port_listening(port)


def test_bot_trades_on_alpaca_protocol_and_survives_a_kill_of_the_whole_bot(
    make_bot: Any, exchange: dict[str, Any]
) -> None:
    urls = {k: v for k, v in exchange.items() if k.endswith("_url")}
    config = (
        'broker = "alpaca"\n'
        f"[sim]\nspeed = {SPEED}\n"
        "[alpaca]\npaper = true\n" + "".join(f'{k} = "{v}"\n' for k, v in urls.items())
    )
    env = {"ALPACA_API_KEY": "dev-key", "ALPACA_SECRET_KEY": "dev-secret-4f1c"}
    bot = make_bot(config=config, env=env).start()
    first = poll(lambda: (s := bot.status())["fills"] > 0 and s, timeout=60, what="a fill through Alpaca's API")
    assert first["last_reconciliation"]["reason"] == "start"

    bot.kill_group()  # the bot dies; the exchange process stays up and keeps working
    assert procs.port_listening(exchange["port"])
    again = make_bot(config=config, env=env).start()
    status = poll(lambda: (s := again.status())["fills"] > first["fills"] and s, timeout=60,
                  what="trading again after the restart")
    assert status["last_reconciliation"]["reason"] == "start"
    assert status["trading_state"] == "active"
    fills = json.loads(again.cli("fills", "--json").stdout)
    assert len({f["fill_id"] for f in fills}) == len(fills)  # no fill recorded twice
    orders = json.loads(again.cli("orders", "--json").stdout)
    assert len({o["client_order_id"] for o in orders}) == len(orders)
    logs = "".join(p.read_text() for p in (again.data_dir / "logs").glob("*.jsonl"))
    assert "dev-secret-4f1c" not in logs  # secrets are never logged
