"""Alerter: every alert is stored in the durable outbox first, then delivered through apprise.

Delivery runs in a worker thread of this actor's process, so a slow or unreachable endpoint never
delays trading (other actors only ever *send* to the alerter) and never makes the alerter miss a
heartbeat. Undelivered alerts stay in the outbox and are retried with backoff, across restarts.
With no URL configured, alerts go to the log only.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import AckAlert, Reconfigure
from steadyhand.alerts.delivery import Notifier, deliver_pending
from steadyhand.alerts.outbox import AlertOutbox
from steadyhand.alerts.routes import alert_urls
from steadyhand.domain import Alert
from steadyhand.state import retention, store
from thespian.actors import ActorAddress

DELIVERY_PERIOD_S = 1.0
IDLE_PERIOD_S = 10.0  # also the escalation check's period when nothing is pending


class AlerterActor(SteadyActor):
    def setup(self) -> None:
        settings = self.run.settings.alerts
        self.db = store.connect(self.run.db_path, synchronous="FULL")
        self.outbox = AlertOutbox(self.db)
        self.routes = alert_urls(settings)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self._deliver_forever, name="alert-delivery", daemon=True)
        self.worker.start()
        self.handlers = {Alert: self.on_alert, Reconfigure: self.on_reconfigure, AckAlert: self.on_ack}
        self.timers = {"checkpoint": self.checkpoint_wal}

    def on_first_wiring(self) -> None:
        days = self.run.settings.retention.alerts_days  # as read at start: `reload` leaves [retention] alone
        self.start_retention({"alerts": lambda now: retention.prune_alerts(self.db.conn, now, days)})
        interval = self.run.settings.retention.checkpoint_interval_s
        if interval:
            self.every("checkpoint", interval)

    def checkpoint_wal(self) -> None:
        """Empty the -wal files of steadyhand.db and, on the sim, exchange.db. Here because the alerter
        is never on the order path; a checkpoint writes no table, and never waits (state/retention.py)."""
        for path in (self.run.db_path, self.run.exchange_db_path):
            try:
                result = retention.checkpoint(path)
            except sqlite3.Error as exc:  # e.g. disk trouble: the OMS and risk report that; try again later
                self.event("wal_checkpoint_failed", level="warning", path=path, error=repr(exc))
                continue
            if result is not None and result.busy:  # in use right now: what it could do is done, rest next time
                self.event("wal_checkpoint_busy", path=path, wal_frames=result.wal_frames,
                           checkpointed=result.checkpointed, wal_bytes=result.wal_bytes)

    def on_alert(self, message: Alert, sender: ActorAddress) -> None:
        # record() stores it before any delivery attempt and logs it (steadyhand.alerts)
        alert_id = self.outbox.record(message, self.run.settings.alerts.cooldown_s, datetime.now(UTC),
                                      clock_now=self.run.clock.now())
        if alert_id is not None:
            self.wake.set()

    def on_reconfigure(self, message: Reconfigure, sender: ActorAddress) -> None:
        """An operator's `reload`: new routes and cooldown (validated by the supervisor)."""
        self.run = type(self.run)(**{**vars_of(self.run), "settings": message.settings})
        self.routes = alert_urls(message.settings.alerts)
        self.event("routes_reloaded", routes=[r.safe_url for r in self.routes])
        self.wake.set()

    def on_ack(self, message: AckAlert, sender: ActorAddress) -> None:
        self.outbox.acknowledge(message.alert_id, message.operator, datetime.now(UTC))
        self.event("alert_acknowledged", alert_id=message.alert_id, operator=message.operator)

    def _deliver_forever(self) -> None:
        # Its own connection: sqlite3 connections are not shared across threads.
        db = store.connect(self.run.db_path, synchronous="FULL")
        outbox = AlertOutbox(db)
        while not self.stop.is_set():
            notifier = Notifier(self.routes)  # rebuilt each pass: a reload may change the routes
            try:
                now = datetime.now(UTC)
                outbox.escalate(now, self.run.settings.alerts.escalation_interval_s, clock_now=self.run.clock.now())
                deliver_pending(outbox, notifier, now)
            except Exception:  # delivery trouble must never take the alerter down
                self.event("delivery_error", level="error", exc_info=True)
            # Sooner while something waits for delivery; a new alert wakes this thread at once anyway.
            busy = outbox.pending(datetime.now(UTC), 86400.0)
            idle = min(IDLE_PERIOD_S, self.run.settings.alerts.escalation_interval_s)
            self.wake.wait(DELIVERY_PERIOD_S if busy else idle)
            self.wake.clear()

    def on_stop(self) -> None:
        self.stop.set()
        self.wake.set()
        self.worker.join(timeout=2.0)


def vars_of(obj: object) -> dict[str, object]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}  # type: ignore[attr-defined]
