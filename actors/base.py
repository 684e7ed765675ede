"""The base every steadyhand actor shares: configure, wiring, heartbeat, timers, let-it-crash.

Let it crash: Thespian retries a message whose handler raised and then lives on with whatever
state it had. We want the opposite: an actor that raises logs the error and exits, and the
supervisor restarts it fresh from SQLite. So an unhandled exception marks the actor crashed (every
later message is dropped) and sends it an ``ActorExitRequest``; the supervisor sees
``ChildActorExited`` and restarts it. This works the same under multiprocTCPBase and the in-process
simpleSystemBase, so actor code never cares which base runs it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from steadyhand.actors.messages import (
    ChildReady,
    Configure,
    CrashReport,
    DebugCrash,
    DebugHang,
    Ping,
    Pong,
    Rewind,
    Step,
    TradingStateChanged,
    Wiring,
)
from steadyhand.config import RunSettings
from steadyhand.domain import Alert, Severity, market_hours
from steadyhand.runtime.logs import EventLog, setup_actor_logging
from steadyhand.state import retention
from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    DeadEnvelope,
    PoisonMessage,
    WakeupMessage,
)

Handler = Callable[[Any, ActorAddress], None]
SLOW_HANDLER_S = 1.0  # a handler running longer is logged (the heartbeat declares hung at seconds)
# Wall seconds between looks whether a retention pass is due (a clock read): often enough that at
# --speed 3000 (8 simulated hours per look) every overnight close is seen.
RETENTION_CHECK_S = 10.0


class SteadyActor(Actor):
    """Subclasses set ``handlers`` in ``setup`` and override the ``on_*`` hooks they need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = type(self).__name__
        self.run: RunSettings | None = None
        self.peers: dict[str, ActorAddress | None] = {}  # None: that peer is down
        self.supervisor: ActorAddress | None = None
        self.log: EventLog | None = None
        self.handlers: dict[type, Handler] = {}
        self.timers: dict[str, Callable[[], None]] = {}
        self._schedules: dict[str, tuple[float, float, int]] = {}  # name -> (t0, period, k)
        self._slow: dict[str, tuple[float, Callable[[], bool]]] = {}  # name -> (slow period, when)
        self._generation: dict[str, int] = {}  # name -> current chain of a periodic timer
        self._sleeping_slow: set[str] = set()  # periodic timers now waiting out a slow period
        self.timer_late_s = 0.0  # how late the running periodic timer fired after its slot
        self._crashed = False
        self._crash_reported = False  # report_crash() already said why (CrashReport)
        self._last_alive = 0.0
        self._wired_once = False
        self._retention_steps: dict[str, retention.Step] = {}
        self._retention_todo: list[str] = []  # tables of the pass under way
        self._retention_done: dict[str, int] = {}
        self._retention_last: datetime | None = None
        self._busy_s = 0.0  # wall seconds in handlers since the last lock-step token (sim/lockstep.py)

    # --- Thespian entry point ---------------------------------------------------------------

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if self._crashed:
            return
        started = time.perf_counter()
        try:
            self._dispatch(message, sender)
        except Exception as exc:  # let it crash: log, exit, be restarted fresh
            self._crash(exc, message)
        took = time.perf_counter() - started
        self._busy_s += took
        if took >= SLOW_HANDLER_S:  # a handler this long starves the heartbeat: say which one
            what = f"timer:{message.payload}" if isinstance(message, WakeupMessage) else type(message).__name__
            self.event("slow_handler", level="warning", message=what, seconds=round(took, 3))

    def _dispatch(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, WakeupMessage):
            self._on_timer(message.payload)
        elif isinstance(message, Step) and message.route:
            self._pass_step(message)
        elif isinstance(message, Rewind):
            self.setup()  # as a restart would, in this process (lock-step sends it to the strategy only)
            self.on_first_wiring()
        elif isinstance(message, Ping):
            self.send(sender, Pong(self.name, os.getpid(), message.seq, self.pong_info()))
        elif isinstance(message, Configure):
            self._configure(message, sender)
        elif isinstance(message, Wiring):
            self._rewire(message)
        elif isinstance(message, ActorExitRequest):
            self.on_stop()
        elif isinstance(message, (ChildActorExited, PoisonMessage, DeadEnvelope)):
            self.on_system_message(message, sender)
        elif isinstance(message, DebugHang) and self._test_hooks:
            time.sleep(message.seconds)  # deliberately blocks the handler: a hung actor
        elif isinstance(message, DebugCrash) and self._test_hooks:
            raise RuntimeError(message.reason)
        else:
            handler = self.handlers.get(type(message))
            if handler is None:
                if not isinstance(message, TradingStateChanged):  # broadcast to all; not all care
                    self.event("unexpected_message", level="warning", type=type(message).__name__)
                return
            handler(message, sender)

    def _crash(self, exc: Exception, message: Any) -> None:
        self._crashed = True
        self.event("crashed", level="error", exc_info=True, error=repr(exc),
                   message=type(message).__name__)
        if not self._crash_reported:  # so an escalation alert can name the exception
            self.report_crash(f"{type(exc).__name__}: {exc}")
        self.send(self.myAddress, ActorExitRequest())

    @property
    def _test_hooks(self) -> bool:
        return bool(self.run and self.run.test_hooks)

    # --- lifecycle --------------------------------------------------------------------------

    def _configure(self, message: Configure, sender: ActorAddress) -> None:
        self.name = message.name
        self.run = message.settings
        self.supervisor = sender
        log_settings = self.run.settings.logging
        self.log = setup_actor_logging(self.name, self.run.log_dir, log_settings.max_bytes,
                                       log_settings.backups)
        if self._test_hooks and os.environ.get("STEADYHAND_TEST_CRASH_ON_START") == self.name:
            raise RuntimeError(f"test hook: {self.name} crashes on start")
        slow = os.environ.get("STEADYHAND_TEST_SLOW_START", "") if self._test_hooks else ""
        if slow.partition(":")[0] == self.name:  # "<actor>:<seconds>": a setup that takes that long
            time.sleep(float(slow.partition(":")[2]))
        self.setup()
        self.event("started", pid=os.getpid())
        self.send(sender, ChildReady(self.name, os.getpid()))

    def _rewire(self, message: Wiring) -> None:
        old = self.peers
        self.peers = dict(message.peers)
        changed = {name for name, addr in self.peers.items() if old.get(name) != addr}
        first = not self._wired_once
        self._wired_once = True
        if first:
            self.on_first_wiring()
        elif changed:
            self.on_peers_changed(changed)

    def setup(self) -> None:
        """Open state, build handlers. Called once per process, after Configure."""

    def on_first_wiring(self) -> None:
        """Peers are known for the first time in this process: start timers, catch up."""

    def on_peers_changed(self, names: set[str]) -> None:
        """Some peers restarted: re-send them whatever state they need from us."""

    def on_stop(self) -> None:
        """Graceful stop (not called after a crash)."""

    def on_system_message(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, PoisonMessage):
            self.event("poison_message", level="warning", message=type(message.poisonMessage).__name__)

    def pong_info(self) -> dict[str, Any]:
        """Extra facts for the heartbeat monitor (e.g. the feed's last bar time)."""
        return {}

    # --- lock-step replay (sim/lockstep.py) ----------------------------------------------------

    def _pass_step(self, step: Step) -> None:
        """A lock-step token: everything this actor got before it on the same hop is handled; add
        what the feed wants to know and pass it on."""
        if step.take_bars:  # as if the feed had sent this tick's Bars (read from our copy of the file)
            from steadyhand.sim.lockstep import tick_bars

            assert self.run is not None and step.tick_ts is not None
            self._dispatch(tick_bars(self.run.settings.sim.replay, step.rows, step.tick_ts), self.myAddress)
            step = replace(step, take_bars=False)
        extra = self.on_step(step)
        if extra is None:
            return  # deferred: the actor sends the token on itself
        busy = {**step.busy, self.name: self._busy_s}
        self._busy_s = 0.0
        not_ready = step.not_ready if self.step_ready() else (*step.not_ready, self.name)
        peer, _, take = step.route[0].partition(":")
        if not self.tell_peer(peer, replace(step, route=step.route[1:], busy=busy, not_ready=not_ready,
                                            take_bars=take == "bars", **extra)):
            self.event("step_dropped", level="warning", to=peer, phase=step.phase)  # the feed re-sends

    def on_step(self, step: Step) -> dict[str, Any] | None:
        """Work owed to a lock-step token before it moves on; fields to set on it, or None to
        hold it back (then send it to yourself again later)."""
        return {}

    def step_ready(self) -> bool:
        """Whether this actor would act on a tick now (lock-step waits for everyone to be)."""
        return True

    # --- helpers ----------------------------------------------------------------------------

    def event(self, event: str, level: str = "info", exc_info: bool = False, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(event, level=level, exc_info=exc_info, **fields)

    def still_alive(self) -> None:
        """Tell the heartbeat monitor we are busy, not hung, from inside a long handler (a burst of
        submissions, a large reconciliation): an unasked-for pong, at most every half second."""
        now = time.monotonic()
        if now - self._last_alive >= 0.5:
            self._last_alive = now
            self.tell_peer("heartbeat", Pong(self.name, os.getpid(), -1, {"busy": True}))

    def tell_peer(self, name: str, message: Any) -> bool:
        """Send to a peer by name; False when it is not wired (down, or not started yet)."""
        address = self.peers.get(name)
        if address is None:
            return False
        self.send(address, message)
        return True

    def report_crash(self, error: str) -> None:
        """Tell the supervisor why this actor is about to crash: its escalation alert then says it."""
        self._crash_reported = True  # the first, most specific reason wins (see _crash)
        if self.supervisor is not None:
            self.send(self.supervisor, CrashReport(self.name, error))

    def alert(self, key: str, severity: Severity, title: str, body: str = "") -> None:
        self.tell_peer("alerter", Alert(key=key, severity=severity, title=title, body=body,
                                        source=self.name))

    def after(self, seconds: float, name: str) -> None:
        """Run ``self.timers[name]`` once after ``seconds`` (wall clock)."""
        self.wakeupAfter(timedelta(seconds=max(0.0, seconds)), payload=name)

    def every(self, name: str, period_s: float, first_in: float | None = None,
              slow_period_s: float | None = None, slow_when: Callable[[], bool] | None = None) -> None:
        """Run ``self.timers[name]`` every ``period_s`` on an absolute schedule (t0 + k·period),
        so a slow handler does not make the period drift. While ``slow_when()`` is true (e.g. the
        market is closed and nothing is working) the next run is ``slow_period_s`` away instead:
        an idle bot costs next to nothing."""
        t0 = time.time() + (period_s if first_in is None else first_in)
        self._schedules[name] = (t0, period_s, 0)
        if slow_period_s is not None and slow_when is not None:
            self._slow[name] = (slow_period_s, slow_when)
        self._wake(name, t0 - time.time())

    def hurry(self, name: str) -> None:
        """A periodic timer waiting out its slow period runs at its normal rate again from now on
        (work just started, e.g. an order went out at the open: its fills must not wait seconds)."""
        if name in self._sleeping_slow:
            _, period, _ = self._schedules[name]
            self._schedules[name] = (time.time() + period, period, 0)
            self._wake(name, period)  # a new chain: the slow wakeup still pending is ignored

    # --- retention: pruning this actor's own tables ---------------------------------------------

    def start_retention(self, steps: dict[str, retention.Step]) -> None:
        """Prune this actor's own tables (``steps``: table -> one batch, see state/retention.py).

        A pass runs when ``retention.pass_due`` says so (about once an hour of the run clock while
        the market is closed); it runs one batch at a time, each one short transaction, handing the
        mailbox back between batches, so no message waits behind more than one batch. A failed
        batch (the database locked for the busy timeout, say) is logged and retried next pass:
        pruning never takes an actor down or halts trading."""
        self._retention_steps = dict(steps)
        assert self.run is not None
        self._retention_last = self.run.clock.now() - retention.PASS_EVERY  # the first closed look runs one
        self.timers["retention"] = self._retention_check
        self.timers["retention_batch"] = self._retention_batch
        self.every("retention", RETENTION_CHECK_S)

    def _retention_check(self) -> None:
        assert self.run is not None and self._retention_last is not None
        now = self.run.clock.now()
        if self._retention_todo or not retention.pass_due(self._retention_last, now, market_hours.is_open(now)):
            return
        self._retention_last = now
        self._retention_todo = list(self._retention_steps)
        self._retention_done = {}
        self.after(0, "retention_batch")

    def _retention_batch(self) -> None:
        assert self.run is not None
        if not self._retention_todo:
            return
        table = self._retention_todo[0]
        try:
            handled = self._retention_steps[table](self.run.clock.now())
        except sqlite3.OperationalError as exc:
            self.event("retention_failed", level="warning", table=table, error=repr(exc))
            handled = 0
        if handled:
            self._retention_done[table] = self._retention_done.get(table, 0) + handled
        else:
            self._retention_todo.pop(0)
        if self._retention_todo:
            self.after(0, "retention_batch")
        elif self._retention_done:
            self.event("retention", rows=self._retention_done)

    def _wake(self, name: str, seconds: float, slow: bool = False) -> None:
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        (self._sleeping_slow.add if slow else self._sleeping_slow.discard)(name)
        self.wakeupAfter(timedelta(seconds=max(0.0, seconds)), payload=(name, generation))

    def _on_timer(self, payload: Any) -> None:
        if isinstance(payload, tuple):  # a periodic timer: (name, generation)
            name, generation = payload
            if generation != self._generation.get(name):
                return  # a chain replaced by hurry() or a new every()
        else:
            name = payload if isinstance(payload, str) else None
        if name is None or name not in self.timers:
            return
        schedule = self._schedules.get(name) if isinstance(payload, tuple) else None
        self.timer_late_s = 0.0
        if schedule is not None:
            t0, period, k = schedule
            now = time.time()
            self.timer_late_s = max(0.0, now - (t0 + k * period))  # this run's slot, before skipping
            slow = self._slow.get(name)
            if slow is not None and slow[1]():
                self._schedules[name] = (now + slow[0], period, 0)  # re-anchored when it speeds up
                self._wake(name, slow[0], slow=True)
            else:
                k = max(k + 1, int((now - t0) / period) + 1)  # skip missed slots, never pile up
                self._schedules[name] = (t0, period, k)
                self._wake(name, t0 + k * period - now)
        self.timers[name]()
