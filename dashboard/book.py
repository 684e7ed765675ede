"""The portfolio's book as the operator sees it: read from the store, never from the actor.

The portfolio actor writes its cash, marks (last closes), start-of-day and peak equity to
``portfolio_state`` under ``BOOK_KEY`` in the same transaction as its positions and equity rows
(``book_json``). ``read_book`` values the positions from that, read-only, for ``status``, the console
line, the dashboard and ``/metrics``; ``limit_utilization`` sets it against the risk limits.

Money is rounded to the cent (prices included, so ``equity == cash + Σ qty × last_price`` holds to
the cent on the printed figures); quantities are whole shares.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

BOOK_KEY = "book"
CENT = Decimal("0.01")
OPEN_STATUSES = ("pending_submit", "submitted", "partially_filled")


def book_json(cash: Decimal | None, marks: dict[str, Decimal], day_start: Decimal | None,
              peak: Decimal | None, bar_ts: datetime | None) -> str:
    """What the portfolio stores beside its positions (Decimals as strings: nothing lost)."""
    return json.dumps({"cash": _text(cash), "marks": {s: str(m) for s, m in marks.items()},
                       "day_start_equity": _text(day_start), "peak_equity": _text(peak),
                       "bar_ts": bar_ts.isoformat() if bar_ts else None})


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def cents(value: Decimal) -> float:
    """A money amount as the JSON number the contract promises: rounded to the cent."""
    return float(value.quantize(CENT))


def read_book(db: Any) -> dict[str, Any]:
    """``status --json``'s ``portfolio`` from a (read-only) store connection; money None while the
    portfolio has not yet heard the broker's cash (the first seconds of a first run)."""
    stored = _stored_book(db)
    rows = db.execute("SELECT symbol, qty, avg_cost, realized_pnl FROM positions").fetchall() \
        if "positions" in db.table_names() else []
    marks = {s: Decimal(m) for s, m in stored.get("marks", {}).items()}
    realized = sum((Decimal(r[3]) for r in rows), Decimal(0))
    positions: dict[str, dict[str, Any]] = {}
    market_value = gross = unrealized = Decimal(0)
    for symbol, qty, avg_text, _ in sorted(rows):
        if not qty:
            continue
        avg = Decimal(avg_text)
        last = marks.get(symbol, avg).quantize(CENT)
        pnl = (qty * (last - avg)).quantize(CENT)
        positions[symbol] = {"qty": int(qty), "avg_cost": cents(avg), "last_price": float(last),
                             "unrealized_pnl": float(pnl)}
        market_value += qty * last
        gross += abs(qty) * last
        unrealized += pnl
    cash = Decimal(stored["cash"]).quantize(CENT) if stored.get("cash") is not None else None
    equity = cash + market_value if cash is not None else None
    day_start = Decimal(stored["day_start_equity"]) if stored.get("day_start_equity") else None
    peak = Decimal(stored["peak_equity"]) if stored.get("peak_equity") else None
    return {"equity": _money(equity), "cash": _money(cash), "realized_pnl": cents(realized),
            "unrealized_pnl": cents(unrealized),
            "day_pnl": _money(equity - day_start if equity is not None and day_start is not None else None),
            "gross_exposure": cents(gross), "positions": positions,
            "peak_equity": _money(peak), "bar_ts": stored.get("bar_ts")}


def _money(value: Decimal | None) -> float | None:
    return None if value is None else cents(value)


def _stored_book(db: Any) -> dict[str, Any]:
    if "portfolio_state" not in db.table_names():
        return {}
    row = db.execute("SELECT value FROM portfolio_state WHERE key = ?", [BOOK_KEY]).fetchone()
    try:
        return json.loads(row[0]) if row else {}
    except ValueError:
        return {}  # a torn value cannot happen in one transaction; be lenient all the same


def limit_utilization(book: dict[str, Any], limits: dict[str, Any], open_orders: int,
                      orders_last_minute: int = 0) -> dict[str, dict[str, float | None]]:
    """Each risk limit: {used, limit, pct} (pct of the limit used; None when the limit is 0 = off
    or the figure is not known yet)."""
    equity, peak, day = book.get("equity"), book.get("peak_equity"), book.get("day_pnl")
    largest = max((abs(p["qty"]) for p in book.get("positions", {}).values()), default=0)
    used: dict[str, float | None] = {
        "max_gross_exposure": book.get("gross_exposure"),
        "max_daily_loss": max(0.0, -day) if day is not None else None,
        "max_drawdown": max(0.0, peak - equity) if peak is not None and equity is not None else None,
        "max_position_qty": float(largest),
        "max_open_orders": float(open_orders),
        "max_orders_per_minute": float(orders_last_minute),
    }
    result: dict[str, dict[str, float | None]] = {}
    for key, value in used.items():
        limit = limits.get(key)
        if limit is None:
            continue
        pct = round(100.0 * value / float(limit), 1) if value is not None and limit else None
        result[key] = {"used": round(value, 2) if value is not None else None, "limit": float(limit), "pct": pct}
    return result
