"""The reconciliation matrix (DESIGN §6) with ``broker = "ibkr"``: what a bot trading through the IBKR
adapter and killed mid-flight leaves behind (made through the TWS face with the bot's own client id
and ``ibkr.db``), what the "Gateway" did meanwhile, then one start of the bot after the close against
the TWS face as its own process. Each test checks one case; ``verify`` (through the IB API) must be
clean. Where IB differs from the sim it is said: IB has no "expired" (a DAY order left at the close
is Cancelled), and an API client cannot cancel another client's order one by one."""

from __future__ import annotations

import json
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from crashkit import alerts, broker_order, last_session, order_row, query, reports
from harness import Bot, poll
from steadyhand.config import parse_settings
from steadyhand.control.verify import verify
from steadyhand.domain import TimeInForce
from steadyhand.runtime import procs
from twskit import IbkrPrep, ibkr_config, tws_process

SPEED = "60"


@dataclass
class Outcome:
    data_dir: Path
    report: dict[str, Any]
    alerts: list[dict[str, Any]]
    status: dict[str, Any]
    verify_running: dict[str, Any]
    verify_stopped: dict[str, Any]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    data_dir = tmp_path_factory.mktemp("matrix-ibkr") / "var"
    _, close = last_session()
    prep = IbkrPrep(data_dir, close - timedelta(hours=2))
    prep.order("m-stale", "SPY")  # working for two hours by the time the bot looks
    prep.at(close - timedelta(seconds=60))
    prep.order("m-pending", "AAPL", journal="only")  # crash after the journal, before the submit
    prep.order("m-accepted", "QQQ", journal="pending")  # crash after the submit, before the ack
    prep.order("m-filled", "AAPL", qty=10, limit=None, tif=TimeInForce.DAY)  # fills while down
    prep.order("m-canceled", "SPY")
    prep.order("m-day", "QQQ", tif=TimeInForce.DAY)  # left at the close: IB cancels it
    prep.order("ext-unknown", "SPY", journal="none")  # another client's order in our account
    prep.order("ext-filled", "MSFT", qty=7, limit=None, tif=TimeInForce.DAY, journal="none")
    prep.at(close - timedelta(seconds=30))
    canceled = prep.book.ex.get_by_client_id("m-canceled")
    assert canceled is not None
    prep.book.ex.cancel(canceled.broker_order_id)  # cancelled at the broker while the bot is down
    prep.at(close + timedelta(seconds=30))
    prep.close(close + timedelta(minutes=1), float(SPEED))

    with tws_process(data_dir, SPEED) as face:
        config = ibkr_config(face["port"], extra="[oms]\nstale_order_age_s = 3600.0\n")
        bot = Bot(data_dir, config=config, args=("--speed", SPEED))
        try:
            bot.start()
            report = poll(lambda: (r := reports(data_dir)) and r[0], timeout=30, what="the first report")
            poll(lambda: {a["key"] for a in alerts(data_dir)} >= {"reconcile:unknown_orders",
                 "reconcile:differences", "reconcile:stale", "reconcile:caught_up"}, timeout=15, what="alerts")
            status = poll(lambda: (s := bot.status())["positions"].get("MSFT") == 7 and s, timeout=20,
                          what="the portfolio adopting the broker's MSFT position")
            settings = parse_settings(tomllib.loads(config))
            running = verify(data_dir, settings)
            assert bot.stop(signal.SIGINT) == 0
            stopped = verify(data_dir, settings)
        finally:
            if bot.proc is not None and bot.proc.poll() is None:
                bot.kill_group()
            left = procs.run_processes(data_dir)
            procs.terminate(left)
        assert not left and not procs.port_listening(bot.admin_port)
        yield Outcome(data_dir, report, alerts(data_dir), status, running, stopped)


def _alert(outcome: Outcome, key: str) -> dict[str, Any]:
    found = [a for a in outcome.alerts if a["key"] == key]
    assert found, f"no {key} alert in {[a['key'] for a in outcome.alerts]}"
    return found[0]


def _line(outcome: Outcome, start: str) -> str:
    found = [line for line in outcome.report["lines"] if line.startswith(start)]
    assert len(found) == 1, outcome.report["lines"]
    return found[0]


def test_ibkr_pending_that_never_reached_the_gateway_is_never_submitted(matrix: Outcome) -> None:
    assert order_row(matrix.data_dir, "m-pending")["status"] == "never_submitted"
    assert broker_order(matrix.data_dir, "m-pending") is None  # and it is not sent now either
    assert "pending_submit -> never_submitted" in _line(matrix, "m-pending:")


def test_ibkr_accepted_at_the_gateway_is_caught_up_not_resubmitted(matrix: Outcome) -> None:
    row = order_row(matrix.data_dir, "m-accepted")
    assert row["status"] == "submitted" and row["broker_order_id"].isdigit()  # its IB order id
    assert "pending_submit -> submitted" in _line(matrix, "m-accepted:")
    assert matrix.verify_stopped["duplicate_submissions"] == []


def test_ibkr_filled_while_down_is_journaled_with_its_execution(matrix: Outcome) -> None:
    row = order_row(matrix.data_dir, "m-filled")
    assert (row["status"], row["filled_qty"]) == ("filled", 10)
    fills = query(matrix.data_dir, "SELECT fill_id, qty FROM fills WHERE client_order_id = 'm-filled'")
    assert sum(f["qty"] for f in fills) == 10 and all(f["fill_id"].endswith(".01.01") for f in fills)
    assert "submitted -> filled" in _line(matrix, "m-filled:")


def test_ibkr_cancelled_or_left_at_the_close_are_closed_as_canceled(matrix: Outcome) -> None:
    assert order_row(matrix.data_dir, "m-canceled")["status"] == "canceled"
    assert order_row(matrix.data_dir, "m-day")["status"] == "canceled"  # IB: Cancelled, not expired
    assert "submitted -> canceled" in _line(matrix, "m-canceled:")


def test_ibkr_unknown_open_order_raises_a_critical_alert(matrix: Outcome) -> None:
    assert [u["client_order_id"] for u in matrix.report["unknown_orders"]] == ["ext-unknown"]
    alert = _alert(matrix, "reconcile:unknown_orders")
    assert alert["severity"] == "critical" and "ext-unknown" in alert["body"]
    # Another client's order: not cancellable one by one through the API (the kill switch would).
    at_book = broker_order(matrix.data_dir, "ext-unknown")
    assert at_book is not None and at_book.status.value == "submitted"


def test_ibkr_stale_is_cancelled(matrix: Outcome) -> None:
    assert matrix.report["stale_canceled"] == ["m-stale"]
    at_book = broker_order(matrix.data_dir, "m-stale")
    assert at_book is not None and at_book.status.value == "canceled"
    assert order_row(matrix.data_dir, "m-stale")["status"] == "canceled"


def test_ibkr_position_of_the_gateway_wins(matrix: Outcome) -> None:
    assert matrix.report["position_differences"]["MSFT"] == {"local": 0, "broker": 7}
    assert matrix.status["positions"]["MSFT"] == 7


def test_ibkr_verify_is_clean_running_and_stopped(matrix: Outcome) -> None:
    for result in (matrix.verify_running, matrix.verify_stopped):
        assert result["lost_fills"] == [] and result["position_mismatches"] == [], json.dumps(result, indent=1)
        assert result["counts"]["journal_orders"] == 6  # the two outside orders were not adopted
    assert [o["client_order_id"] for o in matrix.verify_stopped["unknown_open_orders"]] == ["ext-unknown"]
