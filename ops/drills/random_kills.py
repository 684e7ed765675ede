#!/usr/bin/env python3
"""Randomized crash drill: kill steadyhand over and over, anywhere, then prove the books are exact.

    python ops/drills/random_kills.py --count 25                    # what CI runs
    python ops/drills/random_kills.py --count 1000 --keep           # a long offline run
    python ops/drills/random_kills.py --count 12 --broker alpaca    # the Alpaca adapter, local exchange
    python ops/drills/random_kills.py --count 12 --broker ibkr      # the IBKR adapter, TWS face

Runs ``steadyhand run`` on the simulated market as a real process and, ``--count`` times, does one
of: SIGKILL one actor (the supervisor restarts it), SIGKILL every process of the run at once (a
power cut; the drill starts it again), or start it with a random named crash point armed
(``STEADYHAND_CRASH_AT``) and wait for it to fire. Then it starts steadyhand once more, lets the
OMS reconcile, runs ``steadyhand verify`` while it runs and again after a graceful stop, prints the
totals, and exits 1 on any invariant violation (or a process left behind).

``--broker alpaca``: the same drill through the Alpaca adapter (alpaca-py) against ``steadyhand
exchange serve``, started once as a process of its own on the drill's data dir (same speed, so the
clock anchored in ``exchange.db`` is shared). Every kill is of the bot only: after each one the
drill checks that the exchange is the same process and still serves, ``verify`` reads it over
Alpaca's REST API, and at the end the exchange is stopped and its port proven closed. The night is
not skipped in this mode: the exchange's clock is its own, as a real broker's is (kills while the
market is closed still exercise restarts and reconciliation, not the order path).

``--broker ibkr``: the same through the IBKR adapter (ib_async) against the TWS face of the local
exchange (``python -m steadyhand.sim.server.tws``), a process of its own in the Gateway's place.
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
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from drill import (
    START_HELP,
    DrillError,
    Exchange,
    RecoveryWatch,
    Run,
    TwsFace,
    actor_pids,
    fired_pid,
    leftovers,
    report_count,
    start_args,
    verify_now,
    violations,
    wait_for,
)
from steadyhand.domain import market_hours
from steadyhand.runtime import crashpoints, procs
from steadyhand.sim.clock import jump_clock, stored_clock

# The drill's own settings: a jumpy strategy, so orders are always in flight when it kills; and it
# kills actors far faster than any real failure would, so it must not be stopped by the supervisor's
# restart intensity (that escalation has tests of its own).
CONFIG = """
[strategy]
fast = 2
slow = 3

[supervisor]
max_restarts = 1000
period_s = 60.0
"""
ACTORS = ("alerter", "portfolio", "oms", "risk", "strategy", "feed", "heartbeat")
ARM_TIMEOUT_S = 6.0  # a crash point that needs open orders may not fire: give up after this
# Market orders fill at once on the sim, so the points that need open orders (at a reconciliation,
# at a cancel-all) are reached less often: arm the order-path points more often.
# The replace points weigh 0 while the bundled strategy never replaces: armed, they would never fire.
POINT_WEIGHTS = {"oms.after_journal": 3, "oms.after_submit": 3, "oms.after_fill_received": 3,
                 "oms.mid_reconcile": 2, "oms.mid_cancel_all": 1, "oms.after_replace_journal": 0,
                 "oms.after_replace": 0}
STOP = threading.Event()  # set by SIGTERM: a long drill stopped early still checks and reports
# The Alpaca keys the bot and verify use; the local exchange accepts any non-empty pair.
ALPACA_ENV = {"ALPACA_API_KEY": "drill-key", "ALPACA_SECRET_KEY": "drill-secret"}


@dataclass
class Setup:
    """Where and how the drill runs the bot (and, with ``--broker alpaca``, the exchange)."""

    data_dir: Path
    config: Path
    run_args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    exchange: Exchange | None = None
    watch: RecoveryWatch | None = None  # recovery times of every kill

    def power_cut(self, run: Run) -> None:
        if self.watch is not None:
            self.watch.power_cut()
        run.power_cut()

    def check_exchange(self, totals: dict[str, Any]) -> None:
        """The bot was killed: the broker must not have noticed (same process, still serving)."""
        if self.exchange is None:
            return
        totals["exchange"]["checks"] += 1
        if not self.exchange.up:
            totals["exchange"]["stayed_up"] = False
            raise DrillError(f"the exchange (pid {self.exchange.pid}, port {self.exchange.port}) went down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=25, help="how many kills")
    parser.add_argument("--broker", choices=("sim", "alpaca", "ibkr"), default="sim",
                        help="sim, alpaca against steadyhand exchange serve, or ibkr against its TWS face")
    parser.add_argument("--data-dir", help="where (default: a fresh temporary directory)")
    parser.add_argument("--speed", type=float, default=200.0, help="simulated seconds per second")
    parser.add_argument("--seed", type=int, default=None, help="seed of the drill's random choices")
    parser.add_argument("--start", default="", help=START_HELP)
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    rng = random.Random(seed)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="steadyhand-drill-")).resolve() / "var"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / "drill.toml"
    config.write_text(CONFIG)
    setup = Setup(data_dir, config, ["--speed", f"{args.speed:g}", "--config", str(config), *start_args(args.start)])
    totals: dict[str, Any] = {"seed": seed, "broker": args.broker, "data_dir": str(data_dir), "kills": 0,
                              "by_kind": Counter(), "actors_killed": Counter(), "points_armed": Counter(),
                              "points_fired": Counter(), "starts": 0}
    started = time.monotonic()
    setup.watch = RecoveryWatch(data_dir)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())  # stop killing; the final check still runs
    code = 0
    try:
        if args.broker in ("alpaca", "ibkr"):
            _start_exchange(setup, args.speed, args.start, totals, args.broker)
        _drill(args.count, rng, setup, totals)
        final = _final_check(setup, totals)
        totals["violations"] = final
        code = 1 if final or totals.get("start_failures") else 0
    except DrillError as exc:
        print(f"drill failed: {exc}", file=sys.stderr)
        totals["error"] = str(exc)
        code = 1
    except Exception as exc:  # a bug of the drill itself: still clean up and report what ran
        traceback.print_exc()
        totals["error"] = f"drill crashed: {exc!r}"
        code = 1
    finally:
        left = leftovers(data_dir)
        if left:
            crashpoints.kill_run(data_dir)
            totals["leftover_processes"] = left
            code = 1
        if setup.exchange is not None and not _stop_exchange(setup.exchange, totals):
            code = 1
        totals["recovery_s"] = setup.watch.close()
    totals["elapsed_s"] = round(time.monotonic() - started, 1)
    _print(totals, args.json)
    if not args.keep and not args.data_dir and code == 0:
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    return code


def _start_exchange(setup: Setup, speed: float, start: str, totals: dict[str, Any],
                    broker: str = "alpaca") -> None:
    """The exchange first, so it anchors the clock; then the bot's config points at it."""
    exchange_config = setup.data_dir.parent / "exchange.toml"
    exchange_config.write_text(f"[sim]\nspeed = {speed:g}\n")
    if broker == "ibkr":
        setup.exchange = exchange = TwsFace(setup.data_dir, exchange_config, start)
        setup.config.write_text(f'broker = "ibkr"\n{CONFIG}\n[ibkr]\nport = {exchange.port}\nclient_id = 31\n')
    else:
        setup.exchange = exchange = Exchange(setup.data_dir, exchange_config, start)
        setup.config.write_text('broker = "alpaca"\n' + CONFIG + "\n[alpaca]\npaper = true\n"
                                + "".join(f'{k} = "{v}"\n' for k, v in exchange.urls.items()))
        setup.env = dict(ALPACA_ENV)
    totals["exchange"] = {"pid": exchange.pid, "port": exchange.port, "checks": 0, "stayed_up": True}


def _stop_exchange(exchange: Exchange, totals: dict[str, Any]) -> bool:
    """Stop the exchange and prove it gone (process exited, port closed); False if it was not clean."""
    info = totals.setdefault("exchange", {})
    info["stayed_up"] = info.get("stayed_up", True) and exchange.proc.poll() is None
    served = exchange.requests()
    info["requests"] = sum(served.values())
    info["requests_by_path"] = dict(sorted(served.items(), key=lambda kv: -kv[1]))
    try:
        info["exit_code"] = exchange.stop()
    except DrillError as exc:
        info["error"] = str(exc)
        return False
    info["port_closed"] = not procs.port_listening(exchange.port)
    info["process_gone"] = not procs.pid_alive(exchange.pid)
    return info["exit_code"] == 0 and info["port_closed"] and info["process_gone"] and info["stayed_up"]


def _drill(count: int, rng: random.Random, setup: Setup, totals: dict[str, Any]) -> None:
    data_dir = setup.data_dir
    run: Run | None = None
    while totals["kills"] < count and not STOP.is_set():
        setup.check_exchange(totals)
        kind = rng.choices(["actor", "power_cut", "crash_point"], weights=[6, 2, 2])[0]
        if kind == "crash_point":
            if run is not None and run.alive:
                setup.power_cut(run)  # the point is armed through the environment: a fresh start
                _count(totals, "power_cut")
            run = _start_armed(rng, setup, totals)
            continue
        if run is None or not run.alive:
            run = _start(setup, {}, totals)
        time.sleep(rng.uniform(0.2, 1.5))  # let it trade (or die mid-reconciliation)
        if kind == "actor":
            pids = actor_pids(data_dir)
            name = rng.choice([n for n in ACTORS if n in pids] or ["oms"])
            if name in pids:
                try:
                    os.kill(pids[name], signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it was being restarted already; pick again
                assert setup.watch is not None
                setup.watch.actor_killed(name, pids[name])
                totals["actors_killed"][name] += 1
                _count(totals, "actor")
        else:
            setup.power_cut(run)
            _count(totals, "power_cut")
    if STOP.is_set():
        totals["stopped_early"] = f"SIGTERM after {totals['kills']} of {count} kills"
    if run is not None and run.alive:
        setup.power_cut(run)
    setup.check_exchange(totals)


def _start_armed(rng: random.Random, setup: Setup, totals: dict[str, Any]) -> Run:
    data_dir = setup.data_dir
    point = rng.choices(crashpoints.POINTS, weights=[POINT_WEIGHTS.get(p, 1) for p in crashpoints.POINTS])[0]
    spec = f"{point}:{rng.choice([1, 1, 2])}" + (":group" if rng.random() < 0.5 else "")
    crashpoints.fired_path(data_dir).unlink(missing_ok=True)
    totals["points_armed"][point] += 1
    run = _start(setup, {crashpoints.ENV: spec}, totals, may_die=spec.endswith(":group"))
    try:
        wait_for(lambda: crashpoints.fired_path(data_dir).exists(), ARM_TIMEOUT_S, spec, interval=0.05)
    except DrillError:
        return run  # not reached this time (no open orders, say): the run goes on, armed
    totals["points_fired"][point] += 1
    _count(totals, "crash_point")
    assert setup.watch is not None
    if spec.endswith(":group"):
        setup.watch.power_cut()
        wait_for(lambda: not run.alive, 10, "the power cut at the crash point")
        wait_for(lambda: not leftovers(data_dir), 10, "every process of the run gone")
    else:  # the OMS died at the point: the supervisor restarts it
        pid = fired_pid(data_dir)
        if pid is not None:
            setup.watch.actor_killed("oms", pid)
    return run


def _start(setup: Setup, env: dict[str, str], totals: dict[str, Any], may_die: bool = False) -> Run:
    totals["starts"] += 1
    if setup.exchange is None:  # the exchange process keeps its own clock: its night is not skipped
        _skip_the_night(setup.data_dir, totals)
    spawned, reports = time.monotonic(), report_count(setup.data_dir)
    try:
        run = Run(setup.data_dir, setup.run_args, {**setup.env, **env}, may_die=may_die)
    except DrillError as exc:  # not up in 60 s (Run has power-cut it): as systemd would, start again
        totals.setdefault("start_failures", []).append({"crash_at": env.get(crashpoints.ENV, ""),
                                                        "error": str(exc)[-300:]})
        spawned = time.monotonic()
        crashpoints.fired_path(setup.data_dir).unlink(missing_ok=True)  # unarmed now: nothing can fire
        run = Run(setup.data_dir, setup.run_args, dict(setup.env))  # a second failure ends the drill
    if setup.watch is not None:
        setup.watch.run_started(spawned, reports)
    return run


def _skip_the_night(data_dir: Path, totals: dict[str, Any]) -> None:
    """The bot is down: if the market is closed, restart it at the next open instead (as after a
    night's outage). Without this a long drill spends most kills on an idle, closed market."""
    clock = stored_clock(data_dir / "exchange.db")
    if clock is None or market_hours.is_open(now := clock.now()):
        return
    jump_clock(data_dir / "exchange.db", market_hours.next_open(now) + timedelta(seconds=30))
    totals["nights_skipped"] = totals.get("nights_skipped", 0) + 1


def _count(totals: dict[str, Any], kind: str) -> None:
    totals["kills"] += 1
    totals["by_kind"][kind] += 1


def _final_check(setup: Setup, totals: dict[str, Any]) -> int:
    """A clean start, its reconciliation, verify while running and after a graceful stop."""
    data_dir, config = setup.data_dir, setup.config
    crashpoints.fired_path(data_dir).unlink(missing_ok=True)
    before = report_count(data_dir)
    run = _start(setup, {}, totals)
    wait_for(lambda: report_count(data_dir) > before, 60, "the final reconciliation")
    running = verify_now(data_dir, config, setup.env)
    stopped_code = run.stop()
    setup.check_exchange(totals)
    stopped = verify_now(data_dir, config, setup.env)
    totals["verify_running"] = {k: running[k] for k in ("ok", "counts")}
    totals["verify_stopped"] = {k: stopped[k] for k in ("ok", "counts")}
    found = violations(running) + violations(stopped)
    if found:
        totals["violation_details"] = {"running": running, "stopped": stopped}
    if stopped_code != 0:
        raise DrillError(f"the final graceful stop exited {stopped_code}")
    return found


def _print(totals: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(totals, default=dict))
        return
    print(f"drill ({totals['broker']}): {totals['kills']} kills in {totals['elapsed_s']}s (seed {totals['seed']}, "
          f"{totals['starts']} starts): {dict(totals['by_kind'])}")
    print(f"  actors killed: {dict(totals['actors_killed'])}")
    print("  crash points fired/armed: " + ", ".join(
        f"{p} {totals['points_fired'][p]}/{n}" for p, n in sorted(totals["points_armed"].items())))
    if "exchange" in totals:
        print(f"  exchange: {totals['exchange']}")
    if "recovery_s" in totals:
        print(f"  recovery (s): {totals['recovery_s']}")
    if "verify_stopped" in totals:
        print(f"  verify: running {totals['verify_running']}, stopped {totals['verify_stopped']}")
    if totals.get("start_failures"):
        print(f"  START FAILURES (not up in 60 s, started again): {totals['start_failures']}")
    if "stopped_early" in totals:
        print(f"  stopped early: {totals['stopped_early']}")
    print(f"  violations: {totals.get('violations', 'n/a')}"
          + (f"  ERROR: {totals['error']}" if "error" in totals else "")
          + (f"  LEFTOVER PROCESSES: {totals['leftover_processes']}" if "leftover_processes" in totals else ""))
    if totals.get("violation_details"):
        print(json.dumps(totals["violation_details"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
