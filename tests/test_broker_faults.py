"""Broker faults, switched on and off at run time through the sim exchange's fault switch.

First the switch itself on a real exchange.db (no processes); then one real ``steadyhand run``
lives through a disconnect, lost replies (timeouts) and an exchange that rejects everything: the
circuit opens, risk denies, alerts go out, no client order id is submitted twice, and everything
recovers by itself once the fault is cleared.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, alerts, broker_order, last_session, log_events, order_row, query, reports
from harness import poll
from steadyhand.brokers.base import OrderRejected, TransientBrokerError, UnknownOutcome
from steadyhand.config import parse_settings
from steadyhand.control.verify import verify
from steadyhand.domain import OrderSpec, Side
from steadyhand.sim.faults import clear_fault, set_fault

# --- the switch ----------------------------------------------------------------------------------


@pytest.fixture
def prep(data_dir: Path) -> Any:
    opened, _ = last_session()
    p = Prep(data_dir, opened + timedelta(hours=1))
    p.ex = type(p.ex)(p.ex.db_path, p.ex.market, p.clock)  # this one honours the switch
    yield p
    p.close()


def _spec(cid: str) -> OrderSpec:
    return OrderSpec(client_order_id=cid, symbol="AAPL", side=Side.BUY, qty=1)


def test_fault_modes_on_the_exchange(prep: Any, data_dir: Path) -> None:
    ex = prep.ex
    set_fault(data_dir, "error")
    with pytest.raises(TransientBrokerError, match="503"):
        ex.submit(_spec("a"))
    with pytest.raises(TransientBrokerError):
        ex.positions()
    set_fault(data_dir, "disconnect")
    with pytest.raises(TransientBrokerError, match="connection refused"):
        ex.poll(None)
    set_fault(data_dir, "reject")
    with pytest.raises(OrderRejected, match="simulated fault"):
        ex.submit(_spec("b"))
    assert ex.open_orders() == []  # reads work while rejecting
    set_fault(data_dir, "timeout", delay_s=0.05, ops=("submit",))
    with pytest.raises(UnknownOutcome):
        ex.submit(_spec("c"))
    assert ex.get_by_client_id("c") is not None  # the order got there; only the reply was lost
    set_fault(data_dir, "slow", delay_s=0.3)
    started = time.monotonic()
    assert ex.get_by_client_id("c") is not None
    assert time.monotonic() - started >= 0.3
    clear_fault(data_dir)
    assert ex.submit(_spec("d")).client_order_id == "d"
    assert ex.get_by_client_id("a") is None and ex.get_by_client_id("b") is None  # nothing half-done
    with pytest.raises(ValueError):
        set_fault(data_dir, "explode")


# --- a running bot ------------------------------------------------------------------------------

# A jumpy strategy at 120x: orders often enough for every phase, and the market open throughout
# (even an early-close session, 3.5 h, lasts 105 s here; at 300x it was 42 s, this whole test).
CONFIG = """
[oms]
circuit_failures = 3
circuit_cooldown_s = 2.0

[strategy]
fast = 2
slow = 3
"""


def _events(data_dir: Path, event: str) -> list[dict[str, Any]]:
    return log_events(data_dir, "oms", event)


def test_bot_lives_through_broker_faults_and_recovers_by_itself(make_bot: Any, data_dir: Path) -> None:
    bot = make_bot(config=CONFIG, args=("--speed", "120")).start()
    poll(lambda: bot.status()["fills"] >= 1, timeout=30, what="trading under way")

    # 1. Disconnected: the circuit opens, risk denies, a CRITICAL alert; then it recovers.
    set_fault(data_dir, "disconnect")
    opened = poll(lambda: _events(data_dir, "circuit_open"), timeout=10, what="the circuit opening")[0]
    assert opened["kind"] == "unreachable"
    poll(lambda: query(data_dir, "SELECT 1 FROM risk_decisions WHERE reason LIKE 'broker unavailable%'"),
         timeout=20, what="risk denying while the broker is down")
    down_until = time.time()
    clear_fault(data_dir)
    poll(lambda: _events(data_dir, "circuit_closed"), timeout=10, what="the circuit closing")
    assert not query(data_dir, "SELECT 1 FROM orders WHERE created_at > ? AND created_at < ?",
                     (opened["ts"], _iso(down_until))), "an order went out while the circuit was open"
    poll(lambda: any(r["reason"] == "broker recovered" for r in reports(data_dir)), timeout=10,
         what="a reconciliation after the outage")
    # The alerter records alerts asynchronously: wait for the resolved one to be stored.
    keys = poll(lambda: "broker:circuit_closed" in (k := {a["key"]: a["severity"] for a in alerts(data_dir)})
                and k, timeout=10, what="the resolved alert stored")
    assert keys.get("broker:circuit") == "critical"

    # 2. Replies lost (timeouts): every submission gets there, the OMS finds it by id, never resubmits.
    def failed_submits() -> list[dict[str, Any]]:
        # A chunk goes out as one submit_many; its failure is logged once, naming its first order.
        return [x for x in _events(data_dir, "broker_call_failed") if x["op"] in ("submit", "submit_many")]

    earlier = len(failed_submits())  # a submit may have failed during the disconnect, on some days' bars
    set_fault(data_dir, "timeout", delay_s=0.05, ops=("submit",))
    lost = poll(lambda: len(e := failed_submits()[earlier:]) >= 2 and e, timeout=30,
                what="two submissions with lost replies")
    clear_fault(data_dir)
    for event in lost[:2]:
        cid = re.search(r"submitting (\S+?)'", event["error"]).group(1)  # type: ignore[union-attr]
        row = poll(lambda cid=cid: (r := order_row(data_dir, cid))["status"] != "pending_submit" and r,
                   timeout=10, what=f"{cid} acknowledged after its lost reply")
        at_broker = broker_order(data_dir, cid)
        assert at_broker is not None and row["broker_order_id"] == at_broker.broker_order_id

    # 3. Everything rejected: alerts per order, the circuit opens, closes after its cool-down.
    rejected_before = len(_events(data_dir, "circuit_open"))
    set_fault(data_dir, "reject")
    poll(lambda: len(_events(data_dir, "circuit_open")) > rejected_before, timeout=30,
         what="the circuit opening on rejections")
    assert _events(data_dir, "circuit_open")[-1]["kind"] == "rejecting"
    clear_fault(data_dir)
    closed_before = len(_events(data_dir, "circuit_closed"))
    poll(lambda: len(_events(data_dir, "circuit_closed")) > closed_before, timeout=15, what="closing again")
    poll(lambda: any(a["key"].startswith("rejected:") and a["severity"] == "high" for a in alerts(data_dir)),
         timeout=10, what="a rejection alert stored")
    after = _iso(time.time())
    poll(lambda: query(data_dir, "SELECT 1 FROM orders WHERE created_at > ? AND status != 'rejected'",
                       (after,)), timeout=30, what="orders accepted again")

    result = verify(data_dir, parse_settings({}))
    assert result["ok"], json.dumps(result, indent=1)
    assert result["duplicate_submissions"] == []
    assert not query(data_dir, "SELECT 1 FROM orders WHERE status = 'pending_submit' AND created_at < ?",
                     (after,)), "a submission with a lost reply was left unresolved"
    assert bot.stop() == 0


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()
