"""The supervisor: child specs as data, restart intensity, escalation (Erlang/OTP style).

Read ``CHILD_SPECS`` as the table it is: who runs, in which order, and how often each may crash.

- Start: children are created in table order (the alerter first so everyone can alert; the
  heartbeat monitor last), each gets ``Configure``, then everyone gets ``Wiring``.
- Crash: ``ChildActorExited`` for a child's *current* address restarts it after a backoff that
  doubles with each recent restart. A second ``ChildActorExited`` for the same death (Thespian
  often sends two on a normal exit) names an address that is no longer current and is ignored.
- Intensity: more than ``max_restarts`` restarts within ``period_s`` escalates: trading HALTED
  (persisted), a CRITICAL alert, and the child is left down. A strategy actor is escalated alone:
  left down with a CRITICAL alert naming the strategy and its last exception, while the other
  strategies keep trading; only when no strategy is left is trading halted as before.
- Several strategies (``[[strategies]]``): the ``strategy`` row stands for one child per strategy,
  ``strategy.NAME`` (``child_specs``); a single strategy keeps the name ``strategy``.
- Hung: the heartbeat monitor reports an actor that missed its deadline; the supervisor kills that
  process by pid and the crash path above restarts it.
- Stop: children are stopped one by one in reverse start order.

The supervisor is the only receiver of operator requests and the only writer of ``control``: that
half of it, the trading state and the operator's commands, is ``control/operator.py`` (mixed in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from steadyhand.actors.alerter import AlerterActor
from steadyhand.actors.base import SteadyActor
from steadyhand.actors.dashboard import DashboardActor
from steadyhand.actors.feed import FeedActor
from steadyhand.actors.heartbeat import HeartbeatActor
from steadyhand.actors.messages import (
    ActorUnresponsive,
    CancelAll,
    CancelAllCompleted,
    ChildReady,
    CommandResult,
    Configure,
    CrashReport,
    DebugToActor,
    FlattenCompleted,
    OperatorCommand,
    RequestHalt,
    RequestShutdown,
    ShutdownCompleted,
    TradingStateChanged,
    Wiring,
)
from steadyhand.actors.oms import OmsActor
from steadyhand.actors.portfolio import PortfolioActor
from steadyhand.actors.risk import RiskActor
from steadyhand.actors.strategy import StrategyActor
from steadyhand.config import RunSettings, Settings
from steadyhand.control import commands
from steadyhand.control.operator import OperatorControl
from steadyhand.domain import Severity, TradingState
from steadyhand.state import runs, store
from steadyhand.strategies.specs import child_names, is_strategy_child
from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited

SUPERVISOR_NAME = "steadyhand-supervisor"  # Thespian globalName: how the CLI finds us
STORE_RETRY_S = 2.0  # how often journal writes that hit a store fault are retried
RUN_LEDGER_S = 10.0  # how often the run's ledger row is refreshed (a crash keeps the last refresh)


@dataclass(frozen=True)
class ChildSpec:
    """One row of the supervision table (OTP child spec)."""

    name: str
    actor: type[SteadyActor]
    restart: Literal["permanent", "temporary"] = "permanent"  # temporary: never restarted
    max_restarts: int | None = None  # MaxR; None: the [supervisor] setting
    period_s: float | None = None  # MaxT; None: the [supervisor] setting
    essential: bool = True  # False: crashing too often leaves it down with an alert, trading goes on
    section: str = ""  # a settings section whose `enabled = false` leaves this child out


#                 name         actor            restart
CHILD_SPECS: tuple[ChildSpec, ...] = (
    ChildSpec("alerter",   AlerterActor),    # first: everyone may need to alert
    ChildSpec("portfolio", PortfolioActor),
    ChildSpec("oms",       OmsActor),        # reconciles with the broker on every start
    ChildSpec("risk",      RiskActor),       # denies everything until the OMS has reconciled
    ChildSpec("strategy",  StrategyActor),
    ChildSpec("feed",      FeedActor),       # data flows only once everyone is there
    ChildSpec("dashboard", DashboardActor, essential=False, section="dashboard"),  # watches, never trades
    ChildSpec("heartbeat", HeartbeatActor),  # last: watches the others
)  # fmt: skip


def child_specs(settings: Settings) -> tuple[ChildSpec, ...]:
    """``CHILD_SPECS`` for this run: the ``strategy`` row once per strategy (strategies/specs.py)."""
    out: list[ChildSpec] = []
    for spec in CHILD_SPECS:
        if spec.name == "strategy":
            out.extend(dataclasses.replace(spec, name=name) for name in child_names(settings))
        else:
            out.append(spec)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Start:
    """CLI -> supervisor: configure and start every child; answered with ``Started``."""

    run: RunSettings


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    children: dict[str, int]  # name -> pid


@dataclass
class Child:
    spec: ChildSpec
    address: ActorAddress | None = None
    pid: int = 0
    ready: bool = False
    restarts: int = 0
    recent: deque[float] | None = None  # monotonic times of restarts within the period
    down_reason: str = ""
    operator_restart: bool = False  # killed on an operator's `restart`: not a crash
    last_error: str = ""  # the child's own CrashReport: why it crashed last

    @property
    def alive(self) -> bool:
        return self.address is not None


class Supervisor(OperatorControl, SteadyActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = "supervisor"
        self.children: dict[str, Child] = {}
        self.db: Any = None
        self.trading_state = TradingState.ACTIVE
        self.halt_reason = ""
        self.started_at = datetime.now(UTC)
        self.starter: ActorAddress | None = None
        self.stopping: list[str] = []  # names still to stop, in order
        self.stop_requester: ActorAddress | None = None
        self.shutting_down = False
        self.secret = b""
        self.waiting: dict[str, tuple[ActorAddress, OperatorCommand, float]] = {}  # replies owed
        self.handlers = {
            Start: self.on_start,
            ChildReady: self.on_child_ready,
            ActorUnresponsive: self.on_unresponsive,
            CrashReport: self.on_crash_report,
            RequestHalt: self.on_request_halt,
            RequestShutdown: self.on_shutdown,
            DebugToActor: self.on_debug,
            CancelAllCompleted: self.on_cancel_all_completed,
            FlattenCompleted: self.on_flatten_completed,
            OperatorCommand: self.on_command_unstarted,
        }
        self.timers = {"stop_deadline": self._stop_next_forced, "command_deadline": self._command_deadline,
                       "store_retry": self._retry_unsaved, "run_ledger": self._refresh_ledger}
        self.run_id: int | None = None  # this run's row in the run ledger (state/runs.py)
        self.unsaved: dict[str, Any] = {}  # journal writes that failed (store fault), retried

    # --- start ------------------------------------------------------------------------------

    def on_command_unstarted(self, command: OperatorCommand, sender: ActorAddress) -> None:
        """Commands before ``Start``: this supervisor was created by a client's lookup of a run whose
        supervisor is gone (Thespian's global names create what they do not find). Refuse, and exit
        so that nothing is left behind."""
        if self.run is not None:
            self.on_command(command, sender)
            return
        self.send(sender, CommandResult(getattr(command, "command_id", ""), False,
                                        error="steadyhand is not running (no started supervisor)"))
        self.send(self.myAddress, ActorExitRequest())

    def on_start(self, message: Start, sender: ActorAddress) -> None:
        if self.run is not None:
            self.send(sender, Started(os.getpid(), self._pids()))
            return
        self.run = message.run
        self.starter = sender
        sup = self.run.settings.supervisor
        self.log = _setup_log(self.run)
        self.db = store.connect(self.run.db_path, synchronous="FULL")
        self.trading_state = TradingState(
            store.get_control(self.db, "trading_state", TradingState.ACTIVE.value)
        )
        self.halt_reason = store.get_control(self.db, "halt_reason", "") or ""
        self.secret = commands.load_secret(self.run.data_dir, create=True)
        self._open_ledger()  # before the children: the feed stamps its bars with this run's id
        for spec in child_specs(self.run.settings):
            if spec.section and not getattr(self.run.settings, spec.section).enabled:
                continue
            self.children[spec.name] = Child(
                spec=spec, recent=deque(maxlen=(spec.max_restarts or sup.max_restarts) + 1)
            )
        for name in self.children:
            self._create(name)
        self._broadcast_wiring()
        self._cancel_all_if_halted()
        self.event("supervisor_started", trading_state=self.trading_state.value, pid=os.getpid())

    # --- the run ledger (state/runs.py) -----------------------------------------------------

    def _open_ledger(self) -> None:
        """Record earlier runs that never closed their row as crashed, then open this run's."""
        crashed = runs.mark_crashed(self.db)
        if crashed:
            self.event("runs_crashed", run_ids=crashed, level="warning")
        strategy = self.run.settings.strategy
        strategies = [strategy.class_name or strategy.name]  # the [strategy] class, or the shipped SMA
        if self.run.settings.strategies:  # [[strategies]]: their names (the order-id prefixes)
            strategies = [spec.name for spec in self.run.settings.strategies]
        config = {"strategy": _plain(self.run.settings.strategy), "start_cash": self.run.settings.sim.start_cash}
        self.run_id = runs.open_run(self.db, self.run.settings.broker, strategies,
                                    store.iso(self.run.clock.now()), os.getpid(), config)
        self.every("run_ledger", RUN_LEDGER_S)

    def _refresh_ledger(self) -> None:
        if self.run_id is not None:
            run_id, clock_now = self.run_id, store.iso(self.run.clock.now())
            self._durably("run_ledger", lambda: runs.refresh(self.db, run_id, clock_now))

    def _close_ledger(self) -> None:
        """The run ends: 'halt' when it ends HALTED, else 'stop'. Once."""
        if self.run_id is None or self.db is None:
            return
        run_id, self.run_id = self.run_id, None
        ended_by = "halt" if self.trading_state is TradingState.HALTED else "stop"
        clock_now = store.iso(self.run.clock.now())
        self._durably("run_ledger", lambda: runs.close_run(self.db, run_id, ended_by, clock_now))

    def _cancel_all_if_halted(self) -> None:
        """A new OMS under HALTED cancels everything (after its reconciliation): a kill switch cut
        short by a crash, or a halted bot restarted, must not leave orders working at the broker."""
        if self.trading_state is TradingState.HALTED:
            self.tell_peer("oms", CancelAll(command_id=f"halted-restart-{time.time():.6f}", reason="halted"))

    def _create(self, name: str) -> None:
        child = self.children[name]
        child.address = self.createActor(child.spec.actor)
        child.ready = False
        child.pid = 0
        self.send(child.address, Configure(name=name, settings=self.run))

    def _broadcast_wiring(self) -> None:
        # Down children are listed as None: peers know they are gone (tell_peer then returns False).
        peers: dict[str, Any] = {name: c.address for name, c in self.children.items()}
        peers["supervisor"] = self.myAddress
        state = TradingStateChanged(self.trading_state, self.halt_reason)
        for child in self.children.values():
            if child.address is not None:
                self.send(child.address, Wiring(peers))
                self.send(child.address, state)

    def on_child_ready(self, message: ChildReady, sender: ActorAddress) -> None:
        child = self.children.get(message.name)
        if child is None or child.address != sender:
            return
        child.ready, child.pid = True, message.pid
        self._record_actor(child)
        self._answer_starter()

    def _answer_starter(self) -> None:
        """Started goes back once every child is up, or given up on (left down by escalation)."""
        if self.starter is not None and all(c.ready or c.down_reason for c in self.children.values()):
            self.send(self.starter, Started(os.getpid(), self._pids()))
            self.starter = None

    # --- crashes and restarts ---------------------------------------------------------------

    def on_system_message(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ChildActorExited):
            self._child_exited(message.childAddress)
        else:
            super().on_system_message(message, sender)

    def _child_exited(self, address: ActorAddress) -> None:
        name = next((n for n, c in self.children.items() if c.address == address), None)
        if name is None:
            return  # a duplicate notice for an address we already replaced
        child = self.children[name]
        child.address, child.ready = None, False
        if self.shutting_down:
            self._record_actor(child)
            self._stop_next()
            return
        if child.spec.restart == "temporary":
            self._record_actor(child)
            return
        if child.operator_restart:  # the operator asked for it: restart now, not a crash
            child.operator_restart = False
            self._journal_restart(name, "exited", f"operator restart (pid {child.pid})")
            self._restart(name)
            return
        sup = self.run.settings.supervisor
        max_restarts = child.spec.max_restarts if child.spec.max_restarts is not None else sup.max_restarts
        period = child.spec.period_s if child.spec.period_s is not None else sup.period_s
        now = time.monotonic()
        assert child.recent is not None
        while child.recent and now - child.recent[0] > period:
            child.recent.popleft()
        if len(child.recent) >= max_restarts:
            self._escalate(child, max_restarts, period)
            return
        child.recent.append(now)
        delay = min(sup.backoff_s * 2 ** (len(child.recent) - 1), sup.max_backoff_s)
        self._journal_restart(name, "exited", f"restart in {delay:.3f}s (pid {child.pid})")
        self.timers[f"restart:{name}"] = lambda n=name: self._restart(n)
        self.after(delay, f"restart:{name}")

    def _restart(self, name: str) -> None:
        child = self.children[name]
        if child.address is not None or self.shutting_down:
            return
        child.restarts += 1
        self._create(name)
        self._broadcast_wiring()
        if name == "oms":
            self._cancel_all_if_halted()
        self._journal_restart(name, "restarted", f"restart #{child.restarts}")
        self.alert(f"restart:{name}", Severity.HIGH, f"steadyhand: {name} restarted",
                   f"{name} crashed and was restarted (restart #{child.restarts}).")

    def _escalate(self, child: Child, max_restarts: int, period: float) -> None:
        name = child.spec.name
        child.down_reason = f"more than {max_restarts} restarts in {period:g}s"
        self._record_actor(child)
        self._journal_restart(name, "escalated", child.down_reason)
        self._broadcast_wiring()  # peers learn it is gone
        if is_strategy_child(name) and self._strategies_up():
            self._escalate_strategy(child)
            return
        if not child.spec.essential:  # an observer (the dashboard): trading does not depend on it
            self.alert(f"escalation:{name}", Severity.HIGH, f"steadyhand: {name} keeps crashing",
                       f"{name} crashed {child.down_reason}; it is left down, trading goes on.")
            self._answer_starter()
            return
        self._set_trading_state(TradingState.HALTED, f"{name} left down: {child.down_reason}")
        why = f" Last error: {child.last_error}" if child.last_error else ""
        self.alert(f"escalation:{name}", Severity.CRITICAL, f"steadyhand HALTED: {name} keeps crashing",
                   f"{name} crashed {child.down_reason}; it is left down and trading is halted.{why}")
        self._answer_starter()

    def _strategies_up(self) -> bool:
        """Whether any strategy actor is still running (or being restarted), i.e. not left down."""
        return any(is_strategy_child(n) and not c.down_reason for n, c in self.children.items())

    def _escalate_strategy(self, child: Child) -> None:
        """One strategy keeps crashing: it alone is left down; the others keep trading."""
        name = child.spec.name
        error = child.last_error or "no exception reported (killed?)"
        self.alert(f"escalation:{name}", Severity.CRITICAL, f"steadyhand: strategy {name} left down",
                   f"{name} crashed {child.down_reason} (last: {error}); it is left down, "
                   f"the other strategies keep trading. `steadyhand restart {name}` to try again.")
        self._answer_starter()

    def on_crash_report(self, message: CrashReport, sender: ActorAddress) -> None:
        child = self.children.get(message.name)
        if child is not None:
            child.last_error = message.error

    def on_unresponsive(self, message: ActorUnresponsive, sender: ActorAddress) -> None:
        child = self.children.get(message.name)
        if child is None or child.address is None or (message.pid and child.pid != message.pid):
            return  # already restarted since the monitor looked
        pid = child.pid
        self._journal_restart(message.name, "unresponsive",
                              f"no heartbeat for {message.silent_for_s:.1f}s; killing pid {pid}")
        if pid and pid != os.getpid():  # in-process test bases share our pid: nothing to kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- journal writes that survive a store fault ------------------------------------------

    def _durably(self, what: str, write: Any) -> bool:
        """Run a journal write; a locked or full database must not take the supervisor down (it is
        what halts trading when the store fails), so the fault is logged, alerted and retried later."""
        try:
            write()
        except sqlite3.OperationalError as exc:
            self.event("store_fault", level="critical", what=what, error=str(exc))
            self.unsaved[what] = write
            self.alert("store:supervisor", Severity.CRITICAL, "steadyhand cannot write its state",
                       f"{what}: {exc}; kept in memory, retrying")
            self.after(STORE_RETRY_S, "store_retry")
            return False
        self.unsaved.pop(what, None)
        return True

    def _retry_unsaved(self) -> None:
        for what, write in list(self.unsaved.items()):
            self._durably(what, write)

    # --- status -----------------------------------------------------------------------------

    def _actor_table(self) -> dict[str, dict[str, Any]]:
        return {name: {"pid": c.pid, "restarts": c.restarts, "alive": c.alive and c.ready,
                       "down_reason": c.down_reason}
                for name, c in self.children.items()}

    def _pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.children.items()}

    # --- stop -------------------------------------------------------------------------------

    def on_shutdown(self, message: RequestShutdown, sender: ActorAddress | None) -> None:
        if sender is not None:
            self.stop_requester = sender
        if self.shutting_down:  # already under way: just answer when it is done
            self._stop_next()
            return
        self.event("shutdown", reason=message.reason)
        self.shutting_down = True
        self.stopping = [n for n in reversed(list(self.children)) if self.children[n].alive]
        self._stop_next()

    def _stop_next(self) -> None:
        while self.stopping and not self.children[self.stopping[0]].alive:
            self.stopping.pop(0)
        if not self.stopping:
            self._close_ledger()  # every child has stopped: the figures are final
            if self.stop_requester is not None:
                self.send(self.stop_requester, ShutdownCompleted())
                self.stop_requester = None
            return
        self.send(self.children[self.stopping[0]].address, ActorExitRequest())
        self.after(5.0, "stop_deadline")  # a child that ignores the request is killed

    def _stop_next_forced(self) -> None:
        if not self.stopping:
            return
        child = self.children[self.stopping[0]]
        if child.alive and child.pid and child.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def on_stop(self) -> None:
        self._close_ledger()  # stopped without a RequestShutdown (the actor system went down)
        for child in self.children.values():
            if child.address is not None:
                self.send(child.address, ActorExitRequest())

    # --- journal ----------------------------------------------------------------------------

    def _record_actor(self, child: Child) -> None:
        row = {"name": child.spec.name, "pid": child.pid, "restarts": child.restarts,
               "alive": int(child.alive), "started_at": store.now_iso()}

        def write() -> None:
            with store.transaction(self.db):
                self.db["actors"].upsert(row, pk="name")

        self._durably(f"actor:{child.spec.name}", write)

    def _journal_restart(self, name: str, event: str, detail: str) -> None:
        self.event(f"actor_{event}", actor_name=name, detail=detail, level="warning")
        row = {"ts": store.now_iso(), "actor": name, "event": event, "detail": detail}

        def write() -> None:
            with store.transaction(self.db):
                self.db["restarts"].insert(row)

        self._durably(f"restart:{name}:{row['ts']}", write)

    def tell_peer(self, name: str, message: Any) -> bool:
        child = self.children.get(name)
        if child is None or child.address is None:
            return False
        self.send(child.address, message)
        return True


def _plain(settings: Any) -> Any:
    """A settings dataclass as plain data for the run ledger (whatever its shape)."""
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else str(settings)


def _setup_log(run: RunSettings) -> Any:
    from steadyhand.runtime.logs import setup_actor_logging

    return setup_actor_logging("supervisor", run.log_dir, run.settings.logging.max_bytes,
                               run.settings.logging.backups)
