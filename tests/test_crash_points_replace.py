"""Death at the replace crash points in a real ``steadyhand run``, on the sim, on IBKR (the TWS
face as its own process, the "Gateway" that outlives the power cut) and on Alpaca (``exchange
serve`` as its own process, the trading day running). No bundled strategy replaces
yet, so the replace comes through the test hook ``DebugToActor`` straight to the OMS (risk's part
is tests/test_replace_actors.py). Killed there with the whole run (``:group``), the next start's
reconciliation settles it from the broker and ``verify`` proves the invariants."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, broker_order, last_session, order_row, reports
from harness import REPO, poll, start_args
from steadyhand.actors.messages import DebugToActor, OrderRequests, ReplaceOrder
from steadyhand.config import Settings, parse_settings
from steadyhand.control.client import connect
from steadyhand.control.verify import verify
from steadyhand.domain import OrderSpec, OrderType, Side, TimeInForce
from steadyhand.runtime import crashpoints, procs
from twskit import IbkrPrep, ibkr_config, tws_process

SPEED = "60"
CID = "sma-SPY-X-B0"  # the strategy's prefix; never an id its own bars make
ALPACA_ENV = {"ALPACA_API_KEY": "dev-key", "ALPACA_SECRET_KEY": "dev-secret"}
NEW_LIMIT = Decimal("1.01")  # still far below the market: nothing fills


@contextmanager
def _quiet(data_dir: Path, broker: str) -> Iterator[str | None]:
    """One working GTC limit order, journaled and acknowledged; the bot starts after the close (the
    strategy stays quiet). Yields the bot's config (None: the default sim). On Alpaca the exchange
    serves the trading day and the OMS places the order once running (``_place``)."""
    _, close = last_session()
    if broker == "alpaca":
        with _exchange_serve(data_dir) as urls:
            yield ('broker = "alpaca"\n' f"[sim]\nspeed = {SPEED}\n[alpaca]\npaper = true\n"
                   + "".join(f'{k} = "{v}"\n' for k, v in urls.items()))
        return
    if broker == "sim":
        prep = Prep(data_dir, close - timedelta(minutes=5))
        prep.order(CID, "SPY")
        prep.at(close + timedelta(seconds=30))
        prep.anchor(close + timedelta(minutes=1), float(SPEED))
        prep.close()
        yield None
        return
    ibkr = IbkrPrep(data_dir, close - timedelta(minutes=5))
    ibkr.order(CID, "SPY")
    ibkr.close(close + timedelta(minutes=1), float(SPEED))
    with tws_process(data_dir, SPEED) as face:
        yield ibkr_config(face["port"])


@contextmanager
def _exchange_serve(data_dir: Path) -> Iterator[dict[str, str]]:
    """`steadyhand exchange serve` as its own process on the bot's data dir; stopped and proven gone."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / "exchange.toml"
    config.write_text(f"[sim]\nspeed = {SPEED}\n")
    proc = subprocess.Popen([sys.executable, "-m", "steadyhand.cli", "exchange", "serve", "--port", "0",
                             "--data-dir", str(data_dir), "--config", str(config), *start_args()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    info_file = data_dir / "exchange.json"
    try:
        poll(lambda: info_file.exists(), timeout=30, what="the exchange to serve")
        info = json.loads(info_file.read_text())
        yield {k: v for k, v in info.items() if k.endswith("_url")}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not procs.port_listening(info["port"])


def _place(data_dir: Path) -> None:
    """The OMS journals and places the working order (the Alpaca case: no book to prepare offline)."""
    spec = OrderSpec(CID, "SPY", Side.BUY, 1, type=OrderType.LIMIT, time_in_force=TimeInForce.GTC,
                     limit_price=Decimal("1.00"))
    assert connect(data_dir).ask(DebugToActor("oms", OrderRequests((spec,)))) is True
    poll(lambda: order_row_or_none(data_dir) == "submitted", timeout=20, what="the order working")


def order_row_or_none(data_dir: Path) -> str | None:
    from crashkit import query

    rows = query(data_dir, "SELECT status FROM orders WHERE client_order_id = ?", (CID,))
    return rows[0]["status"] if rows else None


def _settings(config: str | None) -> Settings:
    return parse_settings(tomllib.loads(config)) if config else Settings()


@pytest.mark.parametrize("broker", ["sim", "ibkr", "alpaca"])
@pytest.mark.parametrize("point", ["oms.after_replace_journal", "oms.after_replace"])
def test_killed_at_a_replace_crash_point(make_bot: Any, data_dir: Path, broker: str, point: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    env = ALPACA_ENV if broker == "alpaca" else {}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # verify, in this process, reads Alpaca through its REST API
    with _quiet(data_dir, broker) as config:
        original = broker_order(data_dir, CID) if broker == "sim" else None
        bot = make_bot(config=config, args=("--speed", SPEED), env={crashpoints.ENV: f"{point}:1:group", **env}).start()
        poll(lambda: reports(data_dir), timeout=30, what="the first report")
        if broker == "alpaca":
            _place(data_dir)
        assert connect(data_dir).ask(DebugToActor("oms", ReplaceOrder(CID, 2, NEW_LIMIT, None, "test",
                                                                      strategy="sma"))) is True
        poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=30, what=f"{point} to fire")
        assert bot.proc.wait(10) == -signal.SIGKILL
        poll(lambda: not procs.run_processes(data_dir), timeout=5, what="every process of the run gone")
        assert order_row(data_dir, CID)["replace_state"] == "pending"  # journaled before the broker call

        again = make_bot(config=config, args=("--speed", SPEED), env=env).start()
        report = poll(lambda: len(r := reports(data_dir)) > 1 and r[-1], timeout=30, what="the second report")
        result = verify(data_dir, _settings(config))
        assert result["ok"], json.dumps(result, indent=1)
        assert again.stop() == 0
    assert report["unknown_orders"] == [] and report["lost_at_broker"] == []
    row = order_row(data_dir, CID)
    if point == "oms.after_replace_journal":  # the broker never heard of it
        assert report["replaces_settled"] == {CID: "not_applied"}
        assert (row["replace_state"], row["status"], row["qty"]) == ("not_applied", "submitted", 1)
        if original is not None:
            assert broker_order(data_dir, CID) == original
    elif broker in ("sim", "alpaca"):  # a new order: journaled as ours, the old one replaced
        assert report["replaces_settled"] == {CID: "applied"}
        assert (row["replace_state"], row["status"], row["replaced_by"]) == ("applied", "replaced", f"{CID}~r1")
        new = order_row(data_dir, f"{CID}~r1")
        assert (new["status"], new["qty"], Decimal(new["limit_price"]), new["replaces"]) == (
            "submitted", 2, NEW_LIMIT, CID)
    else:  # IB amended it in place
        assert report["replaces_settled"] == {CID: "applied"}
        assert (row["replace_state"], row["status"], row["qty"], Decimal(row["limit_price"])) == (
            "applied", "submitted", 2, NEW_LIMIT)
