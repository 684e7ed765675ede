"""Single-actor restart: ``kill -9`` of one actor -> restarted and re-wired (targets: 300 ms; the
OMS -> restarted and reconciled: 1 s).

One bot (default synthetic market) per run; each actor is killed in turn by pid, a few seconds
apart. ``[supervisor] period_s = 2`` so that earlier kills do not double the restart backoff of
later ones (the first restart waits the default ``backoff_s`` = 50 ms, which is included). From
the kill to:

- strategy: its ``warmed_up`` event (restarted, wired, asked the feed for history and got it);
- risk: its ``reconciled`` event (the OMS saw the new address in the wiring and re-sent its
  report: risk approves orders again);
- feed, portfolio: the supervisor's ``actor_restarted`` event (created, configured, wiring
  broadcast) and the actor's own ``started`` event;
- oms: risk's ``reconciled`` event after the new OMS reconciled with the exchange.

    python -m bench.bench_restart [--quick]
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402

CONFIG = common.toml_config(supervisor={"period_s": 2.0})
# actor -> (actor whose event marks "ready again", that event)
READY = {"strategy": ("strategy", "warmed_up"), "risk": ("risk", "reconciled"), "feed": ("feed", "started"),
         "portfolio": ("portfolio", "started"), "oms": ("risk", "reconciled")}


def run_once(actors: list[str], keep: bool = False) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with common.data_dir("restart", keep) as data_dir, common.running_bot(data_dir, CONFIG, ("--speed", "60")) as bot:
        common.wait_event(data_dir, "risk", "reconciled", after=bot.spawned_at, timeout=60)
        time.sleep(2.0)
        for name in actors:
            pid = bot.pids()[name]
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            actor, event = READY[name]
            ready = common.wait_event(data_dir, actor, event, after=killed_at, timeout=30)
            restarted = common.wait_event(data_dir, "supervisor", "actor_restarted", after=killed_at, timeout=30,
                                          where=lambda e, n=name: e.get("actor_name") == n)
            started = common.wait_event(data_dir, name, "started", after=killed_at, timeout=30)
            out[name] = {"ready_ms": (ready["t"] - killed_at) * 1000,
                         "supervisor_restarted_ms": (restarted["t"] - killed_at) * 1000,
                         "configured_ms": (started["t"] - killed_at) * 1000}
            if name == "oms":
                oms = common.wait_event(data_dir, "oms", "reconciled", after=killed_at, timeout=30)
                out[name]["oms_reconciled_ms"] = (oms["t"] - killed_at) * 1000
            time.sleep(3.0)  # beyond period_s: the next kill starts from the base backoff
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--actors", default="strategy,risk,feed,portfolio,oms")
    args = common.parse_args(p, argv)
    actors = args.actors.split(",")
    figures = {name: common.Figure(f"restart_{name}_ready", "ms", target=1000.0 if name == "oms" else 300.0,
                                   note=f"kill -9 -> {READY[name][0]} {READY[name][1]}")
               for name in actors}
    detail = {name: common.Figure(f"restart_{name}_supervisor_restarted", "ms") for name in actors}
    runs = []
    for _ in range(common.repeats(args, full=5, quick=2)):
        r = run_once(actors, args.keep)
        runs.append(r)
        print("  run: " + ", ".join(f"{n} {v['ready_ms']:.0f} ms (supervisor {v['supervisor_restarted_ms']:.0f}, "
                                    f"configured {v['configured_ms']:.0f})" for n, v in r.items()), flush=True)
        for name, v in r.items():
            figures[name].add(v["ready_ms"])
            detail[name].add(v["supervisor_restarted_ms"])
    result = common.report("single-actor restart (kill -9 of one actor)", [*figures.values(), *detail.values()],
                           {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
