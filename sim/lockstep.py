"""Lock-step replay: the real actors driven bar by bar, each tick processed to quiescence.

``steadyhand run --replay FILE --lockstep`` proves paper = backtest: the feed releases one tick (the
rows of the file sharing one ts) and releases the next only when a :class:`Step` token has come
back to it through every actor that must have finished with it (DESIGN "Lock-step replay"):

1. the clock is set to the tick's close (ts + 1 min), the instant a live bot would see the bar;
2. fills (only while an order is open): ``Step`` feed -> oms (drains the broker: orders placed on
   the symbol's previous bar fill at this bar's open, the first quote of the path in [prev, now))
   -> portfolio (applies the fills, sends positions to strategy and risk) -> feed;
3. bars: ``Step`` feed -> risk -> portfolio -> strategy (each of these three handles the tick's
   ``Bars``, read by row index from its own copy of the file; the strategy's signals are on their
   way to risk before the token) -> risk (decisions journaled, requests on their way to the OMS)
   -> oms (journaled and submitted) -> feed.

After an actor restart the tick in flight runs again: the strategy is rewound to just before it,
a probe waits until everyone is ready, and the OMS's journal drops the intents it already has.

Thespian delivers the messages of one sender to one receiver in order, so a token behind a
message on the same hop proves that message handled. The clock is a shared 16-byte file every
process maps (:class:`LockstepClock`): only the feed moves it, and only between ticks.

The fill model is the backtest's: market orders fill whole at the next bar's open (no spread,
slippage, latency or partial fills; :func:`lockstep_settings`), at whole cents as the exchange does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steadyhand.actors.messages import Bars, RequestShutdown, Rewind, Step
from steadyhand.config import ConfigError, Settings, with_overrides

if TYPE_CHECKING:
    from steadyhand.sim.replay import ReplayMarket

CLOCK_FILE = "lockstep.clock"  # the shared simulated now (data dir)
RESULT_FILE = "lockstep.json"  # the run's summary, written by the feed at the end of the file
MINUTE = timedelta(minutes=1)
STEP_TIMEOUT_S = 10.0  # wall seconds a token may be out before the tick is re-run (a lost token)
PROBE_TIMEOUT_S = 0.5  # a probe changes nothing: one that does not come back is simply sent again
PROBE_RETRY_S = 0.02  # wall seconds between readiness probes while an actor is not ready
WATCH_EVERY_S = 0.25
# Who has finished with a tick, in the order the token visits them (the feed is the last hop).
FILLS_ROUTE = ("oms", "portfolio", "feed")
# Risk and the portfolio take the bars first, the strategy last (its signals then reach risk
# ahead of the token on the same hop); risk a second time for the signals.
BARS_ROUTE = ("risk:bars", "portfolio:bars", "strategy:bars", "risk", "oms", "feed")
# The strategy twice: first behind a Rewind (same hop), last behind the portfolio's positions.
PROBE_ROUTE = ("strategy", "oms", "risk", "portfolio", "strategy", "feed")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAIR = struct.Struct("<qq")  # the time twice: a reader retries a torn write


class LockstepClock:
    """Simulated now from ``<data dir>/lockstep.clock`` (epoch µs), moved only by the feed.

    Time stands still while a tick is processed and jumps between ticks, so nothing in the run
    depends on how fast the machine is: ``speed`` is infinite (wall-clock waits are all "now").
    Pickled by path: each process maps the file itself.
    """

    speed = math.inf

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._map: mmap.mmap | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._map = None

    @classmethod
    def create(cls, path: str | Path, start: datetime) -> LockstepClock:
        """The clock at ``path``, starting at ``start`` unless the file already holds a time (a
        restarted lock-step run continues where it was)."""
        p = Path(path)
        if not p.exists() or p.stat().st_size != _PAIR.size:
            tmp = p.with_suffix(".tmp")
            us = _us(start)
            tmp.write_bytes(_PAIR.pack(us, us))
            os.replace(tmp, p)
        return cls(p)

    def _mm(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "r+b") as fh:
                self._map = mmap.mmap(fh.fileno(), _PAIR.size)
        return self._map

    def now(self) -> datetime:
        mm = self._mm()
        while True:
            a, b = _PAIR.unpack_from(mm, 0)
            if a == b:
                return _EPOCH + timedelta(microseconds=a)

    def set(self, t: datetime) -> None:
        """Move the clock (the feed only)."""
        us = _us(t)
        _PAIR.pack_into(self._mm(), 0, us, us)

    def at_real(self, real: float) -> datetime:
        return self.now()

    def real_at(self, sim: datetime) -> float:
        return time.time()  # whatever is scheduled on the simulated clock is due now

    def real_seconds(self, sim_seconds: float) -> float:
        return 0.0


def _us(t: datetime) -> int:
    return (t.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def is_lockstep(clock: Any) -> bool:
    return isinstance(clock, LockstepClock)


_MARKETS: dict[str, ReplayMarket] = {}  # this process's copy of the replay file, read once


def tick_bars(replay: str, rows: tuple[int, ...], ts: datetime) -> Bars:
    """The Bars message the feed would have sent for these rows of ``replay`` (its good rows of
    one tick, already validated by the feed), made from this process's copy of the file."""
    market = _MARKETS.get(replay)
    if market is None:
        from steadyhand.sim.replay import ReplayMarket

        market = _MARKETS[replay] = ReplayMarket(replay)
    return Bars(ts=ts, bars=tuple(market.bars_at(rows)))


def lockstep_settings(settings: Settings) -> Settings:
    """``settings`` for a lock-step run, or a ConfigError naming what does not fit.

    The sim's fill model becomes the backtest's: no latency (an order placed at a bar's close is
    eligible for the next bar's open), no slippage, no spread (quotes are each bar's open, see
    ``ReplayMarket(price="open")``), no partial fills."""
    sim = settings.sim
    if not sim.replay:
        raise ConfigError("--lockstep needs a replay file (--replay FILE or [sim] replay)")
    if settings.broker != "sim":
        raise ConfigError(f"--lockstep runs on the simulated exchange, not broker {settings.broker!r}")
    if sim.clock != "simulated":
        raise ConfigError('--lockstep drives a simulated clock; [sim] clock = "real" does not fit')
    return with_overrides(settings, lockstep=True, latency_ms=0.0, slippage_bps=0.0,
                          partial_fill_probability=0.0, spread_bps=0.0)


def read_result(data_dir: str | Path) -> dict[str, Any] | None:
    path = Path(data_dir) / RESULT_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class _Stats:
    """What a lock-step run measures: ticks, bars, wall time per phase, busy time per actor."""

    ticks: int = 0
    bars: int = 0
    fill_steps: int = 0
    reruns: int = 0
    started: float = 0.0
    # Wall time of the two token rounds, and the feed's own share: reading and validating a tick
    # (prepare) and handing its Bars to the transport (publish).
    phase_s: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"fills": 0.0, "bars": 0.0, "prepare": 0.0, "publish": 0.0})
    busy_s: dict[str, float] = dataclasses.field(default_factory=dict)


class LockstepFeed:
    """The feed's lock-step half (mixed into ``FeedActor``): one tick at a time, each to quiescence.

    Expects the feed's ``replay``, ``replay_index``, ``validator``, ``clock``, ``_journal_rejected``,
    ``last_bar_at`` and the actor helpers (``tell_peer``, ``after``, ``every``, ``event``).
    """

    replay: ReplayMarket | None
    replay_index: int
    clock: Any

    def lockstep_setup(self) -> None:
        self.ls_seq = 0
        self.ls_phase = ""  # probe | fills | bars | done
        self.ls_sent_at = 0.0  # wall time the current token went out
        self.ls_open_orders = True  # unknown at the start: look once
        self.ls_tick: tuple[int, int, datetime] | None = None  # rows [start, stop) and their ts
        self.ls_bars: tuple[Any, ...] = ()  # the tick's validated bars, kept for a re-run
        self.ls_rows: tuple[int, ...] = ()  # their row indices in the file (what the token carries)
        self.ls_stats = _Stats()
        self.handlers[Step] = self.on_step_back  # type: ignore[attr-defined]
        self.timers["ls_probe"] = self._ls_probe  # type: ignore[attr-defined]
        self.timers["ls_watch"] = self._ls_watch  # type: ignore[attr-defined]

    def lockstep_begin(self) -> None:
        """Start (or, for a restarted feed, resume with) the tick whose close is the clock's now."""
        assert self.replay is not None
        now = self.clock.now()
        self.replay_index = self.replay.first_closing_after(now - timedelta(microseconds=1))
        self.ls_stats.started = time.perf_counter()
        self.every("ls_watch", WATCH_EVERY_S)  # type: ignore[attr-defined]
        self._ls_probe()

    def lockstep_peers_changed(self, names: set[str]) -> None:
        """An actor restarted: what it held of the tick in flight is gone. Wait until everyone is
        ready, then run the tick again (the journal drops the intents it already has)."""
        if self.ls_phase in ("", "done") or not names & {"oms", "risk", "portfolio", "strategy"}:
            return
        self.event("lockstep_rerun", restarted=sorted(names))  # type: ignore[attr-defined]
        self._ls_rerun()

    def _ls_rerun(self) -> None:
        """Run the tick in flight again from its start: the strategy rewound to just before it (so
        intents lost with a crashed actor are made again), once everyone is ready."""
        self.ls_stats.reruns += 1
        self.tell_peer("strategy", Rewind())  # type: ignore[attr-defined]
        self._ls_probe()

    # --- the token ---------------------------------------------------------------------------

    def _send_step(self, phase: str, route: tuple[str, ...], poll: bool = False, **tick: Any) -> None:
        self.ls_seq += 1
        self.ls_phase = phase
        self.ls_sent_at = time.perf_counter()
        peer, _, take = route[0].partition(":")
        step = Step(seq=self.ls_seq, phase=phase, route=route[1:], poll=poll, take_bars=take == "bars", **tick)
        if not self.tell_peer(peer, step):  # type: ignore[attr-defined]
            self.after(PROBE_RETRY_S, "ls_probe")  # type: ignore[attr-defined]

    def on_step_back(self, message: Step, sender: Any) -> None:
        if message.seq != self.ls_seq:
            return  # a token from before a re-run
        took = time.perf_counter() - self.ls_sent_at
        if message.phase != "probe":  # a probe's busy times include start-up and reconciliation
            for name, busy in message.busy.items():
                self.ls_stats.busy_s[name] = self.ls_stats.busy_s.get(name, 0.0) + busy
        if message.phase == "probe":
            if message.not_ready:
                self.after(PROBE_RETRY_S, "ls_probe")  # type: ignore[attr-defined]
                return
            self.ls_open_orders = True  # after a restart nobody knows: look
            if not self.ls_stats.ticks and self.ls_tick is None:
                self._busy_s = 0.0  # type: ignore[attr-defined]  # the feed's start-up is not a tick's
                self.ls_stats.started = time.perf_counter()
            self._ls_run_tick()
        elif message.phase == "fills":
            self.ls_stats.phase_s["fills"] += took
            self.ls_stats.fill_steps += 1
            self._ls_bars()
        elif message.phase == "bars":
            self.ls_stats.phase_s["bars"] += took
            self.ls_open_orders = bool(message.open_orders)
            self._ls_tick_done()

    def _ls_probe(self) -> None:
        if self.ls_phase != "done":
            self._send_step("probe", PROBE_ROUTE)

    def _ls_watch(self) -> None:
        """A token lost with a crashed actor (whose restart we may have been told of first)."""
        limit = PROBE_TIMEOUT_S if self.ls_phase == "probe" else STEP_TIMEOUT_S
        if self.ls_phase not in ("", "done") and time.perf_counter() - self.ls_sent_at > limit:
            self.event("lockstep_step_timeout", level="warning", phase=self.ls_phase)  # type: ignore[attr-defined]
            if self.ls_phase == "probe":
                self._ls_probe()
            else:
                self._ls_rerun()

    # --- ticks -------------------------------------------------------------------------------

    def _ls_run_tick(self) -> None:
        """The current tick from its start: the clock to its close, then fills, then bars."""
        replay = self.replay
        assert replay is not None
        began = time.perf_counter()
        while self.ls_tick is None or self.ls_tick[0] != self.replay_index:
            if self.replay_index >= len(replay):
                self._ls_finish()
                return
            start = self.replay_index
            stop = replay.run_end(start)
            ts = replay.ts_at(start)
            bars = replay.bars(start, stop)
            good, rejected = self.validator.validate(bars)  # type: ignore[attr-defined]
            if rejected:
                self._journal_rejected(rejected)  # type: ignore[attr-defined]
            if good:
                kept = {id(b) for b in good}
                self.ls_tick, self.ls_bars = (start, stop, ts), tuple(good)
                self.ls_rows = tuple(start + k for k, b in enumerate(bars) if id(b) in kept)
            else:
                self.replay_index = stop  # nothing to release on this tick
        self.clock.set(max(self.ls_tick[2] + MINUTE, self.clock.now()))  # never backwards (a late row)
        self.ls_stats.phase_s["prepare"] += time.perf_counter() - began
        if self.ls_open_orders:
            self._send_step("fills", FILLS_ROUTE, poll=True)
        else:
            self._ls_bars()

    def _ls_bars(self) -> None:
        assert self.ls_tick is not None
        began = time.perf_counter()
        self.last_bar_at = self.ls_tick[2] + MINUTE
        # The bars travel as row indices in the token (each hop reads them from the file): three
        # Bars messages of a hundred bars cost the feed more than the rest of a tick together.
        self._send_step("bars", BARS_ROUTE, rows=self.ls_rows, tick_ts=self.ls_tick[2])
        self.ls_stats.phase_s["publish"] += time.perf_counter() - began
        self._journal_bars(list(self.ls_bars), "live")  # type: ignore[attr-defined]  # the parity report's input

    def _ls_tick_done(self) -> None:
        assert self.ls_tick is not None
        self.ls_stats.ticks += 1
        self.ls_stats.bars += len(self.ls_bars)
        self.replay_index = self.ls_tick[1]
        self._ls_run_tick()

    def _ls_finish(self) -> None:
        self.ls_phase = "done"
        stats = self.ls_stats
        stats.busy_s["feed"] = self._busy_s  # type: ignore[attr-defined]  # its own handlers, the whole run
        elapsed = time.perf_counter() - stats.started
        result = {"done": True, "ticks": stats.ticks, "bars": stats.bars, "elapsed_s": round(elapsed, 6),
                  "bars_per_s": round(stats.bars / elapsed, 1) if elapsed > 0 else None,
                  "fill_steps": stats.fill_steps, "reruns": stats.reruns,
                  "phase_s": {k: round(v, 6) for k, v in stats.phase_s.items()},
                  "busy_s": {k: round(v, 6) for k, v in sorted(stats.busy_s.items())},
                  "clock": self.clock.now().isoformat()}
        data_dir = Path(self.run.data_dir)  # type: ignore[attr-defined]
        tmp = data_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, data_dir / RESULT_FILE)
        self.event("lockstep_done", **{k: v for k, v in result.items() if k != "done"})  # type: ignore[attr-defined]
        self.tell_peer("supervisor", RequestShutdown("lock-step replay finished"))  # type: ignore[attr-defined]


# --- the CLI's side (``steadyhand run --lockstep``) -----------------------------------------------


def open_clock(data_dir: str | Path, settings: Settings) -> LockstepClock:
    """The run's lock-step clock: at the replay's first bar (or ``[sim] start``), or where an
    earlier lock-step run on this data dir stopped."""
    from steadyhand.sim.clock import start_of
    from steadyhand.sim.replay import ReplayMarket

    start = start_of(settings.sim) or ReplayMarket(settings.sim.replay).first_ts
    return LockstepClock.create(Path(data_dir) / CLOCK_FILE, start)


def summary(data_dir: str | Path, wall_s: float) -> tuple[bool, str]:
    """(whether the file was played to its end, the summary line ``run`` prints after stopping)."""
    from steadyhand.state import store

    result = read_result(data_dir)
    db = store.open_readonly(Path(data_dir))
    orders = fills = 0
    if db is not None and "orders" in db.table_names():
        try:
            orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
            fills = db.execute("SELECT count(*) FROM fills").fetchone()[0]
        finally:
            db.close()
    if result is None:
        return False, (f"lock-step: stopped before the end of the file; orders {orders}, fills {fills}, "
                       f"elapsed {wall_s:.2f} s")
    rate = result.get("bars_per_s")
    return True, (f"lock-step: {result['bars']} bars ({result['ticks']} ticks), orders {orders}, fills {fills}, "
                  f"elapsed {wall_s:.2f} s (replay {result['elapsed_s']:.2f} s"
                  + (f", {rate:,.0f} bars/s" if rate else "") + ")")
