"""P&L in ``status`` (issue 14 §1): the book read from the store, checked against the fill journal.

The pure valuation (``dashboard/book.py``) is tested on a store built here; the live test runs a bot
and recomputes realized P&L and quantities from ``fills --json`` by average cost, independently of
the portfolio's code, and checks ``equity = cash + Σ qty × last_price`` on the printed figures.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import poll
from steadyhand.dashboard.book import BOOK_KEY, book_json, limit_utilization, read_book
from steadyhand.dashboard.status import equity_text, portfolio_lines
from steadyhand.state import store

FAST = """
[sim]
speed = 240.0
[strategy]
fast = 2
slow = 4
"""


def _average_cost(fills: list[dict[str, Any]]) -> tuple[dict[str, int], Decimal]:
    """Quantities and realized P&L by average cost, written from the definition (not the portfolio's)."""
    qty: dict[str, int] = {}
    cost: dict[str, Decimal] = {}  # total cost basis of the open quantity, signed like the position
    realized = Decimal(0)
    for fill in sorted(fills, key=lambda f: (f["ts"], f["fill_id"])):
        s, q, px = fill["symbol"], int(fill["qty"]), Decimal(str(fill["price"]))
        q = q if fill["side"] == "buy" else -q
        held, basis = qty.get(s, 0), cost.get(s, Decimal(0))
        if held == 0 or (held > 0) == (q > 0):
            qty[s], cost[s] = held + q, basis + q * px
            continue
        avg = basis / held
        closing = min(abs(q), abs(held)) * (1 if q > 0 else -1)  # the part of q that closes
        realized += -closing * (px - avg)
        rest = held + closing
        qty[s] = held + q
        cost[s] = avg * rest if rest else Decimal(0)
        if q - closing:  # through zero: the remainder opens at this price
            cost[s] = (q - closing) * px
    return {s: n for s, n in qty.items() if n}, realized


def test_average_cost_reference_matches_the_definition() -> None:
    fills = [{"fill_id": "1", "ts": "1", "symbol": "A", "side": "buy", "qty": 10, "price": "100"},
             {"fill_id": "2", "ts": "2", "symbol": "A", "side": "buy", "qty": 10, "price": "110"},
             {"fill_id": "3", "ts": "3", "symbol": "A", "side": "sell", "qty": 15, "price": "120"},
             {"fill_id": "4", "ts": "4", "symbol": "A", "side": "sell", "qty": 10, "price": "90"}]
    qty, realized = _average_cost(fills)
    assert qty == {"A": -5}
    assert realized == Decimal(15 * 15 + 5 * -15)  # 15 at +15 over avg 105, then 5 at -15


def _store_with(tmp_path: Path, positions: list[tuple[str, int, str, str]], book: str | None) -> Any:
    db = store.open_store(tmp_path)
    with store.transaction(db):
        for row in positions:
            db.execute("INSERT INTO positions (symbol, qty, avg_cost, realized_pnl) VALUES (?, ?, ?, ?)", row)
        if book is not None:
            store.set_portfolio_state(db, **{BOOK_KEY: book})
    return db


def test_book_values_positions_at_their_marks_to_the_cent(tmp_path: Path) -> None:
    book = book_json(Decimal("98000.004"), {"AAPL": Decimal("101.2345"), "MSFT": Decimal("49.996")},
                     Decimal("100000"), Decimal("100100"), None)
    db = _store_with(tmp_path, [("AAPL", 10, "100", "12.5"), ("MSFT", -4, "50.5", "0"), ("SPY", 0, "0", "-2.25")],
                     book)
    p = read_book(db)
    assert p["positions"] == {"AAPL": {"qty": 10, "avg_cost": 100.0, "last_price": 101.23, "unrealized_pnl": 12.3},
                              "MSFT": {"qty": -4, "avg_cost": 50.5, "last_price": 50.0, "unrealized_pnl": 2.0}}
    assert p["cash"] == 98000.0
    assert p["equity"] == round(98000.0 + 10 * 101.23 - 4 * 50.0, 2) == 98812.3
    assert p["realized_pnl"] == 10.25  # closed positions' realized P&L counts too
    assert p["unrealized_pnl"] == 14.3
    assert p["gross_exposure"] == 1212.3
    assert p["day_pnl"] == -1187.7
    assert equity_text(p) == "equity 98,812.30 (-1,187.70 today)"
    util = limit_utilization(p, {"max_gross_exposure": 10_000, "max_daily_loss": 5000, "max_drawdown": 0,
                                 "max_position_qty": 20, "max_open_orders": 50}, open_orders=5)
    assert util["max_gross_exposure"] == {"used": 1212.3, "limit": 10000.0, "pct": 12.1}
    assert util["max_daily_loss"]["pct"] == 23.8
    assert util["max_drawdown"]["pct"] is None  # a limit of 0 is off
    assert util["max_position_qty"]["pct"] == 50.0
    assert util["max_open_orders"]["pct"] == 10.0
    assert any("AAPL" in line for line in portfolio_lines({"portfolio": p, "risk_limits": util}))


def test_book_before_the_broker_cash_is_known(tmp_path: Path) -> None:
    p = read_book(_store_with(tmp_path, [("AAPL", 3, "10", "0")], None))
    assert p["equity"] is None and p["cash"] is None and p["day_pnl"] is None
    assert p["positions"]["AAPL"]["last_price"] == 10.0  # not priced yet: at cost
    assert equity_text(p) == "equity n/a"


def _consistent(bot: Any) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """status and fills read at one moment: the fill count unchanged around the status read, and
    the portfolio caught up with every fill (its positions match the journal's count)."""
    before = json.loads(bot.cli("fills", "--json").stdout)
    status = bot.status()
    after = json.loads(bot.cli("fills", "--json").stdout)
    if len(before) != len(after) or status["fills"] != len(after) or len(after) < 3:
        return None
    if status["portfolio"]["equity"] is None:
        return None
    qty, _ = _average_cost(after)
    if {s: p["qty"] for s, p in status["portfolio"]["positions"].items()} != qty:
        return None  # the portfolio has not applied the newest fill yet
    return status, after


def test_status_pnl_matches_an_independent_recomputation_from_the_fills(make_bot: Any) -> None:
    bot = make_bot(FAST).start()
    status, fills = poll(lambda: _consistent(bot), timeout=90, interval=0.5, what="3 fills, status consistent")
    p = status["portfolio"]
    assert set(p) >= {"equity", "cash", "realized_pnl", "unrealized_pnl", "day_pnl", "gross_exposure", "positions"}
    qty, realized = _average_cost(fills)
    assert {s: x["qty"] for s, x in p["positions"].items()} == qty
    assert abs(Decimal(str(p["realized_pnl"])) - realized) <= Decimal("0.005")
    marked = Decimal(str(p["cash"])) + sum(Decimal(x["qty"]) * Decimal(str(x["last_price"]))
                                           for x in p["positions"].values())
    assert Decimal(str(p["equity"])) == marked
    for money in ("equity", "cash", "realized_pnl", "unrealized_pnl", "day_pnl", "gross_exposure"):
        assert isinstance(p[money], float) and round(p[money], 2) == p[money]
    limits = status["risk_limits"]
    assert limits["max_gross_exposure"]["used"] == p["gross_exposure"]
    assert limits["max_open_orders"]["limit"] == 50.0
    assert "dashboard_url" in status
    text = bot.cli("status").stdout
    assert "equity:" in text and "realized" in text
    poll(lambda: any(re.search(r" equity [0-9,]+\.\d\d \([+-][0-9,]+\.\d\d today\) ", x) for x in bot.output),
         timeout=30, what="the console line with equity and day P&L")
    bot.stop()
