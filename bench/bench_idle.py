"""Idle cost: CPU of the whole bot (every process) over 60 s with the market closed.

The simulated clock is anchored on a Saturday before the first start (the default synthetic
market, default settings, speed 60), so the bot is up, connected and watching, but no session is
open: the feed only looks at the clock now and then. After a settling period, the CPU time (user +
system) of every process of the run -- ``steadyhand run`` with its live status line, the Thespian
admin, each actor -- is read twice, ``--seconds`` apart. The figure is the sum, as % of one core;
each process's share is printed too.

    python -m bench.bench_idle [--quick] [--seconds S]
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steadyhand.sim.clock import anchor_clock  # noqa: E402

from bench import common  # noqa: E402

SATURDAY = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
SETTLE_S = 5.0


def run_once(seconds: float, keep: bool = False) -> dict[str, Any]:
    with common.data_dir("idle", keep) as data_dir:
        data_dir.mkdir(parents=True)
        anchor_clock(str(data_dir / "exchange.db"), speed=60.0, start=SATURDAY)  # market closed
        with common.running_bot(data_dir) as bot:
            common.wait_event(data_dir, "risk", "reconciled", after=bot.spawned_at, timeout=60)
            time.sleep(SETTLE_S)
            names = {pid: name for name, pid in bot.pids().items()}
            names[bot.proc.pid] = "run (CLI, live view)"
            processes = bot.processes()
            if bot.proc.pid not in {p.pid for p in processes}:
                processes.append(common.psutil.Process(bot.proc.pid))
            before = common.cpu_seconds(processes)
            t0 = time.monotonic()
            time.sleep(seconds)
            after = common.cpu_seconds(processes)
            wall = time.monotonic() - t0
    per = {names.get(pid, f"thespian admin/logger {pid}"): (after[pid] - before[pid]) / wall * 100
           for pid in before if pid in after}
    return {"total_pct": sum(per.values()), "per_process_pct": dict(sorted(per.items(), key=lambda kv: -kv[1])),
            "seconds": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, help="measurement window (default 60; --quick 20)")
    args = common.parse_args(p, argv)
    seconds = args.seconds or common.size(args, 60.0, 20.0, 3.0)
    figure = common.Figure("idle_cpu_whole_bot", "% of a core", target=0.5,
                           note=f"{seconds:g}s window, market closed")
    runs = []
    for _ in range(common.repeats(args, full=3, quick=1)):
        r = run_once(seconds, args.keep)
        runs.append(r)
        print(f"  run: {r['total_pct']:.2f}% of a core: " +
              ", ".join(f"{n} {v:.2f}%" for n, v in r["per_process_pct"].items()), flush=True)
        figure.add(r["total_pct"])
    result = common.report("idle cost (market closed)", [figure], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
