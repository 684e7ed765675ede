"""Death at the order path's crash points with ``broker = "ibkr"``: the bot trades through ib_async
against the TWS face (its own process, the "Gateway", which outlives the power cut); the next start
reconciles through the IB API and ``verify`` (reading executions, open and completed orders and
positions through the API) proves the invariants: no orderRef placed twice, no fill lost, no
unknown open order, positions equal."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crashkit import broker_order, order_row, query, reports
from harness import poll
from steadyhand.config import parse_settings
from steadyhand.control.verify import verify
from steadyhand.runtime import crashpoints, procs
from twskit import ibkr_config, tws_process

SPEED = "600"  # ten simulated minutes a second: orders and fills come at once


@pytest.fixture
def face(data_dir: Path) -> Iterator[dict[str, Any]]:
    with tws_process(data_dir, SPEED) as info:
        yield info


def _die_at(make_bot: Any, data_dir: Path, config: str, point: str) -> None:
    bot = make_bot(config=config, args=("--speed", SPEED), env={crashpoints.ENV: point}).start(
        may_die_first=point.endswith(":group"))
    poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=60, what=f"{point} to fire")
    assert bot.proc.wait(10) == -signal.SIGKILL
    poll(lambda: not procs.run_processes(data_dir), timeout=5, what="every process of the run gone")


def _restart_and_verify(make_bot: Any, data_dir: Path, config: str) -> dict[str, Any]:
    before = len(reports(data_dir))
    bot = make_bot(config=config, args=("--speed", SPEED)).start()
    report = poll(lambda: len(r := reports(data_dir)) > before and r[-1], timeout=30, what="a new report")
    result = verify(data_dir, parse_settings(_toml(config)))
    assert result["ok"], json.dumps(result, indent=1)
    assert bot.stop() == 0
    return report


def _toml(config: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(config)


def _pending(data_dir: Path) -> list[str]:
    return [r["client_order_id"]
            for r in query(data_dir, "SELECT client_order_id FROM orders WHERE status = 'pending_submit'")]


def test_ibkr_after_journal_before_submit(make_bot: Any, data_dir: Path, face: dict[str, Any]) -> None:
    config = ibkr_config(face["port"])
    _die_at(make_bot, data_dir, config, "oms.after_journal:1:group")
    pending = _pending(data_dir)
    assert pending and all(broker_order(data_dir, cid) is None for cid in pending)
    report = _restart_and_verify(make_bot, data_dir, config)
    assert set(pending) <= set(report["never_submitted"])
    assert all(order_row(data_dir, cid)["status"] == "never_submitted" for cid in pending)
    assert all(broker_order(data_dir, cid) is None for cid in pending)  # and not sent late either


def test_ibkr_after_submit_before_the_ack_is_journaled(make_bot: Any, data_dir: Path,
                                                       face: dict[str, Any]) -> None:
    config = ibkr_config(face["port"])
    _die_at(make_bot, data_dir, config, "oms.after_submit:1:group")
    pending = _pending(data_dir)
    # The OMS died right after the Gateway took its chunk (submit_many: one placeOrder after
    # another), before any acknowledgement was journaled: every row is PENDING_SUBMIT and at the Gateway.
    sent = [cid for cid in pending if broker_order(data_dir, cid) is not None]
    assert sent and set(sent) == set(pending), f"pending {pending}, at the Gateway {sent}"
    report = _restart_and_verify(make_bot, data_dir, config)
    assert set(sent) <= {c["client_order_id"] for c in report["caught_up"]}
    for cid in sent:
        row, at_book = order_row(data_dir, cid), broker_order(data_dir, cid)
        assert at_book is not None and row["status"] == at_book.status.value
        assert row["broker_order_id"].isdigit()  # the IB order id it was placed with, from ibkr.db


def test_ibkr_after_a_fill_is_received_before_it_is_journaled(make_bot: Any, data_dir: Path,
                                                              face: dict[str, Any]) -> None:
    config = ibkr_config(face["port"])
    _die_at(make_bot, data_dir, config, "oms.after_fill_received:1:group")
    report = _restart_and_verify(make_bot, data_dir, config)
    assert report["fills_recovered"] >= 1
    fills = query(data_dir, "SELECT fill_id FROM fills")
    assert len({r["fill_id"] for r in fills}) == len(fills)  # each execId journaled once


def _quiet_prep(data_dir: Path, n: int) -> list[str]:
    """``n`` working GTC orders placed through the IB API, journaled and acknowledged; the bot will
    start after the close (the face process then takes over the same book and clock)."""
    from datetime import timedelta

    from crashkit import last_session
    from twskit import IbkrPrep

    _, close = last_session()
    prep = IbkrPrep(data_dir, close - timedelta(minutes=5))
    cids = [f"q-{i}" for i in range(n)]
    for cid in cids:
        prep.order(cid, "SPY")
    prep.order("q-pending", "QQQ", journal="only")
    prep.close(close + timedelta(minutes=1), 60.0)
    return cids


def test_ibkr_in_the_middle_of_reconciliation(make_bot: Any, data_dir: Path) -> None:
    cids = _quiet_prep(data_dir, 2)
    with tws_process(data_dir, "60") as info:
        config = ibkr_config(info["port"])
        bot = make_bot(config=config, args=("--speed", "60"), env={crashpoints.ENV: "oms.mid_reconcile:1"}).start()
        poll(lambda: crashpoints.fired_path(data_dir).exists(), timeout=30, what="the OMS dying mid-reconcile")
        status = poll(lambda: (s := bot.status())["actors"]["oms"]["restarts"] == 1 and s["last_reconciliation"]
                      and s, timeout=40, what="the restarted OMS's report")
        assert len(reports(data_dir)) == 1  # the dead OMS stored none; the restarted one a whole one
        assert order_row(data_dir, "q-pending")["status"] == "never_submitted"
        assert all(order_row(data_dir, cid)["status"] == "submitted" for cid in cids)
        assert status["trading_state"] == "active"
        result = verify(data_dir, parse_settings(_toml(config)))
        assert result["ok"], json.dumps(result, indent=1)
        assert bot.stop() == 0


@pytest.mark.parametrize("group", [False, True], ids=["oms-alone", "power-cut"])
def test_ibkr_in_the_middle_of_a_cancel_all(make_bot: Any, data_dir: Path, group: bool) -> None:
    cids = _quiet_prep(data_dir, 3)
    with tws_process(data_dir, "60") as info:
        config = ibkr_config(info["port"], extra='[oms]\ncancel_on_shutdown = "all"\n')
        point = "oms.mid_cancel_all:1" + (":group" if group else "")
        bot = make_bot(config=config, args=("--speed", "60"), env={crashpoints.ENV: point}).start()
        poll(lambda: reports(data_dir), timeout=30, what="the first report")
        bot.stop(signal.SIGINT)  # the shutdown cancel-all dies after reqGlobalCancel, before the journal
        assert crashpoints.fired_path(data_dir).exists()
        poll(lambda: all(broker_order(data_dir, c).status.value == "canceled" for c in cids),  # type: ignore[union-attr]
             timeout=10, what="the global cancel at the Gateway")
        assert [order_row(data_dir, cid)["status"] for cid in cids] == ["submitted"] * 3  # not journaled yet
        again = make_bot(config=config, args=("--speed", "60")).start()
        report = poll(lambda: len(r := reports(data_dir)) > 1 and r[-1], timeout=30, what="the second report")
        assert [c["status"] for c in report["caught_up"]] == ["canceled"] * 3
        result = verify(data_dir, parse_settings(_toml(config)))
        assert result["ok"], json.dumps(result, indent=1)
        assert again.stop() == 0
        assert all(order_row(data_dir, cid)["status"] == "canceled" for cid in cids)
