"""Alert delivery (DESIGN §9): :func:`deliver_pending` pushes the outbox's undelivered rows
through a :class:`Notifier` (apprise) and retries failures with exponential backoff on later
passes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import apprise
from steadyhand.alerts.outbox import AlertOutbox
from steadyhand.alerts.routes import Route, parse_severity
from steadyhand.domain import Severity
from steadyhand.runtime.logs import module_logger

# Delivery bookkeeping goes to a separate logger, so it is never mistaken for an alert.
log = module_logger("steadyhand.alerting")

NOTIFY_TYPES: dict[Severity, apprise.NotifyType] = {
    Severity.INFO: apprise.NotifyType.INFO,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.HIGH: apprise.NotifyType.FAILURE,
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
}

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
