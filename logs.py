"""Structured logs: JSON lines in ``<data dir>/logs/<actor>.jsonl``, rotated.

One file per actor process, so there is exactly one writer per file and rotation is safe across
processes. Every signal, risk decision, order, fill and restart is one line::

    {"ts": "...", "actor": "oms", "level": "info", "event": "order_submitted", ...}

``steadyhand logs`` merges the files into a readable console view.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class JsonLinesFormatter(logging.Formatter):
    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "actor": self.actor,
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        elif record.args or getattr(record, "event", None) is None:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class EventLog:
    """``log.event("order_submitted", client_order_id=..., level="info")``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None:
        self.logger.log(_LEVELS[level], event, extra={"event": event, "fields": fields},
                        exc_info=exc_info)


class _LateLogger:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(logging.getLogger(self.name), attr)


def module_logger(name: str) -> Any:
    """A module-level logger that is looked up at each call, not at import. Thespian gives every
    actor process a new logging manager; a logger object created before the fork would bypass the
    actor's handlers (and print to the console of the run instead of the actor's log file)."""
    return _LateLogger(name)


def setup_actor_logging(actor: str, log_dir: str | Path, max_bytes: int = 10_000_000,
                        backups: int = 5) -> EventLog:
    """Route the ``steadyhand`` logger tree of this process into ``<log_dir>/<actor>.jsonl``."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("steadyhand")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = logging.handlers.RotatingFileHandler(
        Path(log_dir) / f"{actor}.jsonl", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(JsonLinesFormatter(actor))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # not into Thespian's logging process
    return EventLog(logging.getLogger(f"steadyhand.{actor}"))


def read_events(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every event of every actor's current log file, in time order."""
    events: list[dict[str, Any]] = []
    for path in sorted(Path(log_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
    events.sort(key=lambda e: e.get("ts", ""))
    return events


def readable(event: dict[str, Any]) -> str:
    """One console line for an event."""
    skip = {"ts", "actor", "level", "event"}
    extras = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    ts = event.get("ts", "")[11:23]
    return f"{ts} {event.get('level', ''):<8} {event.get('actor', ''):<10} {event.get('event', '')} {extras}"
