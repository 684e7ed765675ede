"""Risk per strategy: own symbols, only selling what it bought, its own size/position/exposure limits."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from steadyhand.config import StrategySpec
from steadyhand.domain import Fill, OrderSpec, Side
from steadyhand.risk.strategy_limits import StrategyBooks

TS = datetime(2026, 11, 20, 15, tzinfo=UTC)


def books() -> StrategyBooks:
    return StrategyBooks.of([
        StrategySpec("a", "sma", symbols=("AAPL", "MSFT"), max_position_qty=30, max_order_qty=20),
        StrategySpec("b", "sma", symbols=("AAPL",), allow_short=True, max_gross_exposure=5000.0),
    ])


def order(cid: str, side: Side, qty: int, symbol: str = "AAPL") -> OrderSpec:
    return OrderSpec(client_order_id=cid, symbol=symbol, side=side, qty=qty, ref_price=100.0)


def check(b: StrategyBooks, req: OrderSpec) -> str | None:
    decision = b.check(req, 100.0, {"AAPL": 100.0, "MSFT": 100.0})
    return None if decision is None else decision.reason


def test_a_strategy_only_sells_what_it_bought() -> None:
    b = books()
    b.note_snapshot({"a": {"AAPL": 10}, "b": {"AAPL": 20}})  # the net is long 30
    assert check(b, order("a-AAPL-1-S0", Side.SELL, 10)) is None
    reason = check(b, order("a-AAPL-2-S0", Side.SELL, 15))
    assert reason is not None and "only sells what it bought" in reason and "holds 10" in reason
    assert check(b, order("b-AAPL-3-S0", Side.SELL, 30)) is None  # b may go short (within its exposure)


def test_own_symbols_order_size_position_and_exposure() -> None:
    b = books()
    assert "not one of its symbols" in (check(b, order("b-MSFT-1-B0", Side.BUY, 1, "MSFT")) or "")
    assert "max_order_qty 20" in (check(b, order("a-AAPL-1-B0", Side.BUY, 25)) or "")
    b.note_snapshot({"a": {"AAPL": 20}})
    assert "max_position_qty 30" in (check(b, order("a-AAPL-2-B0", Side.BUY, 15)) or "")
    assert "max_gross_exposure" in (check(b, order("b-AAPL-3-B0", Side.BUY, 60)) or "")
    assert check(b, order("flat-x-AAPL", Side.SELL, 500)) is None  # no strategy's order: run limits only


def test_working_orders_count_until_the_oms_reports_them_gone() -> None:
    b = books()
    b.note_snapshot({"a": {"AAPL": 10}})
    b.record(order("a-AAPL-1-S0", Side.SELL, 10))
    assert b.projected("a", "AAPL") == 0
    assert "only sells" in (check(b, order("a-AAPL-2-S0", Side.SELL, 10)) or "")  # the first still works
    b.note_open_orders({"a": {"AAPL": -6}})  # the OMS: 4 of it filled ...
    b.note_fills([Fill("f1", "a-AAPL-1-S0", "x", "AAPL", Side.SELL, 4, Decimal("100"), TS)])
    assert b.projected("a", "AAPL") == 0
    b.note_open_orders({})  # ... and the rest canceled: nothing works any more
    assert b.projected("a", "AAPL") == 6


def test_a_strategy_past_its_daily_loss_may_only_reduce() -> None:
    b = StrategyBooks.of([StrategySpec("a", "sma", symbols=("AAPL",), max_daily_loss=500.0),
                          StrategySpec("b", "sma", symbols=("AAPL",))])
    b.note_snapshot({"a": {"AAPL": 10}, "b": {"AAPL": 10}})
    b.day_pnl = {"a": -499.99, "b": -10_000.0}  # b has no limit of its own (the run's breaker covers it)
    assert check(b, order("a-AAPL-1-B0", Side.BUY, 5)) is None
    b.day_pnl["a"] = -500.0
    reason = check(b, order("a-AAPL-2-B0", Side.BUY, 5))
    assert reason is not None and "reached its max_daily_loss 500" in reason
    assert check(b, order("a-AAPL-3-S0", Side.SELL, 10)) is None  # reducing is still allowed
    assert check(b, order("b-AAPL-4-B0", Side.BUY, 5)) is None


def test_books_total_pnl_is_realized_plus_unrealized_at_the_marks() -> None:
    from steadyhand.portfolio.books import Books

    books = Books.rebuild([("a-AAPL-1-B0", "AAPL", "buy", 10, "100"), ("a-AAPL-2-S0", "AAPL", "sell", 4, "103"),
                           ("b-MSFT-1-B0", "MSFT", "buy", 2, "50")])
    totals = books.total_pnl({"AAPL": 99.0})  # MSFT unmarked: valued at its cost
    assert totals == {"a": Decimal("12") + 6 * (Decimal("99") - 100), "b": Decimal(0)}
