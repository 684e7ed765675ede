"""An in-process stand-in for the OMS actor as host of orders/amend.py and orders/reconcile.py, on
real SQLite files and a real broker, with a kill at a crash point: ``crash_at`` makes the named
point raise :class:`Killed` (a BaseException nothing in the order path catches), after which the test
drops this host as a killed process would be gone and starts another on the same files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from steadyhand.config import OmsSettings
from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus
from steadyhand.orders import amend, reconcile
from steadyhand.orders.journal import OrderJournal
from steadyhand.state import store


class Killed(BaseException):
    """The process died here."""


class Host:
    """What the OMS is to amend and reconcile: broker calls, journal writes, events."""

    def __init__(self, data_dir: Path, broker: Any, clock: Any) -> None:
        self.db = store.open_store(data_dir)
        self.journal = OrderJournal(self.db)
        self.broker = broker
        self.clock = clock
        self.cursor: str | None = broker.poll(None).cursor  # from now on, as the OMS's reconcile takes it
        self.broker_calls = 0
        self.events: list[tuple[str, dict[str, Any]]] = []

    def now(self) -> datetime:
        return self.clock.now()  # type: ignore[no-any-return]

    def call(self, op: str, *args: Any) -> Any:
        self.broker_calls += 1
        return getattr(self.broker, op)(*args)

    def find(self, cid: str) -> BrokerOrder | None:
        return self.call("get_by_client_id", cid)  # type: ignore[no-any-return]

    def mark(self, cid: str, status: OrderStatus, reason: str) -> None:
        self.journal.mark(cid, status, reason)

    def record_fills(self, fills: tuple[Fill, ...] | list[Fill]) -> list[Fill]:
        return self.journal.record_fills(fills)

    def apply_order(self, order: BrokerOrder) -> bool:
        return self.journal.apply(order) is not None

    def cancel(self, broker_order_id: str) -> None:
        self.call("cancel", broker_order_id)

    def drain_updates(self) -> tuple[bool, int]:
        updates = self.call("poll", self.cursor)
        new = self.record_fills(updates.fills)
        changed = bool(new)
        for order in updates.orders:
            changed |= self.apply_order(order)
        self.cursor = updates.cursor
        return changed, len(updates.fills)

    def still_alive(self) -> None:
        pass

    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None:
        self.events.append((event, fields))

    # --- what a test does with it ------------------------------------------------------------------

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        """The OMS's write-ahead submit, acknowledged and journaled."""
        self.journal.insert_pending((spec,))
        order = self.call("submit", spec)
        self.apply_order(order)
        return order  # type: ignore[no-any-return]

    def reconcile(self) -> dict[str, Any]:
        return reconcile.reconcile(self, "test", OmsSettings(stale_order_age_s=0))

    def close(self) -> None:
        self.db.close()


@contextmanager
def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> Iterator[None]:
    """Inside: reaching ``point`` in orders/amend.py raises Killed."""
    real = amend.crash_point

    def die(name: str) -> None:
        if name == point:
            raise Killed(point)
        real(name)

    monkeypatch.setattr(amend, "crash_point", die)
    try:
        with pytest.raises(Killed):
            yield
    finally:
        monkeypatch.setattr(amend, "crash_point", real)


def row(host: Host, cid: str) -> dict[str, Any]:
    found = host.journal.row(cid)
    assert found is not None, f"{cid} not in the journal"
    return dict(found)
