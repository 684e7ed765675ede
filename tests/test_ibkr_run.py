"""steadyhand with ``broker = "ibkr"`` against the TWS face of the local exchange: the real ib_async
client in the OMS and the feed, the face a separate process that outlives the bot (as a Gateway
does), and ``verify`` reading executions, orders and positions through the IB API."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, poll, steadyhand
from steadyhand import procs

SPEED = "600"


@pytest.fixture
def tws(data_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The TWS face as its own process on the bot's data dir; stopped and proven gone."""
    config = tmp_path / "face.toml"
    config.write_text(f"[sim]\nspeed = {SPEED}\n")
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand.sim.server.tws", "--port", "0",
                             "--data-dir", str(data_dir), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)
    info_file = data_dir / "tws.json"
    try:
        poll(lambda: info_file.exists() or proc.poll() is not None, timeout=30, what="the TWS face to serve")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield json.loads(info_file.read_text())
    finally:
        port = json.loads(info_file.read_text())["port"] if info_file.exists() else None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert port is None or not procs.port_listening(port)


def test_bot_trades_through_tws_protocol_survives_a_kill_and_verifies(make_bot: Any, data_dir: Path,
                                                                       tws: dict[str, Any]) -> None:
    config = (f'broker = "ibkr"\n[sim]\nspeed = {SPEED}\n'
              f"[ibkr]\nport = {tws['port']}\nclient_id = 21\ntimeout_s = 4.0\n")
    bot = make_bot(config=config).start()
    first = poll(lambda: (s := bot.status())["fills"] > 0 and s, timeout=90, what="a fill through the TWS API")
    assert first["last_reconciliation"]["reason"] == "start"

    bot.kill_group()  # the bot dies; the face (the "Gateway") stays up and keeps working
    assert procs.port_listening(tws["port"])
    again = make_bot(config=config).start()
    status = poll(lambda: (s := again.status())["fills"] > first["fills"] and s, timeout=90,
                  what="trading again after the restart")
    assert status["last_reconciliation"]["reason"] == "start" and status["trading_state"] == "active"
    fills = json.loads(again.cli("fills", "--json").stdout)
    assert len({f["fill_id"] for f in fills}) == len(fills)  # no fill recorded twice
    orders = json.loads(again.cli("orders", "--json").stdout)
    assert len({o["client_order_id"] for o in orders}) == len(orders)
    again.stop()

    config_path = data_dir.parent / "steadyhand.toml"
    result = steadyhand("verify", "--json", "--config", str(config_path), data_dir=data_dir, timeout=120)
    report = json.loads(result.stdout)
    assert report["ok"] is True, report
    counts = report["counts"]
    assert counts["broker_fills"] == counts["journal_fills"] == len(fills) > 0  # read through reqExecutions
    assert counts["broker_orders"] >= counts["journal_orders"] == len(orders)
