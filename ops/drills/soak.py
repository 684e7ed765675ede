#!/usr/bin/env python3
"""Soak drill: weeks of simulated trading days at high speed, with kills, checked day by day.

    python ops/drills/soak.py                                  # 20 trading days from 2026-11-16, x3000
    python ops/drills/soak.py --days 3 --start 2026-11-25 --nights skip --kills-per-day 2   # what CI runs
    python ops/drills/soak.py --broker alpaca --speed 600 --days 5   # through `steadyhand exchange serve`

Runs ``steadyhand run`` on the simulated market from ``--start`` (the default span has weekends,
Thanksgiving 2026-11-26 closed and the 13:00 ET early close of 2026-11-27) and kills it at random
simulated times of each session, seeded (``--seed``): one actor SIGKILLed (the supervisor restarts
it), a power cut of the whole run (the drill starts it again), or a start with a named crash point
armed (``STEADYHAND_CRASH_AT``). After each close it runs ``steadyhand verify`` and prints one row:

- restarts the supervisor journaled, and the *unplanned* ones: an exit (or an "unresponsive" kill by
  the heartbeat) of a process the drill did not kill. Any unplanned restart is a failure;
- verify ok; bar -> ack p50 of the day's orders (last day / first day must stay <= ``--max-drift``);
- RSS and open file descriptors of every process, the run's CPU, and the size of steadyhand.db,
  exchange.db (with -wal/-shm) and logs/.

Nights: ``--nights run`` (the default) keeps the bot running through every night and weekend at
speed, as an unattended bot does; ``--nights skip`` stops it gracefully after the close, verifies it
stopped too, jumps the clock to shortly before the next open and starts it again (minutes, not
tens). Either way the bot is running when the market opens. With ``--broker alpaca`` the exchange
is a process of its own whose clock cannot jump: nights always run.

Exit code 0 when every day passed, 1 otherwise (and when a process is left behind).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import soak_metrics as metrics
from drill import (
    DrillError,
    Exchange,
    Run,
    actor_pids,
    fired_pid,
    leftovers,
    start_args,
    verify_now,
    violations,
    wait_for,
)
from random_kills import ACTORS, ALPACA_ENV, POINT_WEIGHTS
from steadyhand.domain import market_hours
from steadyhand.runtime import crashpoints, procs
from steadyhand.sim.clock import SimClock, jump_clock, stored_clock

STALE_WALL_S = 2.0  # wall seconds without a bar before risk calls the feed stale, at any speed


def config_text(speed: float, broker: str) -> str:
    """The soak's steadyhand.toml. A jumpy strategy (2/3), so orders are in flight whenever it
    kills; the supervisor and the heartbeat keep their defaults (a soak must see what production
    would). Two limits are set for the speed: the order rate limit counts wall-clock minutes (at
    x1000 a session lasts 23 s), and risk's stale-data window (180 simulated seconds) would be 0.18 s
    of wall time: any scheduling hiccup of a busy machine would deny the day's orders as "feed
    stale". Through Alpaca the strategy keeps its shipped windows (5/20): Alpaca's rate limit (200
    requests a wall minute) cannot carry the jumpy ones at x600; orders queue behind HTTP 429s for
    simulated hours and cancels fail (BENCHMARKS.md, "Soak"). The loss breakers are off: a jumpy
    strategy loses money, and a bot halted by its daily loss (as it must be) trades no more days.
    Positions are capped at 100 shares and the account holds $10M: at x1000 a fill reaches the
    strategy several bars after its order (the OMS polls every 0.2 s of wall time, a bar is 0.06 s),
    so it targets from a stale position and positions drift (AAPL 1,140 shares with qty 10 by day
    5 of a run) until the broker rejects for buying power and the circuit stops every order."""
    fast, slow = (5, 20) if broker == "alpaca" else (2, 3)
    return (f"[strategy]\nfast = {fast}\nslow = {slow}\n\n[sim]\nstart_cash = 10000000.0\n\n"
            f"[risk]\nmax_orders_per_minute = 1000000\nstale_after_s = {max(180.0, STALE_WALL_S * speed):g}\n"
            "max_daily_loss = 1e12\nmax_drawdown = 1e12\nmax_position_qty = 100\n")


KINDS = ("actor", "power_cut", "crash_point")
KIND_WEIGHTS = (6, 2, 2)
EVENING = timedelta(minutes=30)  # after the close: the day's last fills, reconciliation, summary
FIRST_LEAD_S = 8.0  # wall seconds the first start gets before the first open
ACTOR_BACK_S = 30.0  # an actor picked for a kill may be mid-restart: wait this long for it


@dataclass(frozen=True)
class Kill:
    at: datetime  # simulated time
    kind: str
    actor: str = ""  # for "actor"
    spec: str = ""  # for "crash_point": STEADYHAND_CRASH_AT


def sessions_from(start: date, days: int) -> list[tuple[datetime, datetime]]:
    """The first ``days`` XNYS sessions on or after ``start`` (midnight ET)."""
    t = datetime(start.year, start.month, start.day, 5, tzinfo=UTC)  # midnight ET (EST) or 01:00 EDT
    found = []
    while len(found) < days:
        opens = market_hours.next_open(t)
        closes = market_hours.next_close(opens)
        found.append((opens, closes))
        t = closes
    return found


def plan(rng: random.Random, sessions: list[tuple[datetime, datetime]], per_day: int) -> list[list[Kill]]:
    """Every kill of the soak, drawn up front from the seed: the same seed, the same kills."""
    days = []
    for opens, closes in sessions:
        span = closes - opens
        times = sorted(opens + span * rng.uniform(0.05, 0.9) for _ in range(per_day))
        kills = []
        for at in times:
            kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
            if kind == "actor":
                kills.append(Kill(at, kind, actor=rng.choice(ACTORS)))
            elif kind == "crash_point":
                point = rng.choices(crashpoints.POINTS,
                                    weights=[POINT_WEIGHTS.get(p, 1) for p in crashpoints.POINTS])[0]
                kills.append(Kill(at, kind, spec=f"{point}:{rng.choice([1, 1, 2])}"
                                  + (":group" if rng.random() < 0.5 else "")))
            else:
                kills.append(Kill(at, kind))
        days.append(kills)
    return days


def day_note(previous: tuple[datetime, datetime] | None, session: tuple[datetime, datetime]) -> str:
    """What is special about this session: after a weekend / holiday, an early close."""
    notes = []
    if previous is not None:
        gap = [previous[0].date() + timedelta(days=k) for k in range(1, (session[0].date() - previous[0].date()).days)]
        if any(d.weekday() < 5 for d in gap):
            notes.append("after holiday")
        elif gap:
            notes.append("after weekend")
    if session[1] - session[0] < timedelta(hours=6, minutes=30):
        notes.append("early close")
    return ", ".join(notes)


def pin_start(first_open: datetime, speed: float) -> str:
    """``--start`` for every ``steadyhand run`` (and ``exchange serve``) of the soak: the simulated
    clock starts ``FIRST_LEAD_S`` of wall time before the first open, so the bot is up when the
    market opens. The first start anchors the clock in exchange.db; later starts reuse the anchor."""
    return (first_open - timedelta(seconds=FIRST_LEAD_S * speed)).isoformat()


@dataclass
class Soak:
    """One soak: the running bot, what the drill did to it, and what it measured."""

    args: argparse.Namespace
    data_dir: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)
    exchange: Exchange | None = None
    run: Run | None = None
    run_started_sim: datetime | None = None
    armed: str = ""  # the crash point the current run was started with ("" none)
    armed_fired: bool = False
    victims: set[int] = field(default_factory=set)  # every pid the drill killed (or a crash point did)
    kills: Counter[str] = field(default_factory=Counter)
    starts: list[float] = field(default_factory=list)  # wall seconds each start took
    cpu: metrics.CpuMeter = field(default_factory=metrics.CpuMeter)
    failures: list[str] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)
    start_at: str = ""  # --start of every run: where the simulated clock starts (see pin_start)
    restart_mark: int = 0  # the supervisor's restarts journal up to this id is accounted for

    def __post_init__(self) -> None:
        self.latency = metrics.LatencyReader(self.data_dir / "logs")

    @property
    def clock(self) -> SimClock:
        clock = stored_clock(self.data_dir / "exchange.db")
        assert clock is not None
        return clock

    # --- the bot ------------------------------------------------------------------------------

    def start(self, crash_at: str = "") -> None:
        self._look_for_fired()  # the last run's point, before this start forgets it
        run_args = ["--speed", f"{self.args.speed:g}", "--config", str(self.config), *start_args(self.start_at)]
        env = dict(self.env)
        if crash_at:
            crashpoints.fired_path(self.data_dir).unlink(missing_ok=True)
            env[crashpoints.ENV] = crash_at
        began = time.monotonic()
        try:
            self.run = Run(self.data_dir, run_args, env, may_die=crash_at.endswith(":group"))
        except DrillError as exc:  # not up in 60 s (power-cut by Run): a failure; start again, as systemd would
            self.failures.append(f"a start at {self.clock.now():%Y-%m-%d %H:%M} (sim) failed: {str(exc)[-300:]}")
            crashpoints.fired_path(self.data_dir).unlink(missing_ok=True)
            crash_at = ""
            self.run = Run(self.data_dir, run_args, dict(self.env))  # a second failure ends the soak
        self.starts.append(time.monotonic() - began)
        self.run_started_sim = self.clock.now()
        self.armed, self.armed_fired = crash_at, False

    def step(self) -> None:
        """One look (about once a second): CPU, a crash point that fired, a run that died, the exchange."""
        assert self.run is not None
        self.cpu.sample(self._processes())
        self._look_for_fired()
        if not self.run.alive:
            if not (self.armed.endswith(":group") and self.armed_fired):
                self.failures.append(f"the run exited by itself at {self.clock.now():%Y-%m-%d %H:%M} (sim): "
                                     + "".join(self.run.output[-5:]).strip())
            wait_for(lambda: not leftovers(self.data_dir), 10, "every process of the dead run gone")
            self.start()
        if self.exchange is not None and not self.exchange.up:
            raise DrillError(f"the exchange (pid {self.exchange.pid}) went down")

    def _look_for_fired(self) -> None:
        if self.armed and not self.armed_fired and crashpoints.fired_path(self.data_dir).exists():
            self._crash_point_fired()

    def _crash_point_fired(self) -> None:
        pid = fired_pid(self.data_dir)
        if pid is None:
            raise DrillError(f"{crashpoints.fired_path(self.data_dir)} names no pid")
        self.victims.add(pid)
        self.armed_fired = True
        self.kills["crash_point"] += 1

    def _processes(self) -> dict[str, Any]:
        assert self.run is not None
        return metrics.processes_by_role(self.data_dir, self.run.proc.pid,
                                         self.exchange.pid if self.exchange else None)

    def idle_until(self, at: datetime) -> None:
        """Let simulated time reach ``at``, looking at the run about once a second."""
        while True:
            self.step()
            left = self.clock.real_at(at) - time.time()
            if left <= 0:
                return
            time.sleep(min(1.0, left))

    # --- kills ---------------------------------------------------------------------------------

    def kill(self, kill: Kill) -> None:
        assert self.run is not None
        if kill.kind == "actor":
            pid = wait_for(lambda: self._live_actor(kill.actor), ACTOR_BACK_S, f"{kill.actor} alive")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return  # it died between the look and the kill: the supervisor restarts it anyway
            self.victims.add(pid)
            self.kills["actor"] += 1
        elif kill.kind == "power_cut":
            self.run.power_cut()
            self.kills["power_cut"] += 1
            self.start()
        else:
            self.run.power_cut()  # the point is armed through the environment: a fresh start
            self.kills["power_cut"] += 1
            self.start(crash_at=kill.spec)

    def _live_actor(self, name: str) -> int | None:
        """The actor's pid once it is up (the actors table keeps a dead pid until its restart is ready)."""
        pid = actor_pids(self.data_dir).get(name)
        return pid if pid and pid not in self.victims and procs.pid_alive(pid) else None

    # --- one day -------------------------------------------------------------------------------

    def day(self, number: int, session: tuple[datetime, datetime], kills: list[Kill], note: str) -> dict[str, Any]:
        opens, closes = session
        first_id = self.restart_mark
        kills_before, cpu_before, wall_before = Counter(self.kills), self.cpu.total_s, time.monotonic()
        self.idle_until(opens)
        assert self.run is not None and self.run_started_sim is not None
        up_at_open = self.run.alive and self.run_started_sim < opens
        for kill in kills:
            self.idle_until(kill.at)
            self.kill(kill)
        self.idle_until(closes + EVENING)
        self.step()
        checked = verify_now(self.data_dir, self.config, self.env)
        self._look_for_fired()  # a point may fire at the evening's reconciliation, during verify
        restarts = metrics.restarts_since(self.data_dir, first_id, self.victims, self.clock)
        self.restart_mark = restarts["last_id"]
        wall_s = time.monotonic() - wall_before
        processes = metrics.snapshot(self._processes())
        stopped_ok = True
        if self.args.nights == "skip":
            stopped_ok = self._night_off(number, session)
        self.latency.read()
        row = {"day": number, "date": opens.date().isoformat(), "note": note,
               "hours": round((closes - opens).total_seconds() / 3600, 1), "up_at_open": up_at_open,
               "kills": dict(self.kills - kills_before), "restarts": restarts,
               "verify_ok": bool(checked["ok"]) and stopped_ok, "violations": violations(checked),
               "latency": self.latency.day(opens.date().isoformat()), "processes": processes,
               "cpu_pct": round((self.cpu.total_s - cpu_before) / wall_s * 100, 1), "wall_s": round(wall_s, 1),
               "disk": metrics.disk(self.data_dir), "load_avg": round(os.getloadavg()[0], 2)}
        self._judge(row, checked)
        return row

    def _night_off(self, number: int, session: tuple[datetime, datetime]) -> bool:
        """``--nights skip``: a graceful stop, verify while stopped, the clock to shortly before the
        next open, a fresh start. True if the stop and the stopped verify were clean."""
        assert self.run is not None
        code = self.run.stop()
        stopped = verify_now(self.data_dir, self.config, self.env)
        if code != 0:
            self.failures.append(f"day {number}: the graceful stop exited {code}")
        lead_s = 2 * max(self.starts[-3:]) + 1.0  # the bot must be up before the open
        target = market_hours.next_open(session[1]) - timedelta(seconds=lead_s * self.args.speed)
        if target > self.clock.now():
            jump_clock(self.data_dir / "exchange.db", target)
        self.start()
        return code == 0 and bool(stopped["ok"])

    def _judge(self, row: dict[str, Any], checked: dict[str, Any]) -> None:
        where = f"day {row['day']} ({row['date']})"
        if row["restarts"]["unplanned"]:
            self.failures.append(f"{where}: {row['restarts']['unplanned']} unplanned restart(s): "
                                 f"{row['restarts']['unplanned_rows']}")
        if not row["verify_ok"]:
            self.failures.append(f"{where}: verify not ok: {json.dumps(checked, default=str)[:2000]}")
        if not row["latency"]["orders"]:
            self.failures.append(f"{where}: no order was acknowledged (halted?)")


def drift(days: list[dict[str, Any]]) -> float | None:
    """bar -> ack p50 of the last day over the first day's."""
    p50s = [d["latency"]["p50_ms"] for d in days if d["latency"]["p50_ms"]]
    return round(p50s[-1] / p50s[0], 3) if len(p50s) >= 2 else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=20, help="simulated trading days (default 20)")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 16),
                        help="first simulated date (default 2026-11-16)")
    parser.add_argument("--speed", type=float, default=1000.0,
                        help="simulated seconds per second (default 1000: a session in 23 s)")
    parser.add_argument("--kills-per-day", type=int, default=3, help="kills at random times of each session")
    parser.add_argument("--nights", choices=("run", "skip"), default="run",
                        help="run: the bot runs through nights and weekends; skip: stop, jump the clock, start")
    parser.add_argument("--broker", choices=("sim", "alpaca"), default="sim",
                        help="sim, or alpaca against steadyhand exchange serve")
    parser.add_argument("--max-drift", type=float, default=1.1,
                        help="fail if last day's bar->ack p50 / first day's is above this (0: report only)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kills (default: random, printed)")
    parser.add_argument("--data-dir", help="where (default: a fresh temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    if args.days < 1 or args.kills_per_day < 0 or args.speed <= 0:
        parser.error("--days must be >= 1, --kills-per-day >= 0 and --speed > 0")
    if args.broker == "alpaca" and args.nights == "skip":
        parser.error("--nights skip needs the embedded sim: the exchange's clock cannot jump while it serves")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    sessions = sessions_from(args.start, args.days)
    kills = plan(random.Random(seed), sessions, args.kills_per_day)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="steadyhand-soak-")).resolve() / "var"
    config = data_dir.parent / "soak.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text(args.speed, args.broker))
    soak = Soak(args, data_dir, config)
    signal.signal(signal.SIGTERM, _stopped)  # stopped from outside: clean up and report what ran
    started = time.monotonic()
    result: dict[str, Any] = {"seed": seed, "broker": args.broker, "speed": args.speed, "nights": args.nights,
                              "start": args.start.isoformat(), "days_planned": args.days,
                              "data_dir": str(data_dir), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        soak.start_at = pin_start(sessions[0][0], args.speed)
        if args.broker == "alpaca":
            _start_exchange(soak)
        soak.start()
        previous = None
        for number, (session, day_kills) in enumerate(zip(sessions, kills, strict=True), 1):
            row = soak.day(number, session, day_kills, day_note(previous, session))
            soak.days.append(row)
            print("  " + " | ".join(metrics.row(row)), file=sys.stderr, flush=True)
            previous = session
        _final(soak, result)
    except DrillError as exc:
        soak.failures.append(f"drill failed: {exc}")
    except Exception as exc:  # a bug of the drill itself: still clean up and report what ran
        traceback.print_exc()
        soak.failures.append(f"drill crashed: {exc!r}")
    finally:
        _clean_up(soak, result)
    result.update(days=soak.days, kills=dict(soak.kills), starts=len(soak.starts), drift=drift(soak.days),
                  elapsed_s=round(time.monotonic() - started, 1), load_avg_end=[round(x, 2) for x in os.getloadavg()],
                  start_s_max=round(max(soak.starts, default=0.0), 2))
    if args.max_drift and result["drift"] is not None and result["drift"] > args.max_drift:
        soak.failures.append(f"bar->ack p50 drift {result['drift']} > {args.max_drift}")
    if len(soak.days) < args.days:
        soak.failures.append(f"only {len(soak.days)} of {args.days} days ran")
    result["failures"], result["ok"] = soak.failures, not soak.failures
    _print(result, args.json)
    if not args.keep and not args.data_dir and result["ok"]:
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    return 0 if result["ok"] else 1


def _stopped(signum: int, frame: Any) -> None:
    raise DrillError(f"stopped by signal {signum}")


def _start_exchange(soak: Soak) -> None:
    """``steadyhand exchange serve`` on the soak's data dir (the clock already anchored there)."""
    exchange_config = soak.data_dir.parent / "exchange.toml"
    exchange_config.write_text(f"[sim]\nspeed = {soak.args.speed:g}\nstart_cash = 10000000.0\n")  # as the bot's
    soak.exchange = exchange = Exchange(soak.data_dir, exchange_config, start=soak.start_at)
    soak.config.write_text('broker = "alpaca"\n' + config_text(soak.args.speed, "alpaca")
                           + "\n[alpaca]\npaper = true\n"
                           + "".join(f'{k} = "{v}"\n' for k, v in exchange.urls.items()))
    soak.env = dict(ALPACA_ENV)


def _final(soak: Soak, result: dict[str, Any]) -> None:
    """After the last day: a graceful stop and verify once more on the stopped bot."""
    assert soak.run is not None
    code = soak.run.stop()
    stopped = verify_now(soak.data_dir, soak.config, soak.env)
    result["final"] = {"stop_exit_code": code, "verify_ok": stopped["ok"], "violations": violations(stopped),
                       "counts": stopped.get("counts")}
    if code != 0 or not stopped["ok"]:
        soak.failures.append(f"final stop exited {code}, verify {json.dumps(stopped, default=str)[:2000]}")


def _clean_up(soak: Soak, result: dict[str, Any]) -> None:
    """Nothing may be left running: the bot's processes, then the exchange (port proven closed)."""
    if soak.run is not None and soak.run.alive:
        soak.run.power_cut()
    left = leftovers(soak.data_dir)
    if left:
        crashpoints.kill_run(soak.data_dir)
        soak.failures.append(f"processes left behind: {left}")
    if soak.exchange is not None:
        try:
            result["exchange"] = {"pid": soak.exchange.pid, "port": soak.exchange.port,
                                  "requests": sum(soak.exchange.requests().values()),
                                  "exit_code": soak.exchange.stop()}
        except DrillError as exc:
            soak.failures.append(str(exc))


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    print(metrics.table(result["days"]))
    days = result["days"]
    unplanned = sum(d["restarts"]["unplanned"] for d in days)
    print(f"\nsoak ({result['broker']}, x{result['speed']:g}, nights {result['nights']}, seed {result['seed']}): "
          f"{len(days)} days from {result['start']} in {result['elapsed_s']}s; kills {result['kills']}; "
          f"{result['starts']} starts (longest {result['start_s_max']}s); unplanned restarts {unplanned}; "
          f"bar->ack p50 drift {result['drift']}; load {result['load_avg_start']} -> {result['load_avg_end']}")
    for failure in result["failures"]:
        print(f"  FAIL: {failure}")
    print("ok" if result["ok"] else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
