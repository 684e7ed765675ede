"""steadyhand with ``broker = "ibkr"`` against the TWS face of the local exchange: the real ib_async
client in the OMS and the feed, the face a separate process that outlives the bot (as a Gateway
does), and ``verify`` reading executions, orders and positions through the IB API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import poll, steadyhand
from steadyhand import procs
from twskit import tws_process

SPEED = "600"


@pytest.fixture
def tws(data_dir: Path) -> Iterator[dict[str, Any]]:
    with tws_process(data_dir, SPEED) as info:
        yield info


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
    # Read through reqExecutions; the bot may have traded on between the listing above and its stop.
    assert counts["broker_fills"] == counts["journal_fills"] >= len(fills) > 0
    assert counts["journal_orders"] >= len(orders)


def test_face_admin_knobs_over_loopback(data_dir: Path) -> None:
    """The face as a process: its admin port arms faults and drops sockets (for drills)."""
    import requests
    from ib_async import IB

    with tws_process(data_dir, SPEED) as info:
        base = f"http://127.0.0.1:{info['admin_port']}/_admin"
        assert requests.get(f"{base}/status", timeout=5).json()["sessions"] == 0
        ib = IB()
        ib.connect("127.0.0.1", info["port"], clientId=5, timeout=10)
        try:
            assert requests.get(f"{base}/status", timeout=5).json()["sessions"] == 1
            armed = requests.post(f"{base}/faults", json={"reject": 2}, timeout=5).json()
            assert armed["faults"]["reject"] == 2
            assert requests.post(f"{base}/faults", json={"nope": 1}, timeout=5).status_code == 400
            assert requests.post(f"{base}/system", json={"code": 7}, timeout=5).status_code == 400
            assert requests.post(f"{base}/drop", timeout=5).json() == {"dropped": 1}
            poll(lambda: requests.get(f"{base}/status", timeout=5).json()["sessions"] == 0, timeout=10,
                 what="the session gone at the face")
        finally:
            ib.disconnect()
