"""A restarted OMS reconciles before risk lets any new order through.

The OMS alone is SIGKILLed while the strategy keeps signalling. The broker is made slow (a sim
fault) so the new OMS's reconciliation takes seconds, long enough for signals to arrive during it:
they must be denied ("reconciling"), and no order may be journaled or reach the broker until the
new report is stored; then trading resumes by itself.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from crashkit import exchange, query, reports
from harness import poll
from steadyhand.config import Settings
from steadyhand.control.verify import verify
from steadyhand.sim.faults import clear_fault, set_fault
from steadyhand.state import store


def test_restarted_oms_reconciles_before_any_new_order(make_bot: Any, data_dir: Path) -> None:
    # Short SMA windows cross nearly every few bars: signals keep coming while the OMS reconciles.
    # 120x: the market stays open through the test even on an early-close day (105 s; 42 s at 300x).
    bot = make_bot(config="[strategy]\nfast = 2\nslow = 3\n", args=("--speed", "120")).start()
    poll(lambda: bot.status()["fills"] >= 1, timeout=30, what="trading under way")
    old_pid = bot.status()["actors"]["oms"]["pid"]
    before = len(reports(data_dir))
    set_fault(data_dir, "slow", delay_s=0.6)  # every broker call takes 0.6 s
    killed_at = store.now_iso()
    os.kill(old_pid, signal.SIGKILL)
    poll(lambda: bot.status()["actors"]["oms"]["pid"] not in (0, old_pid), timeout=15, what="a new OMS")
    report = poll(lambda: len(r := reports(data_dir)) > before and r[-1], timeout=40, what="the new report")
    clear_fault(data_dir)
    finished = report["finished_at"]
    assert report["reason"] == "start"

    denied = query(data_dir, "SELECT reason FROM risk_decisions WHERE ts > ? AND ts < ? AND approved = 0",
                   (killed_at, finished))
    assert any("reconciling" in d["reason"] for d in denied), "no signal came while it reconciled"
    assert not query(data_dir, "SELECT client_order_id FROM orders WHERE created_at > ? AND created_at < ?",
                     (killed_at, finished)), "an order was journaled before the report was in"
    ex = exchange(data_dir)
    try:
        journaled = {r["client_order_id"] for r in query(data_dir, "SELECT client_order_id FROM orders")}
        assert {o.client_order_id for o in ex.all_orders()} <= journaled
    finally:
        ex.close()

    poll(lambda: query(data_dir, "SELECT 1 FROM orders WHERE created_at > ?", (finished,)), timeout=30,
         what="orders flowing again after the report")
    result = verify(data_dir, Settings())
    assert result["ok"], json.dumps(result, indent=1)
