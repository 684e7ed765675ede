"""Sub-books: each strategy's positions and P&L from the fills journal, attributed by client order id;
persisted with the net's cursor, rebuilt from the journal, summing to the net."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from actorkit import Probe
from steadyhand.actors.messages import Bars, BrokerSnapshot, Configure, Fills, PositionsSnapshot, Wiring
from steadyhand.actors.portfolio import PortfolioActor
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import Bar
from steadyhand.portfolio.books import Books, summary
from steadyhand.sim.clock import SimClock
from steadyhand.state import store
from thespian.actors import ActorExitRequest, ActorSystem

FILLS = [  # client_order_id, symbol, side, qty, price
    ("fast-AAPL-20261120T1431Z-B0", "AAPL", "buy", 10, "100"),
    ("slow-AAPL-20261120T1432Z-B0", "AAPL", "buy", 20, "101"),
    ("fast-AAPL-20261120T1440Z-S0", "AAPL", "sell", 10, "105"),
    ("slow-MSFT-20261120T1441Z-S0", "MSFT", "sell", 5, "300"),
]


def test_fills_go_to_the_strategy_their_id_names() -> None:
    books = Books.rebuild(FILLS)
    assert books.quantities() == {"fast": {}, "slow": {"AAPL": 20, "MSFT": -5}}
    assert books.books["fast"]["AAPL"].realized == Decimal("50")  # 10 x (105 - 100)
    assert books.books["slow"]["AAPL"].avg_cost == Decimal("101")
    assert books.net() == {"AAPL": 20, "MSFT": -5}
    assert books.differences({"AAPL": 20, "MSFT": -5}) == {}
    assert books.differences({"AAPL": 25}) == {"AAPL": {"books": 20, "net": 25}, "MSFT": {"books": -5, "net": 0}}


def test_summary_has_positions_marks_and_pnl_per_strategy() -> None:
    rows = [{"strategy": "slow", "symbol": "AAPL", "qty": 20, "avg_cost": "101", "realized_pnl": "0",
             "last_price": "103.5"},
            {"strategy": "fast", "symbol": "AAPL", "qty": 0, "avg_cost": "0", "realized_pnl": "50",
             "last_price": "103.5"},
            {"strategy": "slow", "symbol": "MSFT", "qty": -5, "avg_cost": "300", "realized_pnl": "0",
             "last_price": None}]
    out = summary(rows)
    assert out["fast"] == {"positions": {}, "realized_pnl": "50.00", "unrealized_pnl": "0.00", "total_pnl": "50.00"}
    assert out["slow"]["positions"]["AAPL"] == {"qty": 20, "avg_cost": "101.00", "last_price": "103.5",
                                                "unrealized_pnl": "50.00"}
    assert out["slow"]["positions"]["MSFT"]["last_price"] is None and out["slow"]["unrealized_pnl"] == "50.00"


def _journal(db: Any, rows: list[tuple[str, str, str, int, str]], start: int = 0) -> None:
    with store.transaction(db):
        for i, (cid, symbol, side, qty, price) in enumerate(rows, start):
            db["fills"].insert({"fill_id": f"f{i}", "client_order_id": cid, "broker_order_id": "b", "symbol": symbol,
                                "side": side, "qty": qty, "price": price, "ts": store.now_iso(),
                                "recorded_at": store.now_iso()})


def _start(system: ActorSystem, run: RunSettings, peers: dict[str, Any]) -> Any:
    portfolio = system.createActor(PortfolioActor)
    system.ask(portfolio, Configure(name="portfolio", settings=run), 5)
    system.tell(portfolio, Wiring(peers))
    return portfolio


def _book_rows(db: Any) -> list[tuple[Any, ...]]:
    return db.execute("SELECT strategy, symbol, qty, avg_cost, realized_pnl FROM strategy_positions"
                      " ORDER BY strategy, symbol").fetchall()


def test_portfolio_persists_books_rebuilds_them_and_sends_each_strategy_its_own(tmp_path: Path,
                                                                               system: ActorSystem) -> None:
    data_dir = tmp_path / "var"
    db = store.open_store(data_dir)
    run = RunSettings(settings=Settings(), data_dir=str(data_dir),
                      clock=SimClock(datetime(2026, 11, 20, 15, tzinfo=UTC), 0.0, 1.0))
    _journal(db, FILLS[:2])
    risk, fast, slow = (system.createActor(Probe) for _ in range(3))
    portfolio = _start(system, run, {"risk": risk, "strategy.fast": fast, "strategy.slow": slow})
    system.ask(portfolio, Fills(()), 1)
    assert _book_rows(db) == [("fast", "AAPL", 10, "100", "0"), ("slow", "AAPL", 20, "101", "0")]
    assert [m.positions for m in system.ask(slow, "seen?", 5) if isinstance(m, PositionsSnapshot)][-1] == {"AAPL": 20}
    assert [m.positions for m in system.ask(fast, "seen?", 5) if isinstance(m, PositionsSnapshot)][-1] == {"AAPL": 10}
    last = [m for m in system.ask(risk, "seen?", 5) if isinstance(m, PositionsSnapshot)][-1]
    assert last.positions == {"AAPL": 30} and last.by_strategy == {"fast": {"AAPL": 10}, "slow": {"AAPL": 20}}
    system.tell(portfolio, ActorExitRequest())

    _journal(db, FILLS[2:], start=2)  # journaled while the portfolio is down
    with store.transaction(db):  # and the books lost entirely (a data dir from before them): rebuilt
        db.execute("DELETE FROM strategy_positions")
        db.execute("DELETE FROM portfolio_state WHERE key = 'books_applied_through'")
    portfolio = _start(system, run, {"risk": risk})
    system.ask(portfolio, Fills(()), 1)
    expected = Books.rebuild(FILLS)
    assert _book_rows(db) == [(n, s, p.qty, str(p.avg_cost), str(p.realized))
                              for n, book in sorted(expected.books.items()) for s, p in sorted(book.items())]
    assert db.execute("SELECT symbol, qty FROM positions ORDER BY symbol").fetchall() == [("AAPL", 20), ("MSFT", -5)]

    # a bar marks the held positions; status reads unrealized P&L from the table
    ts = datetime(2026, 11, 20, 15, 5, tzinfo=UTC)
    system.tell(portfolio, BrokerSnapshot({"AAPL": 20, "MSFT": -5}, Decimal("5000"), Decimal("9000"), ts,
                                          authoritative=True))
    system.tell(portfolio, Bars(ts, (Bar("AAPL", ts, 102, 102, 102, 102, 10), Bar("MSFT", ts, 299, 299, 299, 299, 10))))
    system.ask(portfolio, Fills(()), 1)
    out = summary(db.query("SELECT * FROM strategy_positions"))
    assert out["slow"]["unrealized_pnl"] == "25.00"  # 20 x (102 - 101) + -5 x (299 - 300)
    assert out["fast"]["realized_pnl"] == "50.00"
    _journal(db, [("fast-AAPL-20261120T1506Z-B0", "AAPL", "buy", 1, "102")], start=4)  # opened after the bar:
    system.ask(portfolio, Fills(()), 1)  # shown at the newest price, not at one from when it was last held
    assert db.execute("SELECT last_price FROM strategy_positions WHERE strategy = 'fast'").fetchone() == ("102",)
    system.tell(portfolio, ActorExitRequest())


def test_books_that_stop_summing_to_the_net_are_alerted_once(tmp_path: Path, system: ActorSystem) -> None:
    from steadyhand.domain import Alert

    data_dir = tmp_path / "var"
    db = store.open_store(data_dir)
    run = RunSettings(settings=Settings(), data_dir=str(data_dir),
                      clock=SimClock(datetime(2026, 11, 20, 15, tzinfo=UTC), 0.0, 1.0))
    _journal(db, FILLS[:2])
    alerter = system.createActor(Probe)
    portfolio = _start(system, run, {"alerter": alerter})
    system.ask(portfolio, Fills(()), 1)
    ts = datetime(2026, 11, 20, 15, 5, tzinfo=UTC)
    for _ in range(2):  # the broker holds 5 more AAPL than any fill explains: its figures are adopted
        system.tell(portfolio, BrokerSnapshot({"AAPL": 35}, Decimal("5000"), Decimal("9000"), ts, authoritative=True))
    system.ask(portfolio, Fills(()), 1)
    alerts = [m for m in system.ask(alerter, "seen?", 5) if isinstance(m, Alert) and m.key == "books:mismatch"]
    assert len(alerts) == 1 and "'books': 30, 'net': 35" in alerts[0].body
    system.tell(portfolio, ActorExitRequest())
