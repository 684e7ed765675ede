"""Death at each named crash point of the order path, in a real ``steadyhand run``; then the next
start (or the supervisor's restart of the OMS) reconciles and ``verify`` proves the invariants:
no client order id submitted twice, no fill lost, no unknown open order, positions equal.

``name:1:group`` SIGKILLs the whole process group at the point (a power cut exactly there);
``name:1`` kills only the OMS process, which the supervisor restarts.
"""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, broker_order, last_session, order_row, query, reports
from harness import poll
from steadyhand.config import Settings
from steadyhand.control.verify import verify
from steadyhand.runtime import crashpoints, procs

FAST = ("--speed", "600")  # ten simulated minutes a second: orders and fills come at once


def _crash_env(point: str) -> dict[str, str]:
    return {crashpoints.ENV: point}


def _die_at(make_bot: Any, data_dir: Path, point: str) -> None:
    """Run until the point fires and takes the whole group down."""
    bot = make_bot(args=FAST, env=_crash_env(point)).start(may_die_first=point.endswith(":group"))
    poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=30, what=f"{point} to fire")
    assert bot.proc.wait(10) == -signal.SIGKILL
    # nothing of the run survives the power cut (SIGKILLed processes take a moment to be gone)
    poll(lambda: not procs.run_processes(data_dir), timeout=5, what="every process of the run gone")


def _restart_and_verify(make_bot: Any, data_dir: Path) -> dict[str, Any]:
    before = len(reports(data_dir))
    bot = make_bot(args=FAST).start()
    report = poll(lambda: len(r := reports(data_dir)) > before and r[-1], timeout=20, what="a new report")
    result = verify(data_dir, Settings())
    assert result["ok"], json.dumps(result, indent=1)
    assert bot.stop() == 0
    return report


def _pending(data_dir: Path) -> list[str]:
    return [r["client_order_id"]
            for r in query(data_dir, "SELECT client_order_id FROM orders WHERE status = 'pending_submit'")]


def test_after_journal_before_submit(make_bot: Any, data_dir: Path) -> None:
    _die_at(make_bot, data_dir, "oms.after_journal:1:group")
    pending = _pending(data_dir)
    assert pending and all(broker_order(data_dir, cid) is None for cid in pending)
    report = _restart_and_verify(make_bot, data_dir)
    assert set(pending) <= set(report["never_submitted"])
    assert all(order_row(data_dir, cid)["status"] == "never_submitted" for cid in pending)
    assert all(broker_order(data_dir, cid) is None for cid in pending)  # and not sent late either


def test_after_submit_before_the_ack_is_journaled(make_bot: Any, data_dir: Path) -> None:
    _die_at(make_bot, data_dir, "oms.after_submit:1:group")
    pending = _pending(data_dir)
    # The OMS died right after the broker accepted its chunk (one submit_many: one exchange
    # transaction), before any acknowledgement was journaled: every row of the chunk is still
    # PENDING_SUBMIT, and every one is at the broker.
    sent = [cid for cid in pending if broker_order(data_dir, cid) is not None]
    assert sent and set(sent) == set(pending), f"pending {pending}, at the broker {sent}"
    report = _restart_and_verify(make_bot, data_dir)  # verify: no client order id submitted twice
    assert set(sent) <= {c["client_order_id"] for c in report["caught_up"]}
    for cid in sent:
        row, at_broker = order_row(data_dir, cid), broker_order(data_dir, cid)
        assert at_broker is not None and row["broker_order_id"] == at_broker.broker_order_id
        assert row["status"] == at_broker.status.value


def test_after_a_fill_is_received_before_it_is_journaled(make_bot: Any, data_dir: Path) -> None:
    _die_at(make_bot, data_dir, "oms.after_fill_received:1:group")
    down = verify(data_dir, Settings())
    assert down["ok"] and not down["running"]
    assert down["pending_catch_up"], "the fill the OMS died holding is at the broker, not journaled"
    missing = {f["fill_id"] for f in down["pending_catch_up"]}
    report = _restart_and_verify(make_bot, data_dir)
    assert report["fills_recovered"] >= len(missing)
    journaled = {r["fill_id"] for r in query(data_dir, "SELECT fill_id FROM fills")}
    assert missing <= journaled


def _quiet_prep(data_dir: Path, n: int) -> list[str]:
    """``n`` working GTC orders, journaled and acknowledged; the bot will start after the close."""
    _, close = last_session()
    prep = Prep(data_dir, close - timedelta(minutes=5))
    cids = [f"q-{i}" for i in range(n)]
    for cid in cids:
        prep.order(cid, "SPY")
    prep.order("q-pending", "QQQ", journal="only")
    prep.anchor(close + timedelta(minutes=1), speed=60.0)
    prep.close()
    return cids


def test_in_the_middle_of_reconciliation(make_bot: Any, data_dir: Path) -> None:
    cids = _quiet_prep(data_dir, 2)
    bot = make_bot(args=("--speed", "60"), env=_crash_env("oms.mid_reconcile:1")).start()
    poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=20, what="the OMS dying mid-reconcile")
    status = poll(lambda: (s := bot.status())["actors"]["oms"]["restarts"] == 1 and s["last_reconciliation"]
                  and s, timeout=20, what="the restarted OMS's report")
    assert len(reports(data_dir)) == 1  # the dead OMS stored none; the restarted one a whole one
    assert order_row(data_dir, "q-pending")["status"] == "never_submitted"
    assert all(order_row(data_dir, cid)["status"] == "submitted" for cid in cids)
    assert status["trading_state"] == "active"
    result = verify(data_dir, Settings())
    assert result["ok"], json.dumps(result, indent=1)


@pytest.mark.parametrize("group", [False, True], ids=["oms-alone", "power-cut"])
def test_in_the_middle_of_a_cancel_all(make_bot: Any, data_dir: Path, group: bool) -> None:
    cids = _quiet_prep(data_dir, 3)
    config = '[oms]\ncancel_on_shutdown = "all"\n'
    point = "oms.mid_cancel_all:1" + (":group" if group else "")
    bot = make_bot(config=config, args=("--speed", "60"), env=_crash_env(point)).start()
    poll(lambda: reports(data_dir), timeout=20, what="the first report")
    bot.stop(signal.SIGINT)  # the shutdown cancel-all dies after the broker cancelled, before the journal
    assert crashpoints.fired_path(data_dir).exists()
    states = [broker_order(data_dir, cid).status.value for cid in cids]  # type: ignore[union-attr]
    assert states == ["canceled"] * 3  # one request cancels the whole book at the broker
    assert [order_row(data_dir, cid)["status"] for cid in cids] == ["submitted"] * 3  # not journaled yet
    again = make_bot(config=config, args=("--speed", "60")).start()
    report = poll(lambda: len(r := reports(data_dir)) > 1 and r[-1], timeout=20, what="the second report")
    assert [c["status"] for c in report["caught_up"]] == ["canceled"] * 3
    result = verify(data_dir, Settings())
    assert result["ok"], json.dumps(result, indent=1)
    assert again.stop() == 0  # this time the cancel-all completes
    assert all(broker_order(data_dir, cid).status.value == "canceled" for cid in cids)  # type: ignore[union-attr]
    assert all(order_row(data_dir, cid)["status"] == "canceled" for cid in cids)
