"""Death at the replace crash points in a real ``steadyhand run``, on the sim and on IBKR (the TWS
face as its own process, the "Gateway" that outlives the power cut). No bundled strategy replaces
yet, so the replace comes through the test hook ``DebugToActor`` straight to the OMS (risk's part
is tests/test_replace_actors.py). Killed there with the whole run (``:group``), the next start's
reconciliation settles it from the broker and ``verify`` proves the invariants."""

from __future__ import annotations

import json
import signal
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, broker_order, last_session, order_row, reports
from harness import poll
from steadyhand.actors.messages import DebugToActor, ReplaceOrder
from steadyhand.config import Settings, parse_settings
from steadyhand.control.client import connect
from steadyhand.control.verify import verify
from steadyhand.runtime import crashpoints, procs
from twskit import IbkrPrep, ibkr_config, tws_process

SPEED = "60"
CID = "sma-SPY-20261120T2055Z-B0"
NEW_LIMIT = Decimal("1.01")  # still far below the market: nothing fills


@contextmanager
def _quiet(data_dir: Path, broker: str) -> Iterator[str | None]:
    """One working GTC limit order, journaled and acknowledged; the bot starts after the close (the
    strategy stays quiet). Yields the bot's config (None: the default sim)."""
    _, close = last_session()
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


def _settings(config: str | None) -> Settings:
    return parse_settings(tomllib.loads(config)) if config else Settings()


@pytest.mark.parametrize("broker", ["sim", "ibkr"])
@pytest.mark.parametrize("point", ["oms.after_replace_journal", "oms.after_replace"])
def test_killed_at_a_replace_crash_point(make_bot: Any, data_dir: Path, broker: str, point: str) -> None:
    with _quiet(data_dir, broker) as config:
        original = broker_order(data_dir, CID) if broker == "sim" else None
        bot = make_bot(config=config, args=("--speed", SPEED), env={crashpoints.ENV: f"{point}:1:group"}).start()
        poll(lambda: reports(data_dir), timeout=30, what="the first report")
        assert connect(data_dir).ask(DebugToActor("oms", ReplaceOrder(CID, 2, NEW_LIMIT, None, "test",
                                                                      strategy="sma"))) is True
        poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=30, what=f"{point} to fire")
        assert bot.proc.wait(10) == -signal.SIGKILL
        poll(lambda: not procs.run_processes(data_dir), timeout=5, what="every process of the run gone")
        assert order_row(data_dir, CID)["replace_state"] == "pending"  # journaled before the broker call

        again = make_bot(config=config, args=("--speed", SPEED)).start()
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
    elif broker == "sim":  # the sim made a new order: journaled as ours, the old one replaced
        assert report["replaces_settled"] == {CID: "applied"}
        assert (row["replace_state"], row["status"], row["replaced_by"]) == ("applied", "replaced", f"{CID}~r1")
        new = order_row(data_dir, f"{CID}~r1")
        assert (new["status"], new["qty"], Decimal(new["limit_price"]), new["replaces"]) == (
            "submitted", 2, NEW_LIMIT, CID)
    else:  # IB amended it in place
        assert report["replaces_settled"] == {CID: "applied"}
        assert (row["replace_state"], row["status"], row["qty"], Decimal(row["limit_price"])) == (
            "applied", "submitted", 2, NEW_LIMIT)
