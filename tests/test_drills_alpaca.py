"""Crash safety through the Alpaca adapter: the randomized kill drill and ``steadyhand verify`` with
``broker = "alpaca"`` against ``steadyhand exchange serve``, a process of its own that stays up while
the bot is killed. Real processes, the real alpaca-py client, 127.0.0.1 only."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from harness import REPO, poll, start_args, start_text
from steadyhand.runtime import procs

sys.path.insert(0, str(REPO / "ops" / "drills"))
from drill import Exchange  # noqa: E402 - the drills' own exchange process, as the drill starts it

SPEED = 120  # a session lasts 195 s here (an early close 105 s): the market stays open through the test
ENV = {"ALPACA_API_KEY": "verify-key", "ALPACA_SECRET_KEY": "verify-secret"}


def _gone(pid: int, port: int) -> None:
    assert not procs.pid_alive(pid), f"exchange process {pid} still running"
    assert not procs.port_listening(port), f"exchange port {port} still listening"


def test_alpaca_random_kills_drill_zero_violations_exchange_stays_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "ops" / "drills" / "random_kills.py"), "--broker", "alpaca",
                             "--count", "12", "--seed", "20261122", "--data-dir", str(tmp_path), "--json",
                             *start_args()],
                            capture_output=True, text=True, timeout=90, cwd=REPO)
    totals: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    left = procs.run_processes(tmp_path / "var")
    procs.terminate(left)
    assert not left, f"processes left by the drill: {[p.pid for p in left]}"
    exchange = totals["exchange"]
    _gone(exchange["pid"], exchange["port"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert totals["broker"] == "alpaca" and totals["kills"] >= 10 and totals["violations"] == 0
    assert {"actor", "power_cut"} <= set(totals["by_kind"])
    # One exchange process for the whole drill, checked after every kill and stopped cleanly at the end.
    assert exchange["stayed_up"] and exchange["checks"] >= totals["kills"]
    assert exchange["exit_code"] == 0 and exchange["port_closed"] and exchange["process_gone"]
    assert totals["verify_running"]["ok"] and totals["verify_stopped"]["ok"]
    # It traded through Alpaca's API across the kills. How many orders 12 kills leave room for depends on
    # the machine's load and the simulated day (6 to 19 fills seen; an early close trades less): the
    # invariants above are the point, so this only proves that trading happened.
    assert totals["verify_stopped"]["counts"]["broker_fills"] >= 3


@pytest.fixture
def exchange(data_dir: Path, tmp_path: Path) -> Iterator[Exchange]:
    """``steadyhand exchange serve`` on the bot's data dir; stopped and proven gone."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "exchange.toml"
    config.write_text(f"[sim]\nspeed = {SPEED}\n")
    served = Exchange(data_dir, config, start=start_text())
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            assert served.stop() == 0
        _gone(served.pid, served.port)


def _verify(bot: Any) -> tuple[int, dict[str, Any]]:
    result = bot.cli("verify", "--json", "--config", str(bot.config_path))
    return result.returncode, json.loads(result.stdout)


def test_verify_on_alpaca_reports_an_order_placed_behind_the_bots_back_and_a_start_clears_it(
    make_bot: Any, exchange: Exchange
) -> None:
    config = (f'broker = "alpaca"\n[sim]\nspeed = {SPEED}\n[alpaca]\npaper = true\n'
              + "".join(f'{k} = "{v}"\n' for k, v in exchange.urls.items()))
    bot = make_bot(config=config, env=ENV).start()
    poll(lambda: bot.status()["fills"] > 0, timeout=60, what="a fill through Alpaca's API")
    assert bot.stop() == 0
    code, clean = _verify(bot)
    assert code == 0 and clean["ok"] and not clean["running"], clean
    assert clean["counts"]["broker_fills"] >= 1 and clean["counts"]["broker_orders"] >= 1

    # While the bot is down, someone trades on the account directly through the REST API: a limit
    # order far below the market (stays open) and a market order (fills) with ids the journal never saw.
    client = TradingClient("someone", "else", paper=True, url_override=exchange.urls["trading_url"])
    stray = f"manual-{uuid.uuid4().hex[:8]}"
    client.submit_order(LimitOrderRequest(symbol="MSFT", qty=3, side="buy", time_in_force="day", limit_price=1.0,
                                          client_order_id=stray))
    market = f"manual-{uuid.uuid4().hex[:8]}"
    client.submit_order(MarketOrderRequest(symbol="SPY", qty=7, side="buy", time_in_force="day",
                                           client_order_id=market))
    poll(lambda: client.get_order_by_client_id(market).status.value == "filled", timeout=30,
         what="the stray market order filled (all of it: partial fills happen)")

    code, found = _verify(bot)
    assert code == 1 and not found["ok"], found
    assert [o["client_order_id"] for o in found["unknown_open_orders"]] == [stray]
    assert found["unknown_open_orders"][0]["symbol"] == "MSFT" and found["unknown_open_orders"][0]["qty"] == 3
    spy = [m for m in found["position_mismatches"] if m["symbol"] == "SPY"]
    assert spy and spy[0]["broker"] - spy[0]["journal"] == 7, found["position_mismatches"]
    assert not found["duplicate_submissions"] and not found["lost_fills"]  # not ours: no lost fill

    # The next start reconciles: the unknown order cancelled (policy "cancel"), the broker's position adopted.
    again = make_bot(config=config, env=ENV).start()
    report = poll(lambda: (s := again.status())["last_reconciliation"] and s["last_reconciliation"], timeout=60,
                  what="the start's reconciliation")
    assert report["reason"] == "start"
    assert client.get_order_by_client_id(stray).status.value == "canceled"
    code, running = _verify(again)
    assert code == 0 and running["ok"] and running["running"], running
    assert again.stop() == 0
    code, stopped = _verify(again)
    assert code == 0 and stopped["ok"], stopped
    assert exchange.up  # the exchange served the whole time, through two bots
    client._session.close()
