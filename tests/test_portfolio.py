"""Portfolio: fills are applied from the OMS's journal, exactly once, even those sent while it was down."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from steadyhand.actors.messages import Configure, Fills, Wiring
from steadyhand.actors.portfolio import PortfolioActor, Position
from steadyhand.clock import SimClock
from steadyhand.config import RunSettings, Settings
from steadyhand.state import store
from thespian.actors import ActorExitRequest, ActorSystem


def test_position_average_cost_and_realized_pnl() -> None:
    p = Position()
    p.apply(10, Decimal("100"))
    p.apply(10, Decimal("110"))
    assert (p.qty, p.avg_cost) == (20, Decimal("105"))
    p.apply(-5, Decimal("120"))
    assert (p.qty, p.avg_cost, p.realized) == (15, Decimal("105"), Decimal("75"))
    p.apply(-20, Decimal("100"))  # through zero: realizes 15, the rest is a new short at 100
    assert (p.qty, p.avg_cost, p.realized) == (-5, Decimal("100"), Decimal("0"))


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    yield asys
    asys.shutdown()


def _fill(db: Any, fill_id: str, side: str, qty: int, price: str) -> None:
    with store.transaction(db):
        db["fills"].insert({"fill_id": fill_id, "client_order_id": f"c-{fill_id}", "broker_order_id": "b",
                            "symbol": "AAPL", "side": side, "qty": qty, "price": price,
                            "ts": store.now_iso(), "recorded_at": store.now_iso()})


def _qty(db: Any) -> int:
    row = db.execute("SELECT qty FROM positions WHERE symbol = 'AAPL'").fetchone()
    return 0 if row is None else int(row[0])


def _start(system: ActorSystem, run: RunSettings) -> Any:
    portfolio = system.createActor(PortfolioActor)
    system.ask(portfolio, Configure(name="portfolio", settings=run), 5)
    system.tell(portfolio, Wiring({}))
    return portfolio


def test_fills_journaled_while_down_are_applied_once_after_restart(tmp_path: Path, system: ActorSystem) -> None:
    data_dir = tmp_path / "var"
    db = store.open_store(data_dir)
    run = RunSettings(settings=Settings(), data_dir=str(data_dir),
                      clock=SimClock(datetime(2026, 11, 20, 15, tzinfo=UTC), 0.0, 1.0))
    _fill(db, "f1", "buy", 10, "100")
    portfolio = _start(system, run)
    system.tell(portfolio, Fills(()))  # a notice: read the journal
    system.ask(portfolio, Fills(()), 1)
    assert _qty(db) == 10
    system.tell(portfolio, ActorExitRequest())

    _fill(db, "f2", "buy", 5, "101")  # journaled while the portfolio is down: its notice was lost
    portfolio = _start(system, run)
    system.ask(portfolio, Fills(()), 1)
    assert _qty(db) == 15
    system.tell(portfolio, Fills(()))  # repeated notices apply nothing twice
    system.ask(portfolio, Fills(()), 1)
    assert _qty(db) == 15
