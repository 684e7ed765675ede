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
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


# One encoder for every line: json.dumps(..., default=str) would build a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonLinesFormatter(logging.Formatter):
    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        fields = getattr(record, "fields", None)
        message = record.getMessage() if not fields and (record.args or event is None) else None
        tb = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname.lower(), event or record.getMessage(), fields, message, tb)

    def line(self, created: float, level: str, event: Any, fields: dict[str, Any] | None = None,
             message: str | None = None, traceback: str | None = None) -> str:
        """One JSON line (no newline); ``fields`` win over the standard keys, as they always have."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(),
            "actor": self.actor,
            "level": level,
            "event": event,
        }
        if fields:
            entry.update(fields)
        elif message is not None:
            entry["message"] = message
        if traceback is not None:
            entry["traceback"] = traceback
        return _ENCODER.encode(entry)


class JsonLinesFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that formats each record once and knows its file's size.

    The stdlib handler formats every record a second time (in ``shouldRollover``) and stats and
    seeks the file per record. This one is the file's only writer (one file per actor process), so
    it counts the bytes it writes, starting from the size found when the file is (re)opened. The
    file is unbuffered: each line is one write() to the OS, so a SIGKILLed process loses nothing
    it has logged, and a line is never split across a rotation.
    """

    def __init__(self, filename: str | Path, max_bytes: int, backups: int) -> None:
        self._size = 0
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def _open(self) -> Any:
        # FileHandler's saved open(): logging may still run while the interpreter shuts down.
        stream = self._builtin_open(self.baseFilename, "ab", buffering=0)
        self._size = os.fstat(stream.fileno()).st_size
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except RecursionError:  # as logging.Handler does: do not hide a runaway recursion
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Append one line, rotating first if it would take the file to ``maxBytes``.

        The caller holds the handler's lock (``handle`` takes it for ``emit``)."""
        data = (line + "\n").encode("utf-8")
        if self.stream is None:  # closed (or delayed): reopen, as FileHandler.emit does
            self.stream = self._open()
        # No rotation with backups=0 (as documented for the stdlib handler) or of an empty file.
        if self.maxBytes > 0 and self.backupCount > 0 and self._size and self._size + len(data) >= self.maxBytes:
            self.doRollover()
            if self.stream is None:
                self.stream = self._open()
        written = 0
        try:
            while written < len(data):  # a short write (disk nearly full) must not cut the line
                count = self.stream.write(data[written:])
                if not count:
                    raise OSError(f"could not write to {self.baseFilename}")
                written += count
        finally:
            self._size += written


class EventLog:
    """``log.event("order_submitted", client_order_id=..., level="info")``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None:
        levelno = _LEVELS[level]
        logger = self.logger
        if not logger.isEnabledFor(levelno):
            return
        direct = None if exc_info else _sole_handler(logger, levelno)
        if direct is None:  # a traceback, or a logging setup we did not make: the full path
            logger.log(levelno, event, extra={"event": event, "fields": fields}, exc_info=exc_info)
            return
        # The line logging would write, without a LogRecord, a caller lookup or a handler walk.
        handler, formatter = direct
        with handler.lock:
            try:
                handler.write_line(formatter.line(time.time(), level, event, fields))
            except RecursionError:
                raise
            except Exception:
                handler.handleError(logger.makeRecord(logger.name, levelno, "", 0, event, (), None))


def _sole_handler(logger: logging.Logger, levelno: int) -> tuple[JsonLinesFileHandler, JsonLinesFormatter] | None:
    """The handler (and its formatter) if ``logger``'s records go to exactly one unfiltered
    JsonLinesFileHandler, as setup_actor_logging sets it up. Checked per event, so any later
    change to the logging setup falls back to ``logging``."""
    parent = logger.parent
    if (logger.handlers or logger.filters or logger.disabled or not logger.propagate or parent is None
            or parent.propagate or len(parent.handlers) != 1):
        return None
    handler, formatter = parent.handlers[0], parent.handlers[0].formatter
    if (type(handler) is not JsonLinesFileHandler or handler.filters or levelno < handler.level
            or not isinstance(formatter, JsonLinesFormatter)):
        return None
    return handler, formatter


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
    handler = JsonLinesFileHandler(Path(log_dir) / f"{actor}.jsonl", max_bytes, backups)
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
