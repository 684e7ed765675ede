"""The reconciliation matrix (DESIGN §6), against a real ``steadyhand run``.

One scenario sets up, on real SQLite files, what a bot killed mid-flight leaves behind and what
the broker did meanwhile -- one order per case -- then starts the bot once (after the close, so the
strategy stays quiet and nothing else moves). Each test checks one case: the action taken (journal
and broker), the alert, and the line in the reconciliation report; then ``verify`` must be clean.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit import Prep, alerts, broker_order, last_session, order_row, query, reports
from harness import Bot, poll
from steadyhand.config import Settings, parse_settings
from steadyhand.control.verify import verify
from steadyhand.domain import Side, TimeInForce
from steadyhand.runtime import procs

CONFIG = """
[oms]
stale_order_age_s = 3600.0
"""
SPEED = "60"  # a simulated minute per second: the test's few seconds age nothing into staleness


@dataclass
class Outcome:
    data_dir: Path
    report: dict[str, Any]
    alerts: list[dict[str, Any]]
    status: dict[str, Any]
    verify_running: dict[str, Any]
    verify_stopped: dict[str, Any]
    partial_fills_before: int


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    data_dir = tmp_path_factory.mktemp("matrix") / "var"
    _, close = last_session()
    prep = Prep(data_dir, close - timedelta(hours=2))
    prep.order("m-stale", "SPY")  # working for two hours by the time the bot looks
    prep.at(close - timedelta(seconds=60))
    prep.order("m-pending", "AAPL", journal="only")  # crash after the journal, before the submit
    prep.order("m-accepted", "QQQ", journal="pending")  # crash after the submit, before the ack
    prep.order("m-filled", "AAPL", qty=10, limit=None, tif=TimeInForce.DAY)  # fills while down
    prep.order("m-canceled", "SPY")
    prep.order("m-expired", "QQQ", tif=TimeInForce.DAY)  # expires at the close
    prep.order("ext-unknown", "SPY", journal="none")  # someone else's order in our account
    prep.order("ext-filled", "MSFT", qty=7, limit=None, tif=TimeInForce.DAY, journal="none")
    prep.at(close - timedelta(seconds=30))
    canceled = prep.ex.get_by_client_id("m-canceled")
    assert canceled is not None
    prep.ex.cancel(canceled.broker_order_id)  # cancelled at the broker while the bot is down
    prep.at(close - timedelta(seconds=5))
    prep.order("m-partial", "NVDA", side=Side.SELL, qty=1_000_000, limit=Decimal("1.00"),
               partial_fill_probability=1.0)  # sells at the bid, a part each second
    prep.at(close + timedelta(seconds=30))
    partial = prep.ex.get_by_client_id("m-partial")
    assert partial is not None and 0 < partial.filled_qty < partial.qty
    partial_fills = len(prep.ex.fills_for(partial.broker_order_id))
    prep.anchor(close + timedelta(minutes=1), speed=float(SPEED))
    prep.close()

    bot = Bot(data_dir, config=CONFIG, args=("--speed", SPEED))
    try:
        bot.start()
        report = poll(lambda: (r := reports(data_dir)) and r[0], timeout=20, what="the first report")
        poll(lambda: {a["key"] for a in alerts(data_dir)} >= {"reconcile:unknown_orders",
             "reconcile:differences", "reconcile:stale", "reconcile:caught_up"}, timeout=10, what="alerts")
        status = poll(lambda: (s := bot.status())["positions"].get("MSFT") == 7 and s, timeout=15,
                      what="the portfolio adopting the broker's MSFT position")
        settings = parse_settings({"oms": {"stale_order_age_s": 3600.0}})
        running = verify(data_dir, settings)
        assert bot.stop(signal.SIGINT) == 0
        stopped = verify(data_dir, settings)
    finally:
        if bot.proc is not None and bot.proc.poll() is None:
            bot.kill_group()
        left = procs.run_processes(data_dir)
        procs.terminate(left)
    assert not left and not procs.port_listening(bot.admin_port)
    yield Outcome(data_dir, report, alerts(data_dir), status, running, stopped, partial_fills)


def _alert(outcome: Outcome, key: str) -> dict[str, Any]:
    found = [a for a in outcome.alerts if a["key"] == key]
    assert found, f"no {key} alert in {[a['key'] for a in outcome.alerts]}"
    return found[0]


def _line(outcome: Outcome, start: str) -> str:
    found = [line for line in outcome.report["lines"] if line.startswith(start)]
    assert len(found) == 1, outcome.report["lines"]
    return found[0]


def test_pending_that_never_reached_the_broker_is_marked_never_submitted(matrix: Outcome) -> None:
    assert order_row(matrix.data_dir, "m-pending")["status"] == "never_submitted"
    assert broker_order(matrix.data_dir, "m-pending") is None  # and it is not sent now either
    assert "m-pending" in matrix.report["never_submitted"]
    assert "pending_submit -> never_submitted" in _line(matrix, "m-pending:")
    assert "m-pending" in _alert(matrix, "reconcile:caught_up")["body"]


def test_accepted_at_the_broker_is_caught_up_not_resubmitted(matrix: Outcome) -> None:
    row = order_row(matrix.data_dir, "m-accepted")
    at_broker = broker_order(matrix.data_dir, "m-accepted")
    assert at_broker is not None and row["broker_order_id"] == at_broker.broker_order_id
    assert row["status"] == "submitted"
    assert "pending_submit -> submitted" in _line(matrix, "m-accepted:")
    assert matrix.verify_stopped["duplicate_submissions"] == []


def test_filled_while_down_is_journaled_with_its_fill(matrix: Outcome) -> None:
    row = order_row(matrix.data_dir, "m-filled")
    assert (row["status"], row["filled_qty"]) == ("filled", 10)
    fills = query(matrix.data_dir, "SELECT qty FROM fills WHERE client_order_id = 'm-filled'")
    assert sum(f["qty"] for f in fills) == 10
    assert "submitted -> filled (filled 10/10, 1 fill(s) recovered)" in _line(matrix, "m-filled:")
    assert "m-filled" in _alert(matrix, "reconcile:caught_up")["body"]


def test_partially_filled_while_down_keeps_working_with_every_part_journaled(matrix: Outcome) -> None:
    row = order_row(matrix.data_dir, "m-partial")
    at_broker = broker_order(matrix.data_dir, "m-partial")
    assert at_broker is not None and at_broker.status.value == "partially_filled"
    assert row["status"] == "partially_filled" and row["filled_qty"] == at_broker.filled_qty
    fills = query(matrix.data_dir, "SELECT qty FROM fills WHERE client_order_id = 'm-partial'")
    assert len(fills) == matrix.partial_fills_before >= 2
    assert sum(f["qty"] for f in fills) == at_broker.filled_qty
    assert f"submitted -> partially_filled (filled {at_broker.filled_qty}/1000000" in _line(matrix, "m-partial:")


def test_cancelled_or_expired_while_down_are_closed_in_the_journal(matrix: Outcome) -> None:
    assert order_row(matrix.data_dir, "m-canceled")["status"] == "canceled"
    assert order_row(matrix.data_dir, "m-expired")["status"] == "expired"
    assert "submitted -> canceled" in _line(matrix, "m-canceled:")
    assert "submitted -> expired" in _line(matrix, "m-expired:")


def test_open_at_the_broker_but_unknown_is_cancelled_with_a_critical_alert(matrix: Outcome) -> None:
    at_broker = broker_order(matrix.data_dir, "ext-unknown")
    assert at_broker is not None and at_broker.status.value == "canceled"
    assert [u["client_order_id"] for u in matrix.report["unknown_orders"]] == ["ext-unknown"]
    assert "unknown to the journal -> canceled at the broker" in _line(matrix, "ext-unknown:")
    alert = _alert(matrix, "reconcile:unknown_orders")
    assert alert["severity"] == "critical" and "ext-unknown" in alert["body"]


def test_open_but_stale_is_cancelled(matrix: Outcome) -> None:
    at_broker = broker_order(matrix.data_dir, "m-stale")
    assert at_broker is not None and at_broker.status.value == "canceled"
    assert matrix.report["stale_canceled"] == ["m-stale"]
    assert "older than 3600s -> canceled" in _line(matrix, "m-stale:")
    assert _alert(matrix, "reconcile:stale")["severity"] == "warning"
    assert order_row(matrix.data_dir, "m-stale")["status"] == "canceled"  # the poll brought it home
    # the younger GTC orders keep working
    assert broker_order(matrix.data_dir, "m-accepted").status.value == "submitted"  # type: ignore[union-attr]


def test_local_position_differs_from_the_broker_the_broker_wins(matrix: Outcome) -> None:
    assert matrix.report["position_differences"]["MSFT"] == {"local": 0, "broker": 7}
    assert "position MSFT: journal 0, broker 7 -> adopted the broker's" in matrix.report["lines"]
    alert = _alert(matrix, "reconcile:differences")
    assert alert["severity"] == "high" and "MSFT" in alert["body"]
    assert matrix.status["positions"]["MSFT"] == 7  # the portfolio adopted it


def test_verify_is_clean_after_the_reconciliation_running_and_stopped(matrix: Outcome) -> None:
    for result in (matrix.verify_running, matrix.verify_stopped):
        assert result["ok"], json.dumps(result, indent=1)
        assert result["counts"]["journal_orders"] == 7  # the two outside orders were not adopted
    assert matrix.verify_running["running"] and not matrix.verify_stopped["running"]


def test_a_second_start_finds_nothing_more_to_do(matrix: Outcome, make_bot: Any, data_dir: Path) -> None:
    """Reconciliation is idempotent: the differences adopted once are not adopted again."""
    import shutil

    shutil.copytree(matrix.data_dir, data_dir)
    (data_dir / "run.json").unlink(missing_ok=True)
    before = len(reports(data_dir))
    bot = make_bot(config=CONFIG, args=("--speed", SPEED)).start()
    report = poll(lambda: len(r := reports(data_dir)) > before and r[-1], timeout=20, what="second report")
    assert report["position_differences"] == {} and report["unknown_orders"] == []
    assert report["never_submitted"] == [] and report["stale_canceled"] == []
    assert bot.stop() == 0
    assert verify(data_dir, Settings())["ok"]


def test_a_large_book_is_reconciled_in_a_few_broker_requests(make_bot: Any) -> None:
    # 60 orders still working at the broker, journaled as acknowledged, one with its fills already
    # journaled: one open-orders request covers them all (no lookup, no fills request each), so
    # reconciling does not crawl at a broker's rate limit. Two ended while the bot was down: those
    # are looked up one by one, and their fills fetched.
    bot = make_bot(config=CONFIG, args=("--speed", SPEED))
    _, close = last_session()
    prep = Prep(bot.data_dir, close - timedelta(minutes=30))
    for k in range(60):
        prep.order(f"big-{k}", ("SPY", "AAPL", "QQQ")[k % 3])
    prep.order("big-fills", "MSFT", qty=3, limit=None, tif=TimeInForce.DAY)  # fills while down
    prep.order("big-cancel", "SPY")
    prep.at(close - timedelta(minutes=20))
    ended = prep.ex.get_by_client_id("big-cancel")
    assert ended is not None
    prep.ex.cancel(ended.broker_order_id)
    prep.anchor(close + timedelta(minutes=1), speed=float(SPEED))
    prep.close()
    bot.start()
    report = poll(lambda: (r := reports(bot.data_dir)) and r[0], timeout=30, what="the first report")
    assert report["orders_checked"] == 62
    assert {c["client_order_id"] for c in report["caught_up"]} == {"big-fills", "big-cancel"}
    assert report["fills_recovered"] >= 1
    # Before: a lookup and a fills request per order, 124 and more. Now: the cursor, one list, two
    # lookups, one fills request, and the positions read between polls.
    assert report["broker_calls"] <= 15, report["broker_calls"]
    assert bot.stop(signal.SIGINT) == 0
