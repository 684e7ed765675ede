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
from steadyhand.runtime import procs
from twskit import ibkr_config, tws_process

SPEED = "60"  # even an early close (3.5 h) stays open 210 s of wall time: a restart drill fits, busy or not


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
    # Read through reqExecutions; the bot may have traded on between the listing above and its stop, and
    # the Gateway goes on filling the orders it left working: those are the next start's catch-up.
    assert counts["broker_fills"] == counts["journal_fills"] + len(report["pending_catch_up"])
    assert counts["journal_fills"] >= len(fills) > 0
    assert counts["journal_orders"] >= len(orders)
    # The TWS face gives no quotes (no reqMktData ticks): the execution report says so (issue 15).
    execution = json.loads(steadyhand("report", "execution", "--json", data_dir=data_dir).stdout)["summary"]
    assert execution["filled_orders"] > 0 and "ibkr" in execution["no_quote_from"]
    assert "none from ibkr" in execution["quotes"]


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


def test_gateway_restart_while_trading_circuit_reconcile_and_no_id_reused(make_bot: Any, data_dir: Path) -> None:
    """The nightly restart, mid-session: the Gateway goes away (connections refused for a while),
    comes back with ``nextValidId`` starting over. The bot opens its circuit (CRITICAL alert), reconnects,
    reconciles (``broker recovered``) and trades on with order ids above every one it used before."""
    import requests
    from crashkit import alerts, query, reports

    with tws_process(data_dir, SPEED) as info:
        base = f"http://127.0.0.1:{info['admin_port']}/_admin"
        bot = make_bot(config=ibkr_config(info["port"])).start()
        first = poll(lambda: (s := bot.status())["fills"] > 0 and s, timeout=90, what="a fill")
        requests.post(f"{base}/faults", json={"refuse_connections": True}, timeout=5).raise_for_status()
        requests.post(f"{base}/restart", timeout=5).raise_for_status()
        poll(lambda: "broker:circuit" in {a["key"] for a in alerts(data_dir)}, timeout=30, what="circuit alert")
        ids_before = {int(r["broker_order_id"]) for r in query(
            data_dir, "SELECT broker_order_id FROM orders WHERE broker_order_id IS NOT NULL")}
        requests.post(f"{base}/faults", json={"refuse_connections": False}, timeout=5).raise_for_status()
        poll(lambda: any(r["reason"] == "broker recovered" for r in reports(data_dir)), timeout=60,
             what="reconciled after the restart")
        poll(lambda: bot.status()["fills"] > first["fills"], timeout=90, what="trading again")

        def placed_since() -> list[int] | None:
            ids = [int(r["broker_order_id"]) for r in query(
                data_dir, "SELECT broker_order_id FROM orders WHERE broker_order_id IS NOT NULL")]
            return ids if set(ids) - ids_before else None

        # A fill after the restart can be of an order placed before it: wait for a new order itself.
        ids = poll(placed_since, timeout=90, what="an order placed after the restart")
        assert [a for a in alerts(data_dir) if a["key"] == "broker:circuit"][0]["severity"] == "critical"
        assert len(ids) == len(set(ids))  # no IB order id used twice, although nextValidId went back to 1
        assert min(set(ids) - ids_before) > max(ids_before)
        bot.stop()
        result = steadyhand("verify", "--json", "--config", str(data_dir.parent / "steadyhand.toml"),
                            data_dir=data_dir, timeout=120)
        assert json.loads(result.stdout)["ok"] is True, result.stdout
