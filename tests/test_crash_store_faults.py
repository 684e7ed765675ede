"""State-store faults: when the journal cannot be written (locked past the busy timeout, disk full),
the OMS stops trading and asks the supervisor to halt, with a CRITICAL alert -- it does not
crash-loop, does not send an order it could not journal, and leaves nothing half-written; the next
start reconciles cleanly.

The OMS runs in Thespian's in-process simpleSystemBase (actor code does not care which base runs
it); the lock is a real SQLite write lock held by another connection, the broker the real sim.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from actorkit import Probe
from crashkit import Prep, broker_order, last_session, log_events, query, reports
from steadyhand.actors import oms as oms_module
from steadyhand.actors.messages import Configure, OrderRequests, ReconcileCompleted, RequestHalt, Wiring
from steadyhand.config import RunSettings, Settings
from steadyhand.control.verify import verify
from steadyhand.domain import Alert, OrderSpec, Severity, Side
from steadyhand.sim.clock import stored_clock
from thespian.actors import ActorExitRequest, ActorSystem


def _wait(system: ActorSystem, probe: Any, done: Any, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = system.ask(probe, "seen?", 1) or []  # also runs the in-process actors' timers
        if done(seen):
            return seen
    pytest.fail("timed out")


def _start_oms(system: ActorSystem, data_dir: Path) -> tuple[Any, Any]:
    clock = stored_clock(data_dir / "exchange.db")
    run = RunSettings(settings=Settings(), data_dir=str(data_dir), clock=clock)
    oms = system.createActor(oms_module.OmsActor)
    system.ask(oms, Configure(name="oms", settings=run), 5)
    probe = system.createActor(Probe)
    system.tell(oms, Wiring({"risk": probe, "portfolio": probe, "alerter": probe, "supervisor": probe}))
    _wait(system, probe, lambda seen: any(isinstance(m, ReconcileCompleted) for m in seen))
    return oms, probe


def test_journal_locked_halts_trading_and_the_next_start_is_clean(system: ActorSystem, data_dir: Path) -> None:
    opened, _ = last_session()
    prep = Prep(data_dir, opened + timedelta(hours=1))
    prep.anchor(opened + timedelta(hours=1), speed=60.0)
    prep.close()
    oms, probe = _start_oms(system, data_dir)

    blocker = sqlite3.connect(data_dir / "steadyhand.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    try:
        request = OrderSpec(client_order_id="sf-AAPL-B0", symbol="AAPL", side=Side.BUY, qty=5)
        system.tell(oms, OrderRequests((request,)))
        seen = _wait(system, probe, lambda s: any(isinstance(m, RequestHalt) for m in s), timeout=20)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    halt = next(m for m in seen if isinstance(m, RequestHalt))
    assert halt.source == "oms" and "locked" in halt.reason
    critical = [m for m in seen if isinstance(m, Alert) and m.severity is Severity.CRITICAL]
    assert critical and critical[0].key == "store:fault"
    assert broker_order(data_dir, "sf-AAPL-B0") is None  # never sent what it could not journal
    assert not query(data_dir, "SELECT 1 FROM orders")  # and nothing half-written

    # The lock is gone, but this OMS stays stopped (the supervisor halts; a restart starts clean).
    system.tell(oms, OrderRequests((OrderSpec(client_order_id="sf-AAPL-B1", symbol="AAPL",
                                              side=Side.BUY, qty=5),)))
    _wait(system, probe, lambda _: any(e["reason"] == "store fault"
                                       for e in log_events(data_dir, "oms", "requests_dropped")))
    assert broker_order(data_dir, "sf-AAPL-B1") is None
    assert sum(isinstance(m, RequestHalt) for m in system.ask(probe, "seen?", 1)) == 1  # asked once
    system.tell(oms, ActorExitRequest())

    again, probe2 = _start_oms(system, data_dir)
    assert reports(data_dir)[-1]["orders_checked"] == 0
    system.tell(again, ActorExitRequest())
    result = verify(data_dir, Settings(), running=False)
    assert result["ok"], result
    assert sqlite3.connect(data_dir / "steadyhand.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
