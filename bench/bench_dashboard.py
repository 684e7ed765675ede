"""What the dashboard costs: its idle CPU, and bar→ack p50 with 5 page-like clients vs none, side by side.

1. Idle: a bot on a closed market (as bench_idle), no client connected: the dashboard process's CPU
   over the window, in % of one core (target <= 0.1 %).
2. Side by side, in one run: the replay of bench_latency (orders on a schedule) while the clients
   are switched on and off in alternating phases of ``PHASE_S`` seconds. A client does what the page
   does: it reads ``/stream`` and fetches ``/api/state`` every 5 s and 1 s after any frame other
   than bars and equity (at most once a second). Each order's bar→ack (the OMS's
   ``order_submitted``) is counted in the phase it was acknowledged in; p50 with clients vs without
   (target: moves by <= 5 %).

    python -m bench.bench_dashboard [--quick | --tiny]
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.sim.clock import anchor_clock, stored_clock  # noqa: E402

from bench import bench_latency, common  # noqa: E402

SATURDAY = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
PHASE_S = 10.0
CLIENTS = 5


def _dashboard(data_dir: Path) -> tuple[str, str]:
    url = common.wait_for(lambda: json.loads((data_dir / "dashboard.json").read_text())["url"]
                          if (data_dir / "dashboard.json").exists() else None, 30, what="dashboard.json")
    base, _, token = url.partition("/?token=")
    return base, token


def idle_once(seconds: float, keep: bool = False) -> float:
    with common.data_dir("dashboard-idle", keep) as data_dir:
        data_dir.mkdir(parents=True)
        anchor_clock(str(data_dir / "exchange.db"), speed=60.0, start=SATURDAY)  # market closed
        with common.running_bot(data_dir) as bot:
            common.wait_event(data_dir, "risk", "reconciled", after=bot.spawned_at, timeout=60)
            time.sleep(5.0)
            proc = common.psutil.Process(bot.pids()["dashboard"])
            before = common.cpu_seconds([proc])[proc.pid]
            t0 = time.monotonic()
            time.sleep(seconds)
            after = common.cpu_seconds([proc])[proc.pid]
            return (after - before) / (time.monotonic() - t0) * 100


class Clients:
    """``CLIENTS`` page-like clients on an event loop thread, switched on and off."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.on = threading.Event()
        self.stop = threading.Event()
        self.frames = 0
        self.fetches = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(CLIENTS)))

    def _fetch(self) -> None:
        request = urllib.request.Request(self.base + "/api/state", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        self.fetches += 1

    async def _client(self) -> None:
        import websockets

        while not self.stop.is_set():
            if not self.on.is_set():
                await asyncio.sleep(0.05)
                continue
            async with websockets.connect(self.base.replace("http://", "ws://") + "/stream",
                                          additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:
                next_fetch, due = time.monotonic(), None
                while self.on.is_set() and not self.stop.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.1))
                        self.frames += 1
                        if frame["stage"] not in ("bar.received", "equity.update") and due is None:
                            due = time.monotonic() + 1.0
                    except TimeoutError:
                        pass
                    now = time.monotonic()
                    if now >= next_fetch or (due is not None and now >= due):
                        await asyncio.to_thread(self._fetch)
                        next_fetch, due = now + 5.0, None


def side_by_side_once(orders: int, keep: bool = False) -> dict[str, Any]:
    per_tick = 4
    n_symbols = per_tick * bench_latency.PERIOD // 2
    tick_s = bench_latency.TICK_S
    lead_in = math.ceil(bench_latency.STARTUP_S / tick_s) + 25
    ticks = lead_in + bench_latency.PERIOD // 2 + bench_latency.SKIP_TICKS + math.ceil(orders / per_tick * 1.1)
    names = common.symbols(n_symbols)
    start = bench_latency.START
    phases: list[tuple[float, float, bool]] = []
    with common.data_dir("dashboard-latency", keep) as data_dir:
        replay = common.write_replay(data_dir.parent / "bars.csv", names, start,
                                     common.step_closes(ticks, n_symbols, bench_latency.PERIOD, lead_in))
        with common.running_bot(data_dir, common.replay_config(replay, names, tick_s)) as bot:
            clock = stored_clock(data_dir / "exchange.db")
            end = clock.real_at(start + timedelta(minutes=ticks + 1))
            clients = Clients(*_dashboard(data_dir))
            clients.thread.start()
            warm = bot.running_at + 3.0 + bench_latency.SKIP_TICKS * tick_s
            time.sleep(max(0.0, warm - time.time()))
            with_clients = False
            while time.time() < end - 1.0:
                (clients.on.set if with_clients else clients.on.clear)()
                t0 = time.time()
                time.sleep(min(PHASE_S, max(0.0, end - time.time())))
                phases.append((t0 + 0.5, time.time(), with_clients))  # 0.5 s for the switch to settle
                with_clients = not with_clients
            clients.on.clear()
            clients.stop.set()
            clients.thread.join(10)
            submitted = common.events(data_dir, "oms", "order_submitted")
    split: dict[bool, list[float]] = {False: [], True: []}
    for e in submitted:
        ms = e.get("bar_to_ack_ms")
        phase = next((on for a, b, on in phases if a <= e["t"] < b), None)
        if ms is not None and phase is not None:
            split[phase].append(ms)
    off, on = split[False], split[True]
    return {"orders_without": len(off), "orders_with": len(on), "frames": clients.frames,
            "fetches": clients.fetches, "phases": len(phases),
            "p50_without": common.percentile(off, 50) if off else None,
            "p50_with": common.percentile(on, 50) if on else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, help="idle window (default 60; --quick 30)")
    args = common.parse_args(p, argv)
    seconds = args.seconds or common.size(args, 60.0, 30.0, 5.0)
    orders = common.size(args, 2000, 800, 120)
    idle = common.Figure("dashboard_idle_cpu", "% of a core", target=0.1, note=f"{seconds:g}s, market closed")
    without = common.Figure("bar_to_ack_p50_no_clients", "ms")
    with_ = common.Figure("bar_to_ack_p50_5_clients", "ms")
    moved = common.Figure("bar_to_ack_p50_moved", "%", target=5.0, note="5 clients vs none, alternating phases")
    runs = []
    for _ in range(common.repeats(args, full=2, quick=1)):
        idle.add(idle_once(seconds, args.keep))
        r = side_by_side_once(orders, args.keep)
        runs.append(r)
        print(f"  run: {r}", flush=True)
        without.add(r["p50_without"])
        with_.add(r["p50_with"])
        if r["p50_without"] and r["p50_with"] is not None:
            moved.add((r["p50_with"] - r["p50_without"]) / r["p50_without"] * 100)
    result = common.report("dashboard costs", [idle, without, with_, moved], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
