"""A halted bot that starts again (or whose OMS restarts) cancels every open order at the broker:
a kill switch cut short by a crash must not leave orders working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crashkit import Prep, broker_order, last_session
from harness import poll
from steadyhand.state import store


def test_a_halted_bot_restarting_cancels_what_is_still_working(make_bot: Any, data_dir: Path) -> None:
    opened, _ = last_session()
    prep = Prep(data_dir, opened)
    prep.order("kept-1", "AAPL")  # journaled, resting far from the market (gtc)
    prep.order("kept-2", "MSFT")
    store.set_control(prep.db, trading_state="halted", halt_reason="kill switch cut short")
    prep.anchor(opened, speed=60)
    prep.close()
    bot = make_bot(args=("--speed", "60")).start()
    assert bot.status()["trading_state"] == "halted"
    poll(lambda: all(broker_order(data_dir, c).status.value == "canceled" for c in ("kept-1", "kept-2")),
         timeout=20, what="the open orders cancelled by the halted start")
    poll(lambda: bot.status()["open_orders"] == 0, timeout=20, what="the journal knows")
