"""The write-ahead rule, checked by the broker itself: when ``submit`` is called, the order's journal
row is already committed (visible to another connection) as PENDING_SUBMIT.

The OMS runs in Thespian's in-process simpleSystemBase here (actor code does not care which base
runs it); the broker is the real simulated exchange on a real exchange.db, wrapped."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from actorkit import Probe
from steadyhand.actors import oms as oms_module
from steadyhand.actors.messages import Configure, OrderRequests, ReconcileCompleted, Wiring
from steadyhand.brokers import make_broker
from steadyhand.config import RunSettings, Settings
from steadyhand.domain import BrokerOrder, OrderSpec, Side
from steadyhand.sim.clock import anchor_clock
from steadyhand.state import store
from thespian.actors import ActorExitRequest, ActorSystem


class JournalCheckingBroker:
    """Delegates to the real broker, but first asserts the journal row is durable."""

    def __init__(self, inner: Any, db_path: str) -> None:
        self.inner = inner
        self.db_path = db_path
        self.name = inner.name
        self.checked: list[str] = []

    def _check(self, spec: OrderSpec) -> None:
        other = sqlite3.connect(self.db_path)  # a different connection sees only committed data
        try:
            row = other.execute("SELECT status FROM orders WHERE client_order_id = ?",
                                [spec.client_order_id]).fetchone()
        finally:
            other.close()
        assert row == ("pending_submit",), f"{spec.client_order_id} not journaled before submit: {row}"
        self.checked.append(spec.client_order_id)

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        self._check(spec)
        return self.inner.submit(spec)

    def submit_many(self, specs: Any, between: Any = None) -> list[Any]:
        for spec in specs:  # a batch: every row committed before the broker hears of any
            self._check(spec)
        return self.inner.submit_many(specs, between)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_journal_row_is_durable_before_the_broker_sees_the_order(
    tmp_path: Path, system: ActorSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "var"
    store.open_store(data_dir).close()
    clock = anchor_clock(str(data_dir / "exchange.db"), speed=60.0, start=_session_open())
    run = RunSettings(settings=Settings(), data_dir=str(data_dir), clock=clock)
    wrappers: list[JournalCheckingBroker] = []

    def wrapped(run: RunSettings) -> JournalCheckingBroker:
        wrappers.append(JournalCheckingBroker(make_broker(run), run.db_path))
        return wrappers[0]

    monkeypatch.setattr(oms_module, "make_broker", wrapped)
    oms = system.createActor(oms_module.OmsActor)
    system.ask(oms, Configure(name="oms", settings=run), 5)
    probe = system.createActor(Probe)
    system.tell(oms, Wiring({"risk": probe, "portfolio": probe, "alerter": probe}))
    assert _wait(system, probe, lambda seen: any(isinstance(m, ReconcileCompleted) for m in seen))

    requests = tuple(OrderSpec(client_order_id=f"t-{sym}-B0", symbol=sym, side=Side.BUY, qty=5)
                     for sym in ("AAPL", "MSFT"))
    system.tell(oms, OrderRequests(requests))
    system.tell(oms, OrderRequests(requests))  # the same intents again: duplicates, dropped
    assert _wait(system, probe, lambda seen: len(wrappers[0].checked) == 2)
    system.tell(oms, ActorExitRequest())

    db = sqlite3.connect(data_dir / "steadyhand.db")
    rows = db.execute("SELECT client_order_id, status, broker_order_id FROM orders ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["t-AAPL-B0", "t-MSFT-B0"]
    assert all(r[1] != "pending_submit" and r[2] for r in rows)  # acknowledged by the broker
    assert sorted(wrappers[0].checked) == ["t-AAPL-B0", "t-MSFT-B0"]  # each submitted exactly once


def _wait(system: ActorSystem, probe: Any, done: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = system.ask(probe, "seen?", 1) or []  # also runs the in-process actors' timers
        if done(seen):
            return True
    return False


def _session_open() -> Any:
    from datetime import UTC, datetime

    from steadyhand.domain import market_hours

    return market_hours.previous_open(datetime(2026, 11, 20, 16, 0, tzinfo=UTC))
