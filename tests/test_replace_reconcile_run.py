"""A replace a kill left pending, settled by a real ``steadyhand run``'s reconciliation (the sim
broker: a new order per replace; IBKR through the TWS face as its own process: in place):
the journal is set up as the OMS leaves it when killed at each replace crash point, the book as the
broker had it, then the bot starts once (after the close, so the strategy stays quiet) and ``verify``
must be clean running and stopped."""

from __future__ import annotations

import json
import signal
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from crashkit import Prep, broker_order, last_session, order_row, reports
from harness import poll
from steadyhand.brokers.base import replacement_client_id
from steadyhand.config import Settings, parse_settings
from steadyhand.control.verify import verify
from steadyhand.orders.journal import OrderJournal, ReplaceState
from steadyhand.state import store
from twskit import IbkrPrep, ibkr_config, tws_process

SPEED = "60"


def _intent(prep: Prep, cid: str, qty: int, limit: Decimal) -> None:
    """The OMS's write-ahead replace intent on ``cid``, committed."""
    row = OrderJournal(prep.db).row(cid)
    assert row is not None and row["broker_order_id"]
    assert OrderJournal(prep.db).begin_replace(cid, {
        "qty": qty, "limit_price": str(limit), "stop_price": None, "broker_order_id": row["broker_order_id"],
        "new_client_order_id": replacement_client_id(cid), "reason": "test", "requested_at": store.now_iso()})


def test_a_run_settles_replaces_a_kill_left_pending(make_bot: Any, data_dir: Path) -> None:
    _, close = last_session()
    prep = Prep(data_dir, close - timedelta(seconds=60))
    prep.order("sma-AAPL-1-B0", "AAPL", qty=5)  # killed at oms.after_replace_journal: the broker never heard
    _intent(prep, "sma-AAPL-1-B0", 3, Decimal("1.50"))
    old = prep.order("sma-MSFT-1-B0", "MSFT", qty=5)  # killed at oms.after_replace: the broker replaced it
    assert old is not None
    _intent(prep, "sma-MSFT-1-B0", 4, Decimal("1.50"))
    prep.ex.replace(old.broker_order_id, qty=4, limit_price=Decimal("1.50"))
    prep.at(close + timedelta(seconds=30))
    prep.anchor(close + timedelta(minutes=1), speed=float(SPEED))
    prep.close()

    bot = make_bot(args=("--speed", SPEED)).start()
    report = poll(lambda: (r := reports(data_dir)) and r[0], timeout=20, what="the first report")
    assert report["replaces_settled"] == {"sma-AAPL-1-B0": "not_applied", "sma-MSFT-1-B0": "applied"}
    assert report["unknown_orders"] == [] and report["lost_at_broker"] == []
    journal_only = order_row(data_dir, "sma-AAPL-1-B0")
    assert (journal_only["replace_state"], journal_only["qty"]) == (ReplaceState.NOT_APPLIED, 5)
    assert broker_order(data_dir, "sma-AAPL-1-B0").qty == 5  # type: ignore[union-attr]
    replaced = order_row(data_dir, "sma-MSFT-1-B0")
    assert (replaced["status"], replaced["replaced_by"], replaced["replace_state"]) == (
        "replaced", "sma-MSFT-1-B0~r1", ReplaceState.APPLIED)
    new = order_row(data_dir, "sma-MSFT-1-B0~r1")
    assert (new["replaces"], new["qty"], new["status"]) == ("sma-MSFT-1-B0", 4, "submitted")  # GTC: still working
    running = verify(data_dir, Settings())
    assert running["ok"], json.dumps(running, indent=1)
    assert bot.stop(signal.SIGINT) == 0
    stopped = verify(data_dir, Settings())
    assert stopped["ok"], json.dumps(stopped, indent=1)


def test_a_run_on_ibkr_settles_replaces_a_kill_left_pending(make_bot: Any, data_dir: Path) -> None:
    _, close = last_session()
    prep = IbkrPrep(data_dir, close - timedelta(seconds=60))
    prep.order("sma-AAPL-2-B0", "AAPL", qty=5)  # killed at oms.after_replace_journal
    _intent(prep.book, "sma-AAPL-2-B0", 3, Decimal("1.50"))
    amended = prep.order("sma-MSFT-2-B0", "MSFT", qty=5)  # killed at oms.after_replace: IB amended it
    _intent(prep.book, "sma-MSFT-2-B0", 4, Decimal("1.50"))
    prep.broker.replace(amended.broker_order_id, 4, Decimal("1.50"))
    prep.at(close + timedelta(seconds=30))
    prep.close(close + timedelta(minutes=1), float(SPEED))

    with tws_process(data_dir, SPEED) as face:
        config = ibkr_config(face["port"])
        bot = make_bot(config=config, args=("--speed", SPEED)).start()
        report = poll(lambda: (r := reports(data_dir)) and r[0], timeout=30, what="the first report")
        assert report["replaces_settled"] == {"sma-AAPL-2-B0": "not_applied", "sma-MSFT-2-B0": "applied"}
        assert report["unknown_orders"] == [] and report["lost_at_broker"] == []
        untouched = order_row(data_dir, "sma-AAPL-2-B0")
        assert (untouched["replace_state"], untouched["qty"], untouched["status"]) == (
            ReplaceState.NOT_APPLIED, 5, "submitted")
        kept = order_row(data_dir, "sma-MSFT-2-B0")  # the same order, its new terms: IB keeps the ids
        assert (kept["replace_state"], kept["qty"], Decimal(kept["limit_price"]), kept["broker_order_id"]) == (
            ReplaceState.APPLIED, 4, Decimal("1.50"), amended.broker_order_id)
        settings = parse_settings(tomllib.loads(config))
        running = verify(data_dir, settings)
        assert running["ok"], json.dumps(running, indent=1)
        assert bot.stop(signal.SIGINT) == 0
        stopped = verify(data_dir, settings)
        assert stopped["ok"], json.dumps(stopped, indent=1)
