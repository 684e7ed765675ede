"""ReplaceOrder and CancelOrder through the real risk and OMS actors (Thespian's in-process
simpleSystemBase) on a real exchange.db: risk checks the new terms and ownership, the OMS journals
the intent before the broker hears of it -- checked by the broker itself, from another connection."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from actorkit import Probe
from steadyhand.actors import oms as oms_module
from steadyhand.actors.messages import (
    Bars,
    CancelOrder,
    Configure,
    OrderRequests,
    ReplaceOrder,
    Wiring,
)
from steadyhand.actors.risk import RiskActor
from steadyhand.brokers import make_broker
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import Bar, BrokerOrder, OrderSpec, OrderType, Side
from steadyhand.sim.clock import anchor_clock
from steadyhand.state import store
from test_oms_journal import _session_open, _wait
from thespian.actors import ActorExitRequest, ActorSystem

LAST = 100.0  # the last AAPL close risk is told; the sim's own AAPL trades far above a 99 buy limit


class IntentCheckingBroker:
    """Delegates to the real broker, but first asserts the replace intent is durable."""

    def __init__(self, inner: Any, db_path: str) -> None:
        self.inner = inner
        self.db_path = db_path
        self.name = inner.name
        self.replaced: list[str] = []

    def replace(self, broker_order_id: str, qty: int | None = None, limit_price: Decimal | None = None,
                stop_price: Decimal | None = None) -> BrokerOrder:
        other = sqlite3.connect(self.db_path)  # a different connection sees only committed data
        try:
            row = other.execute("SELECT replace_state FROM orders WHERE broker_order_id = ?",
                                [broker_order_id]).fetchone()
        finally:
            other.close()
        assert row == ("pending",), f"{broker_order_id}: replace not journaled before the broker call: {row}"
        self.replaced.append(broker_order_id)
        return self.inner.replace(broker_order_id, qty, limit_price, stop_price)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(data_dir / "steadyhand.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_replace_and_cancel_through_risk_and_the_oms(tmp_path: Path, system: ActorSystem,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "var"
    store.open_store(data_dir).close()
    start = _session_open() + timedelta(hours=1)
    clock = anchor_clock(str(data_dir / "exchange.db"), speed=1.0, start=start)
    run = RunSettings(settings=Settings(), data_dir=str(data_dir), clock=clock)
    wrappers: list[IntentCheckingBroker] = []

    def wrapped(run: RunSettings) -> IntentCheckingBroker:
        wrappers.append(IntentCheckingBroker(make_broker(run), run.db_path))
        return wrappers[0]

    monkeypatch.setattr(oms_module, "make_broker", wrapped)
    oms = system.createActor(oms_module.OmsActor)
    risk = system.createActor(RiskActor)
    system.ask(oms, Configure(name="oms", settings=run), 5)
    system.ask(risk, Configure(name="risk", settings=run), 5)
    probe = system.createActor(Probe)
    system.tell(risk, Wiring({"oms": oms, "supervisor": probe, "alerter": probe}))
    system.tell(oms, Wiring({"risk": risk, "portfolio": probe, "alerter": probe}))
    system.tell(risk, Bars(start, (Bar("AAPL", start, LAST, LAST, LAST, LAST, 1000),)))
    assert _wait(system, probe, lambda seen: bool(_rows(data_dir, "SELECT 1 FROM reconciliations")))

    cid = "sma-AAPL-20261120T1530Z-B0"
    system.tell(oms, OrderRequests((OrderSpec(cid, "AAPL", Side.BUY, 5, type=OrderType.LIMIT,
                                              limit_price=Decimal("99.00")),)))
    assert _wait(system, probe, lambda seen: bool(_rows(data_dir, f"SELECT 1 FROM orders WHERE client_order_id = "
                                                                  f"'{cid}' AND status = 'submitted'")))
    # someone else's strategy: refused by risk, the broker never asked
    system.tell(risk, ReplaceOrder(cid, 7, Decimal("98.50"), None, "amend", strategy="other"))
    # outside the price band: refused by risk, journaled as its decision
    system.tell(risk, ReplaceOrder(cid, 7, Decimal("50.00"), None, "too far", strategy="sma"))
    # a good one: the OMS journals the intent first (the broker checks), the sim makes a new order
    system.tell(risk, ReplaceOrder(cid, 7, Decimal("98.50"), None, "amend", strategy="sma"))
    new_cid = f"{cid}~r1"
    assert _wait(system, probe, lambda seen: bool(_rows(data_dir, f"SELECT 1 FROM orders WHERE client_order_id = "
                                                                  f"'{new_cid}' AND status = 'submitted'")))
    assert len(wrappers[0].replaced) == 1
    assert _rows(data_dir, f"SELECT status, replaced_by, replace_state FROM orders WHERE client_order_id = '{cid}'") \
        == [("replaced", new_cid, "applied")]
    assert _rows(data_dir, f"SELECT qty, limit_price, replaces FROM orders WHERE client_order_id = '{new_cid}'") \
        == [(7, "98.50", cid)]
    decisions = [r[0] for r in _rows(data_dir, "SELECT reason FROM risk_decisions ORDER BY rowid")]
    assert len(decisions) == 2 and decisions[0].startswith("replace: limit price 50")
    assert decisions[1] == "replace: ok"
    # cancel by the strategy's original id: the OMS follows the chain to the working order
    system.tell(risk, CancelOrder(cid, "done", strategy="other"))  # not its order: nothing happens
    system.tell(risk, CancelOrder(cid, "done", strategy="sma"))
    assert _wait(system, probe, lambda seen: bool(_rows(data_dir, f"SELECT 1 FROM orders WHERE client_order_id = "
                                                                  f"'{new_cid}' AND status = 'canceled'")))
    assert len(wrappers[0].replaced) == 1
    system.tell(oms, ActorExitRequest())
    system.tell(risk, ActorExitRequest())
