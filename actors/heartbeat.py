"""Heartbeat monitor: pings every actor on an absolute schedule and watches the feed's freshness.

An actor that has left a ping unanswered for longer than the deadline is reported to the
supervisor, which kills its process by pid and restarts it (the rule, and why: runtime/liveness.py).
During an open session (XNYS, on the simulated clock) a feed whose last bar is older than
``risk.stale_after_s`` makes risk deny new entries and raises an alert; both clear when bars flow
again.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from datetime import datetime
from typing import Any

from steadyhand.actors.base import SteadyActor
from steadyhand.actors.messages import ActorUnresponsive, FeedFresh, FeedStale, Ping, Pong
from steadyhand.domain import Severity, market_hours
from steadyhand.runtime import liveness
from steadyhand.runtime.liveness import PingLedger
from thespian.actors import ActorAddress

NOT_PINGED = ("heartbeat", "supervisor")
CLOSED_SLOWDOWN = 5  # the beat is this many times slower while the market is closed (idle cost)


class HeartbeatActor(SteadyActor):
    def setup(self) -> None:
        self.clock = self.run.clock
        self.seq = 0
        settings = self.run.settings.heartbeat
        self.ledger = PingLedger(settings.deadline_s, settings.startup_deadline_s)  # monotonic times
        self.pids: dict[str, int] = {}
        self.answered_at: dict[str, float] = {}  # wall time of each actor's last pong (heartbeat.json)
        self.last_beat: float | None = None  # monotonic time of the previous beat
        self.feed_last_bar: datetime | None = None
        self.watching_since = self.clock.now()  # silence before the monitor started is not judged
        self.feed_stale = False
        self.replay_done = False
        self.handlers = {Pong: self.on_pong}
        self.timers = {"beat": self.beat, "deadman": self.deadman}

    def on_first_wiring(self) -> None:
        for name in self._watched():
            self.ledger.restarted(name)  # a new monitor gives everyone the startup allowance
        interval = self.run.settings.heartbeat.interval_s
        self.every("beat", interval, first_in=0.0, slow_period_s=interval * CLOSED_SLOWDOWN,
                   slow_when=self._market_closed)
        if self.run.settings.alerts.deadman_url:
            self.every("deadman", self.run.settings.alerts.deadman_interval_s)

    def on_peers_changed(self, names: set[str]) -> None:
        for name in names - set(NOT_PINGED):  # a restarted actor: a clean slate, the startup allowance
            self.pids.pop(name, None)
            if self.peers.get(name) is None:
                self.ledger.forget(name)
            else:
                self.ledger.restarted(name)
        if "feed" in names and self.feed_stale:
            self.tell_peer("risk", FeedStale(self.feed_last_bar, 0.0))  # a new risk must know too

    def _watched(self) -> list[str]:
        return [n for n, address in self.peers.items() if n not in NOT_PINGED and address is not None]

    def healthy(self) -> bool:
        """Every actor is up and none has left a ping unanswered beyond its deadline (the same rule
        as the beat's, judged as of when the running timer was due)."""
        everyone_up = all(address is not None for address in self.peers.values())
        return everyone_up and not self.ledger.overdue(time.monotonic() - self.timer_late_s)

    def deadman(self) -> None:
        """The dead-man's switch: ping the configured URL only while all is well, so that silence
        (the whole bot dead, or an actor left down) is what an outside watcher alerts on."""
        if not self.healthy():
            self.event("deadman_skipped", level="warning")
            return
        url = self.run.settings.alerts.deadman_url
        threading.Thread(target=_ping_url, args=(url,), name="deadman", daemon=True).start()

    def _market_closed(self) -> bool:
        return not market_hours.is_open(self.clock.now())

    def beat(self) -> None:
        now = time.monotonic()
        late = self.timer_late_s
        if late > self.ledger.deadline_s:  # the monitor itself was starved or stopped: blame no one
            self.event("heartbeat_late", level="warning", late_s=round(late, 2))
        for hung in self.ledger.judge(now, late):  # before this beat's pings: only older ones count
            pid = self.pids.get(hung.name, 0)  # pid 0 (never answered): the supervisor knows it
            self.event("unresponsive", level="warning", actor_name=hung.name, pid=pid,
                       silent_s=round(hung.silent_s, 2))
            self.tell_peer("supervisor", ActorUnresponsive(hung.name, pid, hung.silent_s))
        self.seq += 1
        for name in self._watched():
            if self.tell_peer(name, Ping(self.seq)):
                self.ledger.sent(name, self.seq, now)
        gap = now - self.last_beat if self.last_beat is not None else 0.0
        self.last_beat = now
        self._check_feed(gap)
        liveness.write_heartbeats(self.run.data_dir, {
            "at": time.time(), "answered_at": self.answered_at, "pids": self.pids,
            "feed_last_bar": self.feed_last_bar, "sim_now": self.clock.now(), "feed_stale": self.feed_stale})

    def on_pong(self, message: Pong, sender: ActorAddress) -> None:
        if self.peers.get(message.name) != sender:
            return  # from a process that has since been replaced
        self.pids[message.name] = message.pid
        self.answered_at[message.name] = time.time()
        if self.ledger.answered(message.name, message.seq, time.monotonic()):  # news: a first answer
            self.event("responsive", actor_name=message.name, pid=message.pid)
        if message.name == "feed":
            self.feed_last_bar = message.info.get("last_bar_at") or self.feed_last_bar
            self.replay_done = bool(message.info.get("replay_done"))

    def _check_feed(self, gap_s: float) -> None:
        now = self.clock.now()
        # The monitor sees the feed's last bar only as of the previous pong, one beat ago (``gap_s``
        # real seconds: five normal beats while the market was closed, more if the monitor itself
        # was late); on an accelerated clock a beat is many simulated seconds, so allow for it.
        settings = self.run.settings
        beat_s = max(settings.heartbeat.interval_s, gap_s)
        limit = settings.risk.stale_after_s + 2 * beat_s * self.clock.speed
        session = market_hours.session_at(now)
        if session is None or self.replay_done:
            stale, since = False, 0.0
        else:  # only silence in this session (the last bar before the open is hours old) and seen
            # by this monitor counts (a bot started mid-session has no bar until its feed catches up)
            seen = max(self.feed_last_bar or session[0], session[0], self.watching_since)
            since = (now - seen).total_seconds()
            stale = since > limit
        if stale and not self.feed_stale:
            self.feed_stale = True
            self.event("feed_stale", level="warning", since_s=round(since, 1))
            self.tell_peer("risk", FeedStale(self.feed_last_bar, since))
            self.alert("feed:stale", Severity.HIGH, "market data is stale",
                       f"no bar for {since:.0f}s of an open session; new entries are denied")
        elif not stale and self.feed_stale and self.feed_last_bar is not None:
            self.feed_stale = False
            self.event("feed_fresh")
            self.tell_peer("risk", FeedFresh(self.feed_last_bar))
            self.alert("feed:fresh", Severity.HIGH, "market data is fresh again (resolved)",
                       "bars are flowing; new entries allowed")

    def pong_info(self) -> dict[str, Any]:
        return {"feed_stale": self.feed_stale}


def _ping_url(url: str, timeout_s: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
            response.read(64)
    except OSError:
        pass  # the watcher notices missing pings; nothing to do here
