"""What ``status`` and the console line add from the book: P&L, exposure, limits, the dashboard URL.

Pure formatting over ``book.read_book`` and the supervisor's status reply, so cli.py only calls in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steadyhand.dashboard.book import OPEN_STATUSES, limit_utilization, read_book

DASHBOARD_FILE = "dashboard.json"  # url, port, pid of the running dashboard (written at its start)


def dashboard_url(data_dir: Path) -> str | None:
    """The full ``?token=`` URL the running dashboard wrote, or None."""
    try:
        return json.loads((data_dir / DASHBOARD_FILE).read_text()).get("url") or None
    except (OSError, ValueError):
        return None


PORTFOLIO_KEYS = ("equity", "cash", "realized_pnl", "unrealized_pnl", "day_pnl", "gross_exposure", "positions")


def portfolio_of(db: Any | None) -> dict[str, Any]:
    """``status --json``'s ``portfolio`` (its contract keys, and the book's peak equity under a
    private ``_peak_equity`` that cli.py drops): one read, so the limits agree with it."""
    if db is None:
        return {"equity": None, "cash": None, "realized_pnl": 0.0, "unrealized_pnl": 0.0, "day_pnl": None,
                "gross_exposure": 0.0, "positions": {}, "_peak_equity": None}
    book = read_book(db)
    return {**{k: book[k] for k in PORTFOLIO_KEYS}, "_peak_equity": book["peak_equity"]}


def public(portfolio: dict[str, Any]) -> dict[str, Any]:
    """The portfolio as ``status --json`` promises it."""
    return {k: portfolio[k] for k in PORTFOLIO_KEYS}


def utilization_of(data_dir: Path, limits: dict[str, Any], portfolio: dict[str, Any]) -> dict[str, Any]:
    """``utilization`` of the portfolio ``status`` read, on a read-only connection of its own."""
    from steadyhand.state import store

    db = store.open_readonly(data_dir)
    if db is None:
        return {}
    try:
        return utilization(db, limits, {**portfolio, "peak_equity": portfolio.get("_peak_equity")})
    finally:
        db.close()


def utilization(db: Any, limits: dict[str, Any], book: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each risk limit's use, from the store (read-only) and the limits the supervisor holds."""
    book = read_book(db) if book is None else book
    if "orders" not in db.table_names():
        return limit_utilization(book, limits, 0)
    marks = ", ".join("?" * len(OPEN_STATUSES))
    open_orders = db.execute(f"SELECT count(*) FROM orders WHERE status IN ({marks})", OPEN_STATUSES).fetchone()[0]
    # risk counts orders per wall-clock minute; created_at is the journal's wall-clock stamp
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    last_minute = db.execute("SELECT count(*) FROM orders WHERE created_at >= ?", [since]).fetchone()[0]
    return limit_utilization(book, limits, open_orders, last_minute)


def money(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+,.2f}" if signed else f"{value:,.2f}"


def equity_text(portfolio: dict[str, Any]) -> str:
    """The console line's ``equity 100,123.45 (+123.45 today)``."""
    if portfolio.get("equity") is None:
        return "equity n/a"
    return f"equity {money(portfolio['equity'])} ({money(portfolio.get('day_pnl') or 0.0, signed=True)} today)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}%"


def portfolio_lines(result: dict[str, Any]) -> list[str]:
    """The human ``status`` block for P&L, positions, limits and the dashboard."""
    p = result.get("portfolio") or {}
    lines = [f"equity:         {money(p.get('equity'))} (cash {money(p.get('cash'))}, "
             f"day {money(p.get('day_pnl'), signed=True)})",
             f"P&L:            realized {money(p.get('realized_pnl'), signed=True)}, "
             f"unrealized {money(p.get('unrealized_pnl'), signed=True)}; "
             f"gross exposure {money(p.get('gross_exposure'))}"]
    for symbol, pos in sorted((p.get("positions") or {}).items()):
        lines.append(f"  {symbol:<6} {pos['qty']:>7} @ avg {pos['avg_cost']:,.2f}  last {pos['last_price']:,.2f}  "
                     f"unrealized {pos['unrealized_pnl']:+,.2f}")
    limits = result.get("risk_limits") or {}
    if limits:
        lines.append("risk limits:    " + ", ".join(f"{k.removeprefix('max_')} {_pct(u['pct'])}"
                                                    for k, u in limits.items()))
    if result.get("dashboard_url"):
        lines.append(f"dashboard:      {result['dashboard_url']}")
    return lines
