"""Memory: RSS of every process before and after 1,000,000 replayed bars (after warm-up).

A real ``steadyhand run`` replays ``--symbols`` symbols x (warm-up + measured) minute bars as fast
as the simulated clock allows while every actor keeps up (one tick per ``TICK_S`` wall seconds).
Each symbol's price is a slow sine (a crossing every ~200 ticks, so orders and fills flow at a
steady rate: ~2.5 orders per tick with 500 symbols). RSS of every process of the run is sampled
when the warm-up bars have been replayed and again when the measured bars have been; the figure is
the largest growth of any one process, in %; the whole bot's growth is shown too.

    python -m bench.bench_memory [--quick] [--bars N] [--symbols N]
"""

from __future__ import annotations

import math
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
from steadyhand.sim.clock import stored_clock  # noqa: E402

from bench import common  # noqa: E402

TICK_S = 0.06  # wall seconds per simulated minute (speed 1000)
START = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)  # a Monday; bars run on around the clock
STARTUP_S = 15.0  # plus 1 s per 50,000 rows: the feed and the OMS parse the replay file at start


def closes(ticks: int, n_symbols: int, period: int = 400) -> np.ndarray:
    k = np.arange(ticks)[:, None]
    phase = np.arange(n_symbols)[None, :] * (2 * math.pi / n_symbols)
    return np.round(100 * (1 + 0.01 * np.sin(2 * math.pi * k / period + phase)), 4)


def run_once(n_symbols: int, measured_ticks: int, warm_ticks: int, keep: bool = False) -> dict[str, Any]:
    rows = (warm_ticks + measured_ticks) * n_symbols
    lead_in = math.ceil((STARTUP_S + rows / 50_000) / TICK_S)
    ticks = lead_in + warm_ticks + measured_ticks
    names = common.symbols(n_symbols)
    with common.data_dir("memory", keep) as data_dir:
        replay = common.write_replay(data_dir.parent / "bars.csv", names, START, closes(ticks, n_symbols))
        config = common.replay_config(replay, names, TICK_S)
        with common.running_bot(data_dir, config) as bot:
            clock = stored_clock(data_dir / "exchange.db")
            first = clock.at_real(bot.running_at)
            skipped = max(0, int((first - START).total_seconds() // 60) + 1)
            if skipped > lead_in:
                raise RuntimeError(f"the bot took {bot.running_at - bot.spawned_at:.0f}s to start")
            warm_end = clock.real_at(START + timedelta(minutes=lead_in + warm_ticks + 1))
            end = clock.real_at(START + timedelta(minutes=ticks + 1))
            names_by_pid = {pid: name for name, pid in bot.pids().items()}
            names_by_pid[bot.proc.pid] = "run"
            time.sleep(max(0.0, warm_end - time.time()) + 2 * TICK_S)
            before = common.rss_by_process(bot.processes())
            behind_before = _behind(data_dir, START + timedelta(minutes=lead_in + warm_ticks))
            time.sleep(max(0.0, end - time.time()) + 3.0)
            after = common.rss_by_process(bot.processes())
            behind_after = _behind(data_dir, START + timedelta(minutes=ticks))
            equity_rows = _count(data_dir, "equity")
    per = {names_by_pid.get(int(pid), f"admin/logger {pid}"): (before[pid], after[pid])
           for pid in before if pid in after}
    growth = {n: (a - b) / b * 100 for n, (b, a) in per.items()}
    total_b, total_a = sum(b for b, _ in per.values()), sum(a for _, a in per.values())
    return {"bars": measured_ticks * n_symbols, "max_growth_pct": max(growth.values()),
            "worst": max(growth, key=lambda n: growth[n]), "total_growth_pct": (total_a - total_b) / total_b * 100,
            "rss_mib": {n: [round(b, 1), round(a, 1)] for n, (b, a) in per.items()},
            "equity_rows": equity_rows, "ticks_behind": [behind_before, behind_after]}


def _behind(data_dir: Path, expected: datetime) -> float | None:
    """Ticks between the last bar replayed by now (``expected``, a bar start) and the portfolio's last
    equity row (one per tick it processed): 0 when the bot keeps up with the replay."""
    import sqlite3

    conn = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT max(ts) FROM equity").fetchone()
    finally:
        conn.close()
    if not row or not row[0]:
        return None
    return round((expected - datetime.fromisoformat(row[0])).total_seconds() / 60, 1)


def _count(data_dir: Path, table: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--bars", type=int, help="measured bars (default 1,000,000; --quick 200,000)")
    p.add_argument("--symbols", type=int, default=500)
    args = common.parse_args(p, argv)
    bars = args.bars or common.size(args, 1_000_000, 200_000, 10_000)
    measured = max(1, bars // args.symbols)
    warm = common.size(args, 200, 100, 10)
    figure = common.Figure("rss_growth_worst_process", "%", target=5.0,
                           note=f"{measured * args.symbols:,} bars ({args.symbols} symbols), {warm} warm-up ticks")
    total = common.Figure("rss_growth_whole_bot", "%")
    runs = []
    for _ in range(common.repeats(args, full=1, quick=1)):
        r = run_once(args.symbols, measured, warm, args.keep)
        runs.append(r)
        print(f"  run: worst {r['worst']} {r['max_growth_pct']:+.1f}%, whole bot {r['total_growth_pct']:+.1f}%; "
              f"RSS MiB before/after {r['rss_mib']}; portfolio behind the replay by {r['ticks_behind']} ticks",
              flush=True)
        figure.add(r["max_growth_pct"])
        total.add(r["total_growth_pct"])
    result = common.report("memory (RSS before/after replayed bars)", [figure, total], {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
