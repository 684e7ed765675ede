"""The reconciliation and shutdown policies of ``[oms]``, each against a real ``steadyhand run``:
``unknown_order_policy = cancel | adopt | alert`` (cancel: see the matrix) and
``cancel_on_shutdown = all | day | none``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, alerts, broker_order, last_session, order_row, query, reports
from harness import poll
from steadyhand.config import parse_settings
from steadyhand.control.verify import verify
from steadyhand.domain import TimeInForce


@pytest.mark.parametrize("policy", ["adopt", "alert"])
def test_unknown_open_order_policy(make_bot: Any, data_dir: Path, policy: str) -> None:
    _, close = last_session()
    prep = Prep(data_dir, close - timedelta(minutes=5))
    prep.order("ext-1", "SPY", qty=3, journal="none")  # placed by hand in the bot's account
    prep.anchor(close + timedelta(minutes=1), speed=60.0)
    prep.close()
    config = f'[oms]\nunknown_order_policy = "{policy}"\n'
    bot = make_bot(config=config, args=("--speed", "60")).start()
    report = poll(lambda: (r := reports(data_dir)) and r[0], timeout=20, what="the report")
    assert [(u["client_order_id"], u["action"]) for u in report["unknown_orders"]] == [("ext-1", policy)]
    alert = poll(lambda: [a for a in alerts(data_dir) if a["key"] == "reconcile:unknown_orders"], timeout=10,
                 what="the CRITICAL alert")[0]
    assert alert["severity"] == "critical" and "ext-1" in alert["body"]
    at_broker = broker_order(data_dir, "ext-1")
    assert at_broker is not None and at_broker.status.value == "submitted"  # left working either way
    result = bot.cli("verify", "--json", "--config", str(bot.config_path))
    checked = json.loads(result.stdout)
    if policy == "adopt":
        assert "-> adopted into the journal" in report["lines"][0]
        row = order_row(data_dir, "ext-1")
        assert (row["status"], row["broker_order_id"]) == ("submitted", at_broker.broker_order_id)
        assert result.returncode == 0 and checked["ok"]
    else:
        assert "-> left working (alert only)" in report["lines"][0]
        assert not query(data_dir, "SELECT 1 FROM orders WHERE client_order_id = 'ext-1'")
        assert result.returncode == 1 and not checked["ok"]  # an operator must act: verify says so
        assert [u["client_order_id"] for u in checked["unknown_open_orders"]] == ["ext-1"]
    assert bot.stop() == 0


@pytest.mark.parametrize("policy, canceled", [("all", {"s-day", "s-gtc"}), ("day", {"s-day"}), ("none", set())])
def test_cancel_on_shutdown(make_bot: Any, data_dir: Path, policy: str, canceled: set[str]) -> None:
    opened, _ = last_session()
    prep = Prep(data_dir, opened + timedelta(hours=1))
    prep.order("s-day", "SPY", tif=TimeInForce.DAY)
    prep.order("s-gtc", "QQQ", tif=TimeInForce.GTC)
    prep.anchor(opened + timedelta(hours=1, minutes=1), speed=60.0)  # mid-session: day orders live on
    prep.close()
    bot = make_bot(config=f'[oms]\ncancel_on_shutdown = "{policy}"\n', args=("--speed", "60")).start()
    poll(lambda: reports(data_dir), timeout=20, what="the report")
    assert bot.stop() == 0
    for cid in ("s-day", "s-gtc"):
        expected = "canceled" if cid in canceled else "submitted"
        assert broker_order(data_dir, cid).status.value == expected, cid  # type: ignore[union-attr]
        assert order_row(data_dir, cid)["status"] == expected, cid  # journaled before the OMS went
    settings = parse_settings({"oms": {"cancel_on_shutdown": policy}})
    result = verify(data_dir, settings)
    assert result["ok"], json.dumps(result, indent=1)
