"""Portfolio: fills are applied from the OMS's journal, exactly once, even those sent while it was down;
positions, the fill cursor and one equity row per tick are persisted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from actorkit import Probe
from steadyhand.actors.messages import Bars, BrokerSnapshot, Configure, Fills, PnlUpdate, Wiring
from steadyhand.actors.portfolio import PortfolioActor, Position
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import Bar
from steadyhand.sim.clock import SimClock
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


def _fill(db: Any, fill_id: str, side: str, qty: int, price: str) -> None:
    with store.transaction(db):
        db["fills"].insert({"fill_id": fill_id, "client_order_id": f"c-{fill_id}", "broker_order_id": "b",
                            "symbol": "AAPL", "side": side, "qty": qty, "price": price,
                            "ts": store.now_iso(), "recorded_at": store.now_iso()})


def _qty(db: Any) -> int:
    row = db.execute("SELECT qty FROM positions WHERE symbol = 'AAPL'").fetchone()
    return 0 if row is None else int(row[0])


def _start(system: ActorSystem, run: RunSettings, peers: dict[str, Any] | None = None) -> Any:
    portfolio = system.createActor(PortfolioActor)
    system.ask(portfolio, Configure(name="portfolio", settings=run), 5)
    system.tell(portfolio, Wiring(peers or {}))
    return portfolio


def _prepare(tmp_path: Path) -> tuple[Any, RunSettings]:
    """A fresh store with one fill journaled (buy 10 AAPL at 100), and the run settings."""
    data_dir = tmp_path / "var"
    db = store.open_store(data_dir)
    run = RunSettings(settings=Settings(), data_dir=str(data_dir),
                      clock=SimClock(datetime(2026, 11, 20, 15, tzinfo=UTC), 0.0, 1.0))
    _fill(db, "f1", "buy", 10, "100")
    return db, run


def test_fills_journaled_while_down_are_applied_once_after_restart(tmp_path: Path, system: ActorSystem) -> None:
    db, run = _prepare(tmp_path)
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


def _bars(ts: datetime, close: float) -> Bars:
    return Bars(ts, (Bar("AAPL", ts, close, close, close, close, 100),))


def test_equity_row_per_tick_positions_and_cursor_are_persisted(tmp_path: Path, system: ActorSystem) -> None:
    db, run = _prepare(tmp_path)
    probe = system.createActor(Probe)
    portfolio = _start(system, run, {"risk": probe})
    system.tell(portfolio, BrokerSnapshot({"AAPL": 10}, Decimal("9000"), Decimal("10000"),
                                          datetime(2026, 11, 20, 15, tzinfo=UTC), authoritative=True))
    t1, t2 = datetime(2026, 11, 20, 15, 1, tzinfo=UTC), datetime(2026, 11, 20, 15, 2, tzinfo=UTC)
    system.tell(portfolio, _bars(t1, 101.0))
    system.tell(portfolio, _bars(t2, 99.5))
    system.tell(portfolio, _bars(t2, 99.0))  # the same tick again: its row is replaced, not doubled
    equity = db.execute("SELECT ts, equity, cash, realized, unrealized FROM equity ORDER BY ts").fetchall()
    assert equity == [(store.iso(t1), "10010.00", "9000.00", "0", "10.00"),
                      (store.iso(t2), "9990.00", "9000.00", "0", "-10.00")]
    pnl = [m for m in system.ask(probe, "seen?", 5) if isinstance(m, PnlUpdate)]
    assert [(m.equity, m.day_pnl, m.peak_equity) for m in pnl] == [
        (Decimal("10010.00"), Decimal("0.00"), Decimal("10010.00")),
        (Decimal("9995.00"), Decimal("-15.00"), Decimal("10010.00")),
        (Decimal("9990.00"), Decimal("-20.00"), Decimal("10010.00"))]

    _fill(db, "f2", "sell", 4, "102")
    system.ask(portfolio, Fills(()), 1)
    assert db.execute("SELECT qty, avg_cost, realized_pnl FROM positions WHERE symbol = 'AAPL'").fetchone() == \
        (6, "100", "8")
    assert store.get_portfolio_state(db, "fills_applied_through") == "2"
    system.tell(portfolio, _bars(datetime(2026, 11, 20, 15, 3, tzinfo=UTC), 100.0))
    assert db.execute("SELECT equity, cash, realized FROM equity ORDER BY ts DESC LIMIT 1").fetchone() == \
        ("10008.00", "9408.00", "8")
    system.tell(portfolio, ActorExitRequest())
