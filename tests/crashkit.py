"""Helpers for the crash-safety tests: set up journal and broker state the way the OMS (or someone
else at the broker) would have left it, on real SQLite files, before a real ``steadyhand run``.

Preparation uses the real :class:`SimExchange` on the data dir's ``exchange.db`` with a manual
clock (so fills and expiries happen at chosen simulated times), then anchors the run's clock where
the test wants the bot to start.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import pinned_start
from steadyhand.config import Settings
from steadyhand.domain import BrokerOrder, OrderSpec, OrderStatus, OrderType, Side, TimeInForce, market_hours
from steadyhand.sim.clock import anchor_clock
from steadyhand.sim.exchange import SimExchange
from steadyhand.sim.market import load_market
from steadyhand.state import store

FAR = Decimal("1.00")  # a buy limit this far below the market never fills


@dataclass
class ManualClock:
    t: datetime

    def now(self) -> datetime:
        return self.t


def last_session() -> tuple[datetime, datetime]:
    """Open and close of a full XNYS session: the suite's pinned one (tests/harness.py SIM_START),
    or unpinned a past one (the latest before yesterday, as before the pin)."""
    opened = pinned_start() or market_hours.previous_open(datetime.now(UTC) - timedelta(days=1))
    return opened, market_hours.next_close(opened)


class Prep:
    """Journal and broker state, written before the bot starts (or while it is down)."""

    def __init__(self, data_dir: Path, at: datetime, settings: Settings | None = None) -> None:
        self.data_dir = data_dir
        self.settings = settings or Settings()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = store.open_store(data_dir)
        self.clock = ManualClock(at)
        sim = self.settings.sim
        self.ex = SimExchange(data_dir / "exchange.db", load_market(sim, self.settings.symbols), self.clock,
                              partial_fill_probability=0.0, slippage_bps=sim.slippage_bps,
                              latency_ms=sim.latency_ms, start_cash=sim.start_cash, seed=sim.seed, faults=False)

    def at(self, t: datetime) -> Prep:
        """Move the exchange's time to ``t``: whatever would fill or expire by then does."""
        self.clock.t = t
        self.ex.open_orders()
        return self

    def journal(self, spec: OrderSpec) -> None:
        """The OMS's write-ahead row: PENDING_SUBMIT, committed."""
        now = store.now_iso()
        with store.transaction(self.db):
            self.db["orders"].insert({
                "client_order_id": spec.client_order_id, "symbol": spec.symbol, "side": spec.side.value,
                "qty": spec.qty, "type": spec.type.value, "time_in_force": spec.time_in_force.value,
                "limit_price": None if spec.limit_price is None else str(spec.limit_price),
                "stop_price": None, "status": OrderStatus.PENDING_SUBMIT.value, "filled_qty": 0,
                "created_at": now, "updated_at": now})

    def ack(self, order: BrokerOrder) -> None:
        """The OMS journaled the broker's acknowledgement."""
        with store.transaction(self.db):
            self.db["orders"].update(order.client_order_id, {
                "broker_order_id": order.broker_order_id, "status": order.status.value,
                "submitted_at": store.iso(order.submitted_at), "updated_at": store.now_iso()})

    def order(self, cid: str, symbol: str, side: Side = Side.BUY, qty: int = 1, limit: Decimal | None = FAR,
              tif: TimeInForce = TimeInForce.GTC, journal: str = "acked",
              partial_fill_probability: float = 0.0) -> BrokerOrder | None:
        """``journal``: "acked" (journaled, submitted, ack journaled), "pending" (journaled and
        submitted, ack not journaled), "only" (journaled, never submitted), "none" (someone
        else's order: submitted, never journaled)."""
        spec = OrderSpec(client_order_id=cid, symbol=symbol, side=side, qty=qty,
                         type=OrderType.MARKET if limit is None else OrderType.LIMIT, time_in_force=tif,
                         limit_price=limit)
        if journal != "none":
            self.journal(spec)
        if journal == "only":
            return None
        self.ex.partial_fill_probability = partial_fill_probability
        order = self.ex.submit(spec)
        if journal == "acked":
            self.ack(order)
        return order

    def anchor(self, start: datetime, speed: float) -> None:
        """Where and how fast the bot's clock starts (the CLI keeps this anchor)."""
        anchor_clock(self.data_dir / "exchange.db", speed=speed, start=start)

    def close(self) -> None:
        self.ex.close()
        self.db.close()


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, params)]
    finally:
        db.close()


def reports(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(r["report"]) for r in query(data_dir, "SELECT report FROM reconciliations ORDER BY id")]


def order_row(data_dir: Path, cid: str) -> dict[str, Any]:
    rows = query(data_dir, "SELECT * FROM orders WHERE client_order_id = ?", (cid,))
    assert rows, f"{cid} not in the journal"
    return rows[0]


def alerts(data_dir: Path) -> list[dict[str, Any]]:
    return query(data_dir, "SELECT key, severity, title, body FROM alerts ORDER BY id")


def exchange(data_dir: Path, settings: Settings | None = None) -> SimExchange:
    """The broker as another process sees it, on the run's own clock."""
    from steadyhand.sim.clock import stored_clock

    settings = settings or Settings()
    clock = stored_clock(data_dir / "exchange.db")
    assert clock is not None
    return SimExchange(data_dir / "exchange.db", load_market(settings.sim, settings.symbols), clock,
                       faults=False)


def broker_order(data_dir: Path, cid: str) -> BrokerOrder | None:
    ex = exchange(data_dir)
    try:
        return ex.get_by_client_id(cid)
    finally:
        ex.close()


def log_events(data_dir: Path, actor: str, event: str) -> list[dict[str, Any]]:
    path = data_dir / "logs" / f"{actor}.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if item.get("event") == event:
            out.append(item)
    return out
