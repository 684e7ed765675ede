"""Run every benchmark, one process each, and print a summary of the figures against their targets.

    python -m bench [--quick | --tiny] [--only latency,burst,...] [--json results.json]

Each benchmark is also a script of its own (``python -m bench.bench_latency --help``). Figures are
printed as median (min, max) over repeated runs; nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402

# Cheapest first; the ones that start real bots after.
BENCHES = ("strategy", "exchange", "replay", "restart", "killswitch", "recovery", "latency", "burst", "idle",
           "dashboard", "memory", "ibkr", "replace")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    size.add_argument("--tiny", action="store_true", help="smallest sizes: proves the scripts work")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--json", help="write every figure (and the machine) to this file")
    p.add_argument("--start", default="", help="where each bot's simulated clock starts (steadyhand run --start)")
    args = p.parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    mode = ["--quick"] if args.quick else ["--tiny"] if args.tiny else []
    started = time.time()
    info = common.machine()
    print(f"steadyhand benchmarks ({'quick' if args.quick else 'tiny' if args.tiny else 'full'}): "
          f"{info.get('cpu', '?')}, {info['cores']} cores, {info['memory_gb']} GiB, Python {info['python']}, "
          f"{info['date']}; {common.load_line()}", flush=True)
    results: dict[str, Any] = {"machine": info, "mode": mode, "benches": {}}
    with tempfile.TemporaryDirectory(prefix="steadyhand-bench-") as tmp:
        for name in chosen:
            t0 = time.time()
            out = Path(tmp) / f"{name}.json"
            if name == "strategy":  # the existing micro-benchmark: prints one line, no JSON
                sizes = ["5000", "20"] if args.tiny else ["5000", "100"] if args.quick else ["5000", "200"]
                cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_strategy.py"), *sizes]
            else:
                cmd = [sys.executable, "-m", f"bench.bench_{name}", *mode, "--json", str(out)]
                cmd += ["--start", args.start] if args.start else []
            print(f"\n### {name}: {' '.join(cmd[1:])}  ({common.load_line()})", flush=True)
            code = subprocess.call(cmd, cwd=common.REPO, env={**os.environ})
            entry: dict[str, Any] = {"exit_code": code, "seconds": round(time.time() - t0, 1)}
            if out.exists():
                entry.update(json.loads(out.read_text()))
            results["benches"][name] = entry
    results["seconds"] = round(time.time() - started, 1)
    results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\n=== summary ({results['seconds']:.0f}s; {common.load_line()})")
    for name, entry in results["benches"].items():
        for figure in entry.get("figures", []):
            fig = common.Figure(figure["name"], figure["unit"], figure["values"], figure["target"], figure["op"],
                                figure["note"])
            if fig.target is not None or not fig.values:
                print("  " + fig.line())
        if entry["exit_code"]:
            print(f"  {name}: exited with {entry['exit_code']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(e["exit_code"] == 0 for e in results["benches"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
