"""Alert routing, dedup, the durable outbox and apprise delivery (DESIGN §9).

The alerter actor glues these together: every ``Alert`` is first written to the ``alerts`` table
(:class:`AlertOutbox`, so nothing is lost if the process dies before delivery), then
:func:`deliver_pending` pushes undelivered rows through a :class:`Notifier` and retries failures with
exponential backoff on later passes. Every alert also goes to the ``steadyhand.alerts`` logger.

Secrets live in apprise URLs (SMTP passwords, webhook tokens), so a URL is never logged or put in an
exception: :func:`mask_url` keeps the scheme and (when it really is a host name) the host.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import apprise
import sqlite_utils
from apprise.utils.cwe312 import cwe312_word
from steadyhand.actors.messages import Alert, Severity
from steadyhand.config import AlertSettings
from steadyhand.logs import module_logger
from steadyhand.state.store import iso, parse_ts, transaction

ALERT_URLS_ENV = "STEADYHAND_ALERT_URLS"
ENV_MIN_SEVERITY = Severity.HIGH  # URLs from the environment get HIGH and above

# Every alert is also a log record here (the JSON-lines handler is configured elsewhere).
alert_log = module_logger("steadyhand.alerts")
# Delivery bookkeeping goes to a separate logger, so it is never mistaken for an alert.
log = module_logger("steadyhand.alerting")

LOG_LEVELS: dict[Severity, int] = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.HIGH: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}

NOTIFY_TYPES: dict[Severity, apprise.NotifyType] = {
    Severity.INFO: apprise.NotifyType.INFO,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.HIGH: apprise.NotifyType.FAILURE,
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
}

_SEVERITY_NAMES = "info|all|warning|high|critical"
# "critical:mailto://..." -- the (?!//) keeps a scheme that happens to be a severity name a URL.
_PREFIX_RE = re.compile(rf"^\s*({_SEVERITY_NAMES})\s*:(?!//)\s*(.*)$", re.IGNORECASE | re.DOTALL)
# Split the environment variable only where a new URL starts, so a comma inside a URL's query
# (``?to=a@x.com,b@y.com``) does not cut it in two.
_ENV_SPLIT_RE = re.compile(rf"[\s,;]+(?=(?:(?:{_SEVERITY_NAMES})\s*:)?[a-z0-9+.-]+://)", re.IGNORECASE)
_HOST_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def parse_severity(value: str | int | Severity) -> Severity:
    """``"critical"``/``"HIGH"``/``"all"`` (= INFO)/``30``/``Severity.HIGH`` -> Severity."""
    if isinstance(value, Severity):
        return value
    if isinstance(value, int):
        return Severity(value)
    text = str(value).strip()
    if text.isdigit():
        return Severity(int(text))
    if text.lower() == "all":
        return Severity.INFO
    try:
        return Severity[text.upper()]
    except KeyError:
        raise ValueError(f"unknown alert severity {value!r} (info, warning, high, critical, all)") from None


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


def _looks_like_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    # A dotted name with a letters-only TLD; anything else may be a token (slack://T000/...).
    if len(labels) < 2 or not labels[-1].isalpha():
        return False
    if not all(_HOST_LABEL_RE.match(label) for label in labels):
        return False
    # apprise's own CWE-312 heuristic: random-looking words are treated as secrets.
    return all(cwe312_word(label) == label for label in labels)


def mask_url(url: str) -> str:
    """``scheme://host[:port]`` for messages and logs; user, password, path and query dropped."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme or "?"
        host = parts.hostname or ""
    except ValueError:
        return "<unparseable URL>"
    try:
        port = parts.port
    except ValueError:  # e.g. tgram://123456:TOKEN/... puts a token where the port goes
        port = None
    shown = host if host and _looks_like_host(host) else "***"
    if shown != "***" and port:
        shown = f"{shown}:{port}"
    return f"{scheme}://{shown}"


@dataclass(frozen=True, repr=False)
class Route:
    """One apprise URL and the lowest severity it receives."""

    url: str
    min_severity: Severity

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:  # the URL holds secrets: never show it whole
        return f"Route({self.safe_url!r}, {self.min_severity.name})"


def _route(entry: str, default: Severity, origin: str) -> Route | None:
    entry = entry.strip()
    if not entry:
        return None
    severity = default
    match = _PREFIX_RE.match(entry)
    if match:
        severity = parse_severity(match.group(1))
        entry = match.group(2).strip()
    if apprise.Apprise.instantiate(entry) is None:
        raise ValueError(f"{origin}: unusable apprise URL {mask_url(entry)!r} (credentials hidden)")
    return Route(entry, severity)


def split_urls(text: str) -> list[str]:
    """Split ``STEADYHAND_ALERT_URLS`` (spaces or commas between URLs) into entries."""
    return [part.strip() for part in _ENV_SPLIT_RE.split(text.strip()) if part.strip()]


def alert_urls(settings: AlertSettings, environ: Mapping[str, str] | None = None) -> list[Route]:
    """Every configured route, validated with apprise.

    ``settings.urls`` get ``settings.min_severity`` and ``STEADYHAND_ALERT_URLS`` gets HIGH and above;
    either may carry a ``critical:``/``high:``/``warning:``/``info:``/``all:`` prefix. A URL given
    twice becomes one route with the lower threshold (so it is not sent twice).
    Raises ``ValueError`` (naming the URL, secrets masked) for a URL apprise cannot use.
    """
    env = os.environ if environ is None else environ
    default = parse_severity(settings.min_severity)
    candidates = [_route(u, default, "alerts.urls") for u in settings.urls]
    candidates += [
        _route(u, ENV_MIN_SEVERITY, ALERT_URLS_ENV) for u in split_urls(env.get(ALERT_URLS_ENV, ""))
    ]
    merged: dict[str, Severity] = {}
    for route in candidates:
        if route is not None:
            merged[route.url] = min(route.min_severity, merged.get(route.url, route.min_severity))
    return [Route(url, severity) for url, severity in merged.items()]


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
    # "event"/"fields" is the shape steadyhand.logs' JSON-lines formatter expects (EventLog).
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


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------


class Notifier:
    """Sends outbox rows through apprise to every route whose threshold the severity reaches.

    Time bound: each delivery is one ``Apprise.notify(timeout=timeout_s)`` over all targeted routes
    (apprise runs them in parallel and stops waiting at the deadline), with the asset's
    ``service_timeout`` and every plugin's socket connect/read timeouts (``cto``/``rto``; for
    SMTP the connect timeout is the whole session's socket timeout) capped at ``timeout_s`` too,
    so an abandoned worker thread also ends soon. Plugins are built fresh per delivery, which
    also skips apprise's per-instance throttle sleep (up to 5.5 s for email).

    Routes that already accepted a row are remembered (in memory, by row id) so a retry only goes
    to the ones that failed. A send that timed out may still have arrived: delivery is
    at-least-once.
    """

    def __init__(self, routes: list[Route], timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.routes = list(routes)
        self.timeout_s = float(timeout_s)
        self.last_error = ""  # why the last deliver() returned False (URLs masked)
        self._asset = apprise.AppriseAsset(service_timeout=self.timeout_s)
        self._accepted: dict[int, set[int]] = {}

    def targets(self, severity: str | int | Severity) -> list[Route]:
        sev = parse_severity(severity)
        return [route for route in self.routes if route.min_severity <= sev]

    def deliver(self, row: Mapping[str, Any]) -> bool:
        """Send one outbox row; True when every targeted route accepted it (or none is targeted)."""
        severity = parse_severity(row["severity"])
        row_id = row.get("id")
        accepted = self._accepted.get(row_id, set()) if row_id is not None else set()
        todo = [
            i for i, route in enumerate(self.routes) if route.min_severity <= severity and i not in accepted
        ]
        errors: list[str] = []
        if todo:
            self._send(row, severity, todo, accepted, errors)
        self.last_error = "; ".join(errors)
        if errors and accepted and row_id is not None:
            self._accepted[row_id] = accepted  # partly delivered: a retry skips these routes
        else:
            self._accepted.pop(row_id, None)
        return not errors

    def _send(
        self,
        row: Mapping[str, Any],
        severity: Severity,
        todo: list[int],
        accepted: set[int],
        errors: list[str],
    ) -> None:
        apobj = apprise.Apprise(asset=self._asset)
        added: list[int] = []
        for i in todo:
            plugin = apprise.Apprise.instantiate(self.routes[i].url, asset=self._asset)
            if plugin is None:
                errors.append(f"{self.routes[i].safe_url}: unusable URL")
                continue
            # min(): keep a shorter ?cto=/?rto= from the URL; the email plugin defaults to 15 s.
            plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), self.timeout_s)
            plugin.socket_read_timeout = min(float(plugin.socket_read_timeout), self.timeout_s)
            apobj.add(plugin)
            added.append(i)
        if not added:
            return
        title = f"[{severity.name}] {row['title']}"
        body = row.get("body") or row["title"]  # apprise refuses an empty body
        footer = f"{row.get('key', '')} · {row.get('source') or 'steadyhand'} · {row.get('created_at', '')}"
        if severity is Severity.CRITICAL:
            key = str(row.get("key", ""))
            original = key.split(":", 1)[1] if key.startswith("reminder:") else row_id_text(row)
            footer += f"\nacknowledge with: steadyhand ack {original}"
        try:
            result = apobj.notify(
                body=f"{body}\n\n{footer}",
                title=title,
                notify_type=NOTIFY_TYPES[severity],
                body_format=apprise.NotifyFormat.TEXT,
                timeout=self.timeout_s,
            )
        except Exception as exc:  # a failed delivery, never a crash; the type only (no URL in text)
            errors.append(f"apprise raised {type(exc).__name__}")
            return
        per_route = list(result)
        if len(per_route) == len(added):  # apprise reports services in the order they were added
            for i, outcome in zip(added, per_route, strict=True):
                if outcome:
                    accepted.add(i)
                else:
                    errors.append(f"{self.routes[i].safe_url}: {outcome.status.name.lower()}")
        elif result:
            accepted.update(added)
        else:
            errors.append(f"apprise: {result.status.name.lower()}")


def deliver_pending(
    outbox: AlertOutbox,
    notifier: Notifier,
    now: datetime,
    max_age_s: float = 86400.0,
    retry_after_s: float = 1.0,
    max_retry_after_s: float = 300.0,
    budget_s: float | None = None,
) -> int:
    """One delivery pass; returns how many rows were delivered.

    Expires rows older than ``max_age_s``, then tries each pending row whose backoff has passed
    (``retry_after_s`` doubled per failed attempt, capped at ``max_retry_after_s``). A pass takes
    up to about ``notifier.timeout_s`` per row tried; with ``budget_s`` no new row is started once
    that much wall time has gone (the rest wait for the next pass).
    """
    outbox.expire(now, max_age_s)
    started = time.monotonic()
    delivered = 0
    for row in outbox.pending(now, max_age_s):
        if budget_s is not None and time.monotonic() - started >= budget_s:
            break
        if not outbox.due(row, now, retry_after_s, max_retry_after_s):
            continue
        if notifier.deliver(row):
            outbox.mark_delivered(row["id"], now)
            delivered += 1
        else:
            error = notifier.last_error or "not accepted"
            outbox.mark_failed(row["id"], error, now)
            attempt = (row["attempts"] or 0) + 1
            log.warning(
                "alert %s (%s) not delivered (attempt %s): %s",
                row["id"],
                row["key"],
                attempt,
                error,
                extra={
                    "event": "alert_delivery_failed",
                    "fields": {"alert_id": row["id"], "key": row["key"], "attempt": attempt, "error": error},
                },
            )
    return delivered


def row_id_text(row: Mapping[str, Any]) -> str:
    return str(row.get("id", ""))
