"""The OMS as host of ``orders/reconcile.py``, without the actor: real journal files, a real broker,
broker calls counted. The bench uses it to time the OMS's reconciliation on top of a broker's own
recovery (bench_ibkr's reconnect figure); the actor adds only messages to risk and the portfolio."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from steadyhand.config import OmsSettings
from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus
from steadyhand.orders import reconcile
from steadyhand.orders.journal import OrderJournal
from steadyhand.state import store


class JournalHost:
    def __init__(self, data_dir: Path, broker: Any, clock: Any) -> None:
        self.db = store.open_store(data_dir)
        self.journal = OrderJournal(self.db)
        self.broker, self.clock = broker, clock
        self.cursor: str | None = None
        self.broker_calls = 0

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
        with self.journal.transaction():
            changed = bool(self.record_fills(updates.fills))
            for order in updates.orders:
                changed |= self.apply_order(order)
        self.cursor = updates.cursor
        return changed, len(updates.fills)

    def still_alive(self) -> None:
        pass

    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None:
        pass

    def submit_journaled(self, spec: OrderSpec) -> BrokerOrder:
        """The OMS's write-ahead submit: journaled, submitted, acknowledged."""
        self.journal.insert_pending((spec,))
        order = self.call("submit", spec)
        self.apply_order(order)
        return order  # type: ignore[no-any-return]

    def reconcile(self) -> dict[str, Any]:
        return reconcile.reconcile(self, "broker recovered", OmsSettings(stale_order_age_s=0))

    def close(self) -> None:
        self.db.close()
