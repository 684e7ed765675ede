"""The event stream: frames ``{"run_id", "stage", "message", "timestamp", ...extras}`` for ``/stream``.

Where frames come from (docs/DESIGN.md §20): the dashboard *reads* what the bot already writes, so
trading sends nothing new and cannot be slowed by a browser.

- ``LogTailer`` follows every actor's JSON-lines log (runtime/logs.py), across rotations, and
  ``frame_of_event`` maps a log event to a stage (signal, risk denial, order placed / filled /
  canceled, halt, restart).
- ``StorePoller`` (dashboard/app.py drives it) turns new equity rows into ``bar.received`` and
  ``equity.update``, and new rows of the alert outbox into ``alert.raised``.

``Hub`` keeps the last N frames for late clients and fans frames out to bounded per-client queues;
a client whose queue is full is dropped (closed), never waited for.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

STAGES = ("bar.received", "signal.emitted", "risk.denied", "order.placed", "order.filled", "order.canceled",
          "equity.update", "risk.halted", "actor.restarted", "alert.raised")
TAIL_BYTES_AT_START = 64 * 1024  # of each existing log file: enough for the backlog and the circuit state


def frame(run_id: str, stage: str, message: str, timestamp: str, **extras: Any) -> dict[str, Any]:
    assert stage in STAGES, stage
    return {"run_id": run_id, "stage": stage, "message": message, "timestamp": timestamp, **extras}


def frame_of_event(event: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """The stream frame for one log event, or None when the event is not one of the stages."""
    name, ts = event.get("event"), str(event.get("ts", ""))
    keep = {k: event[k] for k in ("symbol", "side", "qty", "client_order_id") if k in event}
    if name == "signal":
        return frame(run_id, "signal.emitted", f"{event.get('side')} {event.get('qty')} {event.get('symbol')}"
                     f" ({event.get('reason', '')})", ts, intent_id=event.get("intent_id"),
                     ref_price=event.get("ref_price"), **keep)
    if name == "risk_decision" and not event.get("approved", True):
        return frame(run_id, "risk.denied", f"{event.get('client_order_id')}: {event.get('reason')}", ts,
                     check=event.get("check"), **keep)
    if name == "order_submitted":
        return frame(run_id, "order.placed", f"{event.get('side')} {event.get('qty')} {event.get('symbol')}"
                     f" {event.get('client_order_id')}", ts, bar_to_ack_ms=event.get("bar_to_ack_ms"),
                     status=event.get("status"), **keep)
    if name == "fill":
        return frame(run_id, "order.filled", f"{event.get('side')} {event.get('qty')} {event.get('symbol')}"
                     f" @ {event.get('price')}", ts, price=event.get("price"), fill_id=event.get("fill_id"), **keep)
    if name == "order_status" and event.get("new") == "canceled":
        return frame(run_id, "order.canceled", f"{event.get('client_order_id')} canceled", ts,
                     reason=event.get("reason"), **keep)
    if name == "breaker_tripped" or (name == "trading_state" and event.get("state") == "halted"):
        return frame(run_id, "risk.halted", str(event.get("reason", "halted")), ts)
    if name == "actor_restarted":
        return frame(run_id, "actor.restarted", f"{event.get('actor_name')}: {event.get('detail', '')}", ts,
                     actor_name=event.get("actor_name"))
    return None


@dataclass
class _Followed:
    handle: TextIO
    inode: int
    partial: str = ""


@dataclass
class LogTailer:
    """New lines of every ``*.jsonl`` in a log dir since the last ``poll()``, across rotations.

    runtime/logs.py rotates by renaming ``x.jsonl`` to ``x.jsonl.1`` and opening a new ``x.jsonl``:
    the open handle still reads the renamed file to its end, then the new file is read from 0. A
    file that shrank (truncated by hand) is read again from its start."""

    log_dir: Path
    files: dict[str, _Followed] = field(default_factory=dict)

    def poll(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        try:
            names = [n for n in os.listdir(self.log_dir) if n.endswith(".jsonl")]
        except OSError:
            return events
        for name in sorted(names):
            events.extend(self._poll_file(name))
        return events

    def _poll_file(self, name: str) -> list[dict[str, Any]]:
        path = self.log_dir / name
        try:
            inode, size = (st := os.stat(path)).st_ino, st.st_size
        except OSError:
            return []
        followed = self.files.get(name)
        lines: list[str] = []
        if followed is not None and followed.inode != inode:  # rotated: finish the old file first
            lines += self._read(followed)
            followed.handle.close()
            followed = None
        if followed is None:
            try:
                handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open to follow
            except OSError:
                return _parse(lines)
            if name not in self.files and size > TAIL_BYTES_AT_START:  # first look: only the tail
                handle.seek(size - TAIL_BYTES_AT_START)
                handle.readline()  # the rest of a cut line
            followed = self.files[name] = _Followed(handle, inode)
        elif size < followed.handle.tell():
            followed.handle.seek(0)
            followed.partial = ""
        lines += self._read(followed)
        return _parse(lines)

    @staticmethod
    def _read(followed: _Followed) -> list[str]:
        text = followed.partial + followed.handle.read()
        *complete, followed.partial = text.split("\n")
        return complete

    def close(self) -> None:
        for followed in self.files.values():
            followed.handle.close()
        self.files.clear()


def _parse(lines: Iterable[str]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash mid-write: skip it, keep following
    return events


class Hub:
    """The last ``backlog`` frames, and one bounded queue per connected client. A frame is encoded
    to JSON once, whatever the number of clients."""

    def __init__(self, backlog: int = 200, client_queue: int = 1000,
                 on_drop: Callable[[asyncio.Queue[Any]], None] | None = None) -> None:
        self.on_drop = on_drop  # e.g. abort that client's connection: its sender may be stuck writing
        self.recent: deque[str] = deque(maxlen=backlog)
        self.client_queue = client_queue
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.dropped = 0  # clients dropped for being slow

    def subscribe(self) -> asyncio.Queue[str | None]:
        """A new client's queue, already holding the backlog (a late client catches up first)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(self.client_queue + len(self.recent) + 1)
        for item in self.recent:
            queue.put_nowait(item)
        self.clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self.clients.discard(queue)

    def publish(self, item: dict[str, Any]) -> None:
        text = json.dumps(item, default=str)
        self.recent.append(text)
        for queue in list(self.clients):
            if queue.qsize() >= queue.maxsize - 1:  # slow: drop it rather than wait or grow
                self.clients.discard(queue)
                self.dropped += 1
                _clear(queue)
                queue.put_nowait(None)  # tells its sender to close the socket
                if self.on_drop is not None:
                    self.on_drop(queue)
            else:
                queue.put_nowait(text)


def _clear(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()
