"""The alert outbox (DESIGN §9): every ``Alert`` is first written to the ``alerts`` table, so
nothing is lost if the process dies before delivery; cooldown and dedup by key, acknowledgement,
escalation of unacknowledged CRITICAL alerts, expiry. Every alert also goes to the
``steadyhand.alerts`` logger.

The alerter actor (``actors/alerter.py``) glues routes, outbox and delivery together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlite_utils
from steadyhand.alerts.routes import parse_severity
from steadyhand.domain import Alert, Severity
from steadyhand.runtime.logs import module_logger
from steadyhand.state.store import iso, parse_ts, transaction

# Every alert is also a log record here (the JSON-lines handler is configured elsewhere).
alert_log = module_logger("steadyhand.alerts")
# Bookkeeping (an alert given up on) goes to the delivery logger, so it is never mistaken for an alert.
log = module_logger("steadyhand.alerting")

LOG_LEVELS: dict[Severity, int] = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.HIGH: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}

# ---------------------------------------------------------------------------------------------
# The outbox
# ---------------------------------------------------------------------------------------------


EXPIRED_PREFIX = "expired: "  # last_error of a row given up on (delivered_at stays NULL)


def suppressed_note(count: int) -> str:
    return f"({count} similar suppressed)"


def retry_delay_s(attempts: int, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Backoff before the next try after ``attempts`` failures: 0, base, 2*base, 4*base ... <= cap."""
    if attempts <= 0:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(attempts - 1, 30))


class AlertOutbox:
    """The ``alerts`` table as a durable outbox (the alerter actor is its only writer).

    The schema has no "last attempt" column, so the time of the last failed try is kept in memory
    (``last_attempt``, keyed by row id). After a restart it is empty: every pending row is tried
    once at once, then backs off again.
    """

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.last_attempt: dict[int, datetime] = {}

    # -- writing ---------------------------------------------------------------------------------

    def record(self, alert: Alert, cooldown_s: float, now: datetime, clock_now: datetime | None = None) -> int | None:
        """Store ``alert`` (before any delivery) and return its row id, or None when deduplicated.
        ``clock_now``: the run clock's time, stored as ``clock_ts`` (what retention ages rows by).

        An alert whose key already has a row created within ``cooldown_s`` (delivered or not) is
        counted on that row (``suppressed`` + 1), not stored again. The next row for the key after
        the cooldown carries "(N similar suppressed)" in its body, N from the previous row.
        """
        severity = parse_severity(alert.severity)
        with transaction(self.db):
            prev = self.db.execute(
                "SELECT id, created_at, suppressed FROM alerts WHERE key = ? ORDER BY id DESC LIMIT 1",
                [alert.key],
            ).fetchone()
            created = parse_ts(prev[1]) if prev is not None else None
            alert_id: int | None
            if created is not None and (now - created).total_seconds() < cooldown_s:
                self.db.execute("UPDATE alerts SET suppressed = suppressed + 1 WHERE id = ?", [prev[0]])
                alert_id = None
            else:
                body = alert.body
                if prev is not None and prev[2]:
                    body = f"{body}\n{suppressed_note(prev[2])}" if body else suppressed_note(prev[2])
                cursor = self.db.execute(
                    "INSERT INTO alerts (key, severity, title, body, source, created_at, delivered_at,"
                    " attempts, suppressed, last_error, clock_ts) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, 0, NULL, ?)",
                    [alert.key, severity.name.lower(), alert.title, body, alert.source, iso(now), iso(clock_now)],
                )
                alert_id = cursor.lastrowid
        _log_alert(alert, severity, alert_id)
        return alert_id

    def mark_delivered(self, id: int, now: datetime) -> None:  # "id": the agreed API name
        self.db.execute("UPDATE alerts SET delivered_at = ? WHERE id = ?", [iso(now), id])
        self.last_attempt.pop(id, None)

    def mark_failed(self, id: int, error: str, now: datetime | None = None) -> None:
        """One more failed attempt; ``now`` (default: wall clock) starts the backoff."""
        self.db.execute(
            "UPDATE alerts SET attempts = attempts + 1, last_error = ? WHERE id = ?", [error[:1000], id]
        )
        self.last_attempt[id] = now if now is not None else datetime.now().astimezone()

    def expire(self, now: datetime, max_age_s: float) -> int:
        """Give up on undelivered rows older than ``max_age_s``; return how many were given up.

        The row stays (history), with ``last_error`` "expired: ..." and ``delivered_at`` NULL;
        :meth:`pending` no longer returns it.
        """
        expired = [row for row in self._undelivered() if _age_s(row, now) > max_age_s]
        for row in expired:
            error = f"{EXPIRED_PREFIX}not delivered within {max_age_s:g}s (last error: {row['last_error']})"
            self.db.execute("UPDATE alerts SET last_error = ? WHERE id = ?", [error, row["id"]])
            self.last_attempt.pop(row["id"], None)
            log.warning(
                "alert %s (%s) expired undelivered after %s attempts",
                row["id"],
                row["key"],
                row["attempts"],
                extra={"event": "alert_expired", "fields": {"alert_id": row["id"], "key": row["key"]}},
            )
        return len(expired)

    def acknowledge(self, id: int, operator: str, now: datetime) -> bool:
        """An operator acknowledged a CRITICAL alert: no more reminders. False if no such alert."""
        cursor = self.db.execute("UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                                 [iso(now), operator, id])
        return cursor.rowcount == 1

    def escalate(self, now: datetime, interval_s: float, clock_now: datetime | None = None) -> list[int]:
        """Re-send every delivered, unacknowledged CRITICAL alert whose last sending is older than
        ``interval_s``, as a reminder row of its own; returns the reminders' ids."""
        reminders: list[int] = []
        rows = list(self.db.query(
            "SELECT * FROM alerts WHERE severity = 'critical' AND acked_at IS NULL AND delivered_at IS NOT NULL"
            " AND substr(key, 1, 9) != 'reminder:'"))
        for row in rows:
            last = parse_ts(row["escalated_at"] or row["delivered_at"])
            if last is None or (now - last).total_seconds() < interval_s:
                continue
            with transaction(self.db):
                cursor = self.db.execute(
                    "INSERT INTO alerts (key, severity, title, body, source, created_at, attempts, suppressed,"
                    " clock_ts) VALUES (?, 'critical', ?, ?, ?, ?, 0, 0, ?)",
                    [f"reminder:{row['id']}", f"REMINDER (unacknowledged): {row['title']}", row["body"],
                     row["source"], iso(now), iso(clock_now)])
                self.db.execute("UPDATE alerts SET escalated_at = ? WHERE id = ?", [iso(now), row["id"]])
            reminders.append(int(cursor.lastrowid))
        return reminders

    # -- reading ---------------------------------------------------------------------------------

    def pending(self, now: datetime, max_age_s: float) -> list[dict[str, Any]]:
        """Undelivered, unexpired rows, oldest first."""
        return [row for row in self._undelivered() if _age_s(row, now) <= max_age_s]

    def get(self, id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM alerts WHERE id = ?", [id]))
        return rows[0] if rows else None

    def due(self, row: Mapping[str, Any], now: datetime, base_s: float = 1.0, cap_s: float = 300.0) -> bool:
        """Has the row's backoff (by its ``attempts``) passed since its last failed try?"""
        last = self.last_attempt.get(row["id"])
        if last is None:
            return True
        return (now - last).total_seconds() >= retry_delay_s(row["attempts"] or 0, base_s, cap_s)

    def _undelivered(self) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT * FROM alerts WHERE delivered_at IS NULL"
                " AND (last_error IS NULL OR substr(last_error, 1, ?) != ?) ORDER BY id",
                [len(EXPIRED_PREFIX), EXPIRED_PREFIX],
            )
        )


def _age_s(row: Mapping[str, Any], now: datetime) -> float:
    created = parse_ts(row["created_at"])
    return 0.0 if created is None else (now - created).total_seconds()


def _log_alert(alert: Alert, severity: Severity, alert_id: int | None) -> None:
    # "event"/"fields" is the shape steadyhand.runtime.logs' JSON-lines formatter expects (EventLog).
    fields = {
        "key": alert.key,
        "severity": severity.name.lower(),
        "title": alert.title,
        "body": alert.body,
        "source": alert.source,
        "alert_id": alert_id,
    }
    text = f"{alert.title}: {alert.body}" if alert.body else alert.title
    if alert_id is None:
        # A repeat within the cooldown is counted in the outbox; DEBUG so a flapping condition
        # does not flood the log.
        alert_log.debug(
            "%s (repeat, suppressed)", text, extra={"event": "alert_suppressed", "fields": fields}
        )
        return
    alert_log.log(LOG_LEVELS[severity], "%s", text, extra={"event": "alert", "fields": fields})
