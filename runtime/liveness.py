"""Which actors are hung, judged only by the pings each was sent and failed to answer.

The heartbeat monitor (actors/heartbeat.py) pings every actor on each beat and feeds this ledger
what it sent and what came back; the ledger holds no clock of its own (times are passed in), so
every rule below is tested deterministically.

- An actor is hung when the oldest ping it has not answered is older than the deadline
  (``startup_deadline_s`` until its first answer after a (re)start, then ``deadline_s``). An actor
  that answered every ping it was sent is never hung, however long ago the last ping went out, so
  a beat that slows down (market closed) or speeds up (market open) cannot make anyone look hung.
- The pings still owed at that first answer were queued behind the start (a slow setup): they
  count from the answer, so the normal deadline does not judge time the allowance covered.
- A Pong carries its ping's seq; an answer to ping k answers every earlier ping too (a busy
  actor's unasked-for pong, seq < 0, answers all pings sent so far).
- The monitor's own lateness is nobody else's fault: a beat is judged as of the time it was due,
  and a beat later than its schedule by more than the deadline (the monitor was starved or
  stopped, and the pongs that came meanwhile may still be unread) judges no one and treats the
  outstanding pings as sent now.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_OUTSTANDING = 4096  # unanswered pings kept per actor (a hung one is long reported by then)


@dataclass(frozen=True, slots=True)
class Overdue:
    """An actor judged hung: ``silent_s`` is the age of its oldest unanswered ping."""

    name: str
    silent_s: float


@dataclass(slots=True)
class _Actor:
    outstanding: deque[tuple[int, float]] = field(default_factory=deque)  # (seq, sent at), by seq
    answered: bool = False  # has answered since its (re)start: the startup allowance is over
    reported: bool = False  # judged hung and reported; again only after an answer or a restart


class PingLedger:
    """Per actor, the pings it was sent and has not answered yet; judges who is hung."""

    def __init__(self, deadline_s: float, startup_deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.startup_deadline_s = max(deadline_s, startup_deadline_s)
        self._actors: dict[str, _Actor] = {}

    def restarted(self, name: str) -> None:
        """A new process for ``name`` (or the first one): nothing outstanding, startup allowance."""
        self._actors[name] = _Actor()

    def forget(self, name: str) -> None:
        """``name`` is down and no longer pinged."""
        self._actors.pop(name, None)

    def sent(self, name: str, seq: int, at: float) -> None:
        """Ping ``seq`` went to ``name`` at ``at`` (seqs increase)."""
        actor = self._actors.get(name)
        if actor is None:
            actor = self._actors[name] = _Actor()
        actor.outstanding.append((seq, at))
        if len(actor.outstanding) > MAX_OUTSTANDING:
            del actor.outstanding[1]  # keep the oldest: it is the one judged

    def answered(self, name: str, seq: int, at: float) -> bool:
        """``name`` answered ping ``seq`` at ``at``: that one and every earlier one (seq < 0: all
        so far). True for its first answer since a (re)start or since it was reported hung."""
        actor = self._actors.get(name)
        if actor is None:
            return False
        outstanding = actor.outstanding
        if seq < 0:
            outstanding.clear()
        while outstanding and outstanding[0][0] <= seq:
            outstanding.popleft()
        if not actor.answered:  # the end of its start: what it still owes counts from now
            actor.outstanding = deque((s, max(t, at)) for s, t in outstanding)
        news = actor.reported or not actor.answered
        actor.answered, actor.reported = True, False
        return news

    def oldest_unanswered(self, name: str) -> float | None:
        """When the oldest ping ``name`` has not answered was sent; None if it answered them all."""
        actor = self._actors.get(name)
        return actor.outstanding[0][1] if actor is not None and actor.outstanding else None

    def overdue(self, as_of: float) -> list[Overdue]:
        """Every actor whose oldest unanswered ping is older than its deadline at ``as_of``."""
        found = []
        for name, actor in self._actors.items():
            if actor.outstanding:
                silent = as_of - actor.outstanding[0][1]
                limit = self.deadline_s if actor.answered else self.startup_deadline_s
                if silent > limit:
                    found.append(Overdue(name, silent))
        return found

    def judge(self, now: float, late_s: float) -> list[Overdue]:
        """A beat at ``now``, ``late_s`` after it was due: the actors to report as hung, each once
        until it answers again or restarts. A beat late by more than the deadline re-baselines."""
        if late_s > self.deadline_s:
            self.rebaseline(now)
            return []
        found = [o for o in self.overdue(now - max(0.0, late_s)) if not self._actors[o.name].reported]
        for o in found:
            self._actors[o.name].reported = True
        return found

    def rebaseline(self, now: float) -> None:
        """Treat every outstanding ping as sent ``now`` (the monitor itself was not running)."""
        for actor in self._actors.values():
            actor.outstanding = deque((seq, now) for seq, _ in actor.outstanding)


# --- what the monitor last heard, for the dashboard and /metrics ---------------------------------

HEARTBEAT_FILE = "heartbeat.json"  # in the data dir: wall time of each actor's last answer, feed's last bar


def write_heartbeats(data_dir: str, info: dict[str, object]) -> None:
    """Replace ``<data dir>/heartbeat.json`` atomically (one small write per beat; readers never see
    half a file). A failed write is not the monitor's problem: the dashboard shows the age grow."""
    import json
    import os

    path = os.path.join(data_dir, HEARTBEAT_FILE)
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(info, f, default=str)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def read_heartbeats(data_dir: str) -> dict[str, object]:
    import json
    import os

    try:
        with open(os.path.join(data_dir, HEARTBEAT_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
