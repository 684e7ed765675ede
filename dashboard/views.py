"""The dashboard's view model: pure functions from a read-only store and a few facts to JSON.

``state_view`` is everything the page shows, in the issue's order: alive and since when; trading
state, broker circuit, feed freshness, market countdown; actors; equity curve and day P&L;
positions; open orders; recent fills (client order id, price, slippage); risk-limit utilization;
alerts; the log tail; the last reconciliation. Tested without a browser (tests/test_dashboard.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from steadyhand.dashboard.book import OPEN_STATUSES, limit_utilization, read_book
from steadyhand.domain import market_hours

RECENT_FILLS = 50
RECENT_ALERTS = 20
EQUITY_POINTS = 2000  # the curve's newest rows (a simulated day is ~390 one-minute rows)


@dataclass
class Facts:
    """What the view needs beside the store: the dashboard process knows these."""

    wall_now: float  # time.time()
    sim_now: datetime  # the run clock
    real_seconds_per_sim_second: float  # 1 / speed, for countdowns in wall time
    run: dict[str, Any]  # run.json (pid, started_at)
    heartbeats: dict[str, Any]  # heartbeat.json
    circuit: dict[str, Any]  # {"open": bool, "since": ts, "reason": str} from the OMS's log
    risk_limits: dict[str, Any]
    log_tail: list[dict[str, Any]] = field(default_factory=list)


def state_view(db: Any, facts: Facts) -> dict[str, Any]:
    tables = set(db.table_names())
    book = read_book(db)
    open_orders = _open_orders(db) if "orders" in tables else []
    return {
        "alive": {"running": True, "since": facts.run.get("started_at"), "pid": facts.run.get("pid")},
        "trading": {"state": _control(db, "trading_state", "active"), "halt_reason": _control(db, "halt_reason", ""),
                    "circuit": facts.circuit, "feed": feed_view(facts), "market": market_view(facts)},
        "actors": actors_view(db, facts) if "actors" in tables else {},
        "equity": {"curve": equity_curve(db, facts.sim_now), "equity": book["equity"], "cash": book["cash"],
                   "day_pnl": book["day_pnl"], "realized_pnl": book["realized_pnl"],
                   "unrealized_pnl": book["unrealized_pnl"], "gross_exposure": book["gross_exposure"]},
        "positions": book["positions"],
        "open_orders": open_orders,
        "fills": recent_fills(db) if "fills" in tables else [],
        "risk_limits": limit_utilization(book, facts.risk_limits, len(open_orders)),
        "alerts": recent_alerts(db) if "alerts" in tables else [],
        "log_tail": facts.log_tail,
        "reconciliation": last_reconciliation(db) if "reconciliations" in tables else None,
    }


def _control(db: Any, key: str, default: str) -> str:
    if "control" not in db.table_names():
        return default
    row = db.execute("SELECT value FROM control WHERE key = ?", [key]).fetchone()
    return row[0] if row and row[0] is not None else default


def feed_view(facts: Facts) -> dict[str, Any]:
    """How old the feed's last bar is, in simulated seconds of the run clock."""
    last = facts.heartbeats.get("feed_last_bar")
    age = None
    if last:
        age = round((facts.sim_now - datetime.fromisoformat(str(last))).total_seconds(), 1)
    return {"last_bar": last, "age_s": age, "stale": bool(facts.heartbeats.get("feed_stale"))}


def market_view(facts: Facts) -> dict[str, Any]:
    """Open or closed, and the wall-clock countdown to the close or the next open."""
    now = facts.sim_now
    session = market_hours.session_at(now)
    if market_hours.is_open(now) and session is not None:
        sim_left = (session[1] - now).total_seconds()
        return {"open": True, "event": "close", "at": session[1].isoformat(),
                "in_s": round(sim_left * facts.real_seconds_per_sim_second, 1)}
    nxt = market_hours.next_open(now)
    return {"open": False, "event": "open", "at": nxt.isoformat(),
            "in_s": round((nxt - now).total_seconds() * facts.real_seconds_per_sim_second, 1)}


def actors_view(db: Any, facts: Facts) -> dict[str, dict[str, Any]]:
    """pid, restarts and alive from the supervisor's table, heartbeat age from the monitor's file."""
    answered = facts.heartbeats.get("answered_at") or {}
    result = {}
    for name, pid, restarts, alive in db.execute("SELECT name, pid, restarts, alive FROM actors ORDER BY rowid"):
        at = answered.get(name)
        result[name] = {"pid": pid, "restarts": restarts, "alive": bool(alive),
                        "heartbeat_age_s": round(facts.wall_now - float(at), 1) if at else None}
    return result


def equity_curve(db: Any, sim_now: datetime) -> list[list[Any]]:
    """[ts, equity] of the newest rows (the day's and the days before it, rolled up to one a day)."""
    if "equity" not in db.table_names():
        return []
    rows = db.execute("SELECT ts, equity FROM equity ORDER BY ts DESC LIMIT ?", [EQUITY_POINTS]).fetchall()
    return [[ts, round(float(eq), 2)] for ts, eq in reversed(rows)]


def _open_orders(db: Any) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(OPEN_STATUSES))
    rows = db.execute(f"SELECT client_order_id, symbol, side, qty, type, limit_price, status, filled_qty, created_at"
                      f" FROM orders WHERE status IN ({marks}) ORDER BY created_at DESC LIMIT 200", OPEN_STATUSES)
    keys = ("client_order_id", "symbol", "side", "qty", "type", "limit_price", "status", "filled_qty", "created_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def recent_fills(db: Any) -> list[dict[str, Any]]:
    """The newest fills with their slippage against the price the strategy saw, where the journal
    has it (``orders.ref_price``); "n/a" otherwise."""
    has_ref = "ref_price" in db["orders"].columns_dict if "orders" in db.table_names() else False
    ref = "o.ref_price" if has_ref else "NULL"
    rows = db.execute(f"SELECT f.fill_id, f.client_order_id, f.symbol, f.side, f.qty, f.price, f.ts, {ref}"
                      f" FROM fills f LEFT JOIN orders o USING (client_order_id)"
                      f" ORDER BY f.ts DESC, f.rowid DESC LIMIT ?", [RECENT_FILLS]).fetchall()
    fills = []
    for fill_id, cid, symbol, side, qty, price, ts, ref_price in rows:
        fills.append({"fill_id": fill_id, "client_order_id": cid, "symbol": symbol, "side": side, "qty": qty,
                      "price": float(price), "ts": ts, "slippage_bps": slippage_bps(side, price, ref_price)})
    return fills


def slippage_bps(side: str, price: Any, ref_price: Any) -> float | str:
    """Positive = worse than the reference (paid more on a buy, got less on a sell)."""
    try:
        ref = float(ref_price)
    except (TypeError, ValueError):
        return "n/a"
    if ref <= 0:
        return "n/a"
    sign = 1 if side == "buy" else -1
    return round(sign * (float(price) - ref) / ref * 10_000, 2)


def recent_alerts(db: Any) -> list[dict[str, Any]]:
    columns = db["alerts"].columns_dict
    acked = "acked_at" if "acked_at" in columns else "NULL"
    rows = db.execute(f"SELECT id, severity, title, body, created_at, delivered_at, {acked} FROM alerts"
                      f" ORDER BY id DESC LIMIT ?", [RECENT_ALERTS]).fetchall()
    return [{"id": i, "severity": sev, "title": title, "body": body, "created_at": created,
             "delivered": bool(delivered), "acked_at": ack, "needs_ack": sev == "critical" and not ack}
            for i, sev, title, body, created, delivered, ack in rows]


def last_reconciliation(db: Any) -> dict[str, Any] | None:
    row = db.execute("SELECT report FROM reconciliations ORDER BY id DESC LIMIT 1").fetchone()
    if not row:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def circuit_after(circuit: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The broker circuit as the OMS's log tells it (``circuit_open`` / ``circuit_closed``)."""
    if event.get("event") == "circuit_open":
        return {"open": True, "since": event.get("ts"), "reason": event.get("reason", "")}
    if event.get("event") == "circuit_closed":
        return {"open": False, "since": event.get("ts"), "reason": ""}
    return circuit
