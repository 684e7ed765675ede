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
from steadyhand import crashpoints, procs
from steadyhand.config import parse_settings
from steadyhand.verify import verify
from twskit import ibkr_config, tws_process

SPEED = "600"  # ten simulated minutes a second: orders and fills come at once


@pytest.fixture
def face(data_dir: Path) -> Iterator[dict[str, Any]]:
    with tws_process(data_dir, SPEED) as info:
        yield info


def _die_at(make_bot: Any, data_dir: Path, config: str, point: str) -> None:
    bot = make_bot(config=config, args=("--speed", SPEED), env={crashpoints.ENV: point}).start()
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
    assert len(pending) == 1 and broker_order(data_dir, pending[0]) is not None  # the Gateway has it
    report = _restart_and_verify(make_bot, data_dir, config)
    assert pending[0] in {c["client_order_id"] for c in report["caught_up"]}
    row, at_book = order_row(data_dir, pending[0]), broker_order(data_dir, pending[0])
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
