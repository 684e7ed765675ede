"""Disk: bytes of steadyhand.db, its -wal, exchange.db and logs/ after each simulated trading day.

A real ``steadyhand run``, its clock pinned (``anchor_clock``) to a Monday before the open, runs
``--days`` XNYS trading days at ``--speed``; two hours after each close the files are measured (and
the rows of the tables that grow). The bars are a replay of every session minute (each symbol a
slow sine, phases spread: about ``PER_SYMBOL_DAY`` SMA crossings per symbol per session, like the
synthetic market's), because the synthetic market caches 48 session paths and with 500 symbols
recomputes one per bar, far slower than any speed worth measuring. With ``--retention-days R`` every ``*_days``
of ``[retention]`` is R; with ``--no-retention`` the config has no ``[retention]`` table at all
(so the script also runs against a steadyhand from before retention, for the "before" figures:
``PYTHONPATH=<an export of that version, as steadyhand/> python bench/bench_disk.py --no-retention``).

Logs are rotated at a small ``[logging] max_bytes`` in both cases, so the cap shows within days.

    python -m bench.bench_disk [--symbols 5,500] [--days 5] [--retention-days 1 | --no-retention]

Not run by CI (minutes per symbol count); the figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
from steadyhand.config import DEFAULT_SYMBOLS  # noqa: E402
from steadyhand.domain import market_hours  # noqa: E402
from steadyhand.sim.clock import anchor_clock, stored_clock  # noqa: E402

from bench import common  # noqa: E402

START = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)  # a Monday, 4.5 h before the open: room for the start
SAMPLE_AFTER_CLOSE = timedelta(hours=2)
TABLES = ("equity", "risk_decisions", "orders", "fills", "alerts", "bad_bars")
LOGGING = {"max_bytes": 1_000_000, "backups": 2}  # 3 MB per process at most
MiB = 2**20
PERIOD = 110  # minutes per sine: ~7 crossings per symbol per 390-minute session
PER_SYMBOL_DAY = 2 * 390 // PERIOD


def speed_for(n_symbols: int) -> float:
    """Fast, but slow enough that the bot keeps up with every bar (500 symbols: a tick is 120 ms)."""
    return 3000.0 if n_symbols <= 50 else 500.0


def write_replay(path: Path, names: list[str], days: int) -> Path:
    """Every session minute of the first ``days`` sessions from START, for every symbol."""
    minutes = [m for opens, closes in sessions(days) for m in _minutes(opens, closes)]
    k = np.arange(len(minutes))[:, None]
    phase = np.arange(len(names))[None, :] * (2 * math.pi / len(names))
    closes = np.round(100 * (1 + 0.01 * np.sin(2 * math.pi * k / PERIOD + phase)), 4)
    opens = np.vstack([closes[:1], closes[:-1]])
    with path.open("w") as fh:
        fh.write("ts,symbol,open,high,low,close,volume\n")
        for i, minute in enumerate(minutes):
            ts = minute.strftime("%Y-%m-%dT%H:%M:%SZ")
            o, c = opens[i], closes[i]
            hi, lo = np.maximum(o, c), np.minimum(o, c)
            fh.write("".join(f"{ts},{s},{o[j]:.4f},{hi[j]:.4f},{lo[j]:.4f},{c[j]:.4f},1000\n"
                             for j, s in enumerate(names)))
    return path


def _minutes(opens: datetime, closes: datetime) -> list[datetime]:
    return [opens + timedelta(minutes=i) for i in range(int((closes - opens).total_seconds() // 60))]


def config(names: list[str], speed: float, retention_days: float | None, replay: Path,
           checkpoint_interval_s: float | None = None) -> str:
    sections: dict[str, dict[str, Any]] = {
        "sim": {"speed": speed, "start_cash": 1e9, "replay": str(replay)},
        # At x3000, 180 simulated seconds (the default staleness limit) are 60 ms: on a loaded machine
        # bars reach risk later than that and nothing would trade. Likewise a 500-symbol tick can take
        # seconds: a disk benchmark must not measure stale-data denials or heartbeat kills.
        "risk": {**common.BUSY_RISK, "stale_after_s": 3600.0},
        "heartbeat": {"deadline_s": 30.0},
        "logging": LOGGING,
    }
    if retention_days is not None:
        sections["retention"] = {key: retention_days for key in
                                 ("equity_bars_days", "bad_bars_days", "risk_decisions_days", "alerts_days")}
        if checkpoint_interval_s is not None:
            sections["retention"]["checkpoint_interval_s"] = checkpoint_interval_s
    return common.toml_config(names, **sections)


def sizes(data_dir: Path) -> dict[str, int]:
    """Bytes on disk of each part of the data dir."""
    def size(name: str) -> int:
        path = data_dir / name
        return path.stat().st_size if path.exists() else 0

    logs = sum(p.stat().st_size for p in (data_dir / "logs").glob("*") if p.is_file())
    return {"db": size("steadyhand.db"), "wal": size("steadyhand.db-wal"), "exchange": size("exchange.db"),
            "exchange_wal": size("exchange.db-wal"), "logs": logs}


PRUNED = ("equity", "risk_decisions", "bad_bars", "alerts")  # what [retention] bounds
JOURNAL = ("orders", "fills")  # kept for ever: grows with the orders, not with time


def rows(data_dir: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM [{t}]").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def table_bytes(data_dir: Path) -> dict[str, int]:
    """Bytes of steadyhand.db's pages (indexes with their table, as committed so far: the WAL
    included) in the tables retention prunes, the journal, the rest, and the free pages."""
    conn = sqlite3.connect(f"file:{data_dir / 'steadyhand.db'}?mode=ro", uri=True, timeout=10)
    try:
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
        out = {"pruned": 0, "journal": 0, "other": 0}
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            out["pruned" if table in PRUNED else "journal" if table in JOURNAL else "other"] += size
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        out["free"] = conn.execute("PRAGMA freelist_count").fetchone()[0] * page
        return out
    finally:
        conn.close()


def sessions(days: int) -> list[tuple[datetime, datetime]]:
    """The first ``days`` XNYS sessions (open, close) from START."""
    out = []
    t = START
    for _ in range(days):
        opens = market_hours.next_open(t)
        t = market_hours.next_close(opens)
        out.append((opens, t))
    return out


def sample_times(days: int) -> list[tuple[str, datetime]]:
    """(day, when to measure: two hours after its close) for the first ``days`` sessions from START."""
    return [(opens.date().isoformat(), closes + SAMPLE_AFTER_CLOSE) for opens, closes in sessions(days)]


def run_once(n_symbols: int, days: int, speed: float, retention_days: float | None, keep: bool,
             checkpoint_interval_s: float | None = None) -> dict[str, Any]:
    names = list(DEFAULT_SYMBOLS) if n_symbols == len(DEFAULT_SYMBOLS) else common.symbols(n_symbols)
    samples = []
    with common.data_dir(f"disk-{n_symbols}", keep) as data_dir:
        data_dir.mkdir(parents=True)
        replay = write_replay(data_dir.parent / "bars.csv", names, days)
        anchor_clock(data_dir / "exchange.db", speed=speed, start=START)
        with common.running_bot(data_dir, config(names, speed, retention_days, replay, checkpoint_interval_s)) as bot:
            clock = stored_clock(data_dir / "exchange.db")
            assert clock is not None
            print(f"  {n_symbols} symbols at x{speed:g}: started at {clock.now():%a %H:%M} simulated", flush=True)
            for day, at in sample_times(days):
                time.sleep(max(0.0, clock.real_at(at) - time.time()))
                entry = {"day": day, **sizes(data_dir), "rows": rows(data_dir), "tables": table_bytes(data_dir),
                         "restarts": sum(a["restarts"] for a in bot.status()["actors"].values())}
                samples.append(entry)
                print("    " + line(entry, samples), flush=True)
            verify = bot.cli("verify", "--json")
    return {"symbols": n_symbols, "speed": speed, "retention_days": retention_days,
            "checkpoint_interval_s": checkpoint_interval_s, "samples": samples,
            "verify_ok": verify.returncode == 0}


def total(entry: dict[str, Any]) -> int:
    return entry["db"] + entry["wal"] + entry["exchange"] + entry["exchange_wal"] + entry["logs"]


def line(entry: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    grew = total(entry) - total(samples[-2]) if len(samples) > 1 else total(entry)
    r, t = entry["rows"], entry["tables"]
    return (f"{entry['day']}: steadyhand.db {entry['db'] / MiB:6.2f} MiB (pruned tables {t['pruned'] / MiB:.2f}, "
            f"journal {t['journal'] / MiB:.2f}, free {t['free'] / MiB:.2f})  -wal {entry['wal'] / MiB:5.2f}  "
            f"exchange.db {entry['exchange'] / MiB:6.2f} -wal {entry['exchange_wal'] / MiB:5.2f}  "
            f"logs {entry['logs'] / MiB:6.2f}  "
            f"total {total(entry) / MiB:7.2f} MiB (+{grew / MiB:.2f})  rows: equity {r['equity']}, "
            f"risk_decisions {r['risk_decisions']}, orders {r['orders']}, fills {r['fills']}, alerts {r['alerts']}"
            f"  restarts {entry['restarts']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--symbols", default="5,500", help="comma-separated symbol counts (default 5,500)")
    p.add_argument("--days", type=int, help="trading days (default 5; --quick 3; --tiny 2)")
    p.add_argument("--speed", type=float, help="simulated seconds per second (default: 3000, 500 from 51 symbols)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--retention-days", type=float, default=1.0, help="every [retention] *_days (default 1)")
    mode.add_argument("--no-retention", action="store_true", help="no [retention] table (steadyhand's defaults, "
                      "or a version from before retention)")
    p.add_argument("--checkpoint-interval-s", type=float, help="[retention] checkpoint_interval_s (default: "
                   "steadyhand's, 300 wall seconds: at x3000 that is 10 simulated days)")
    args = p.parse_args(argv)
    days = args.days or common.size(args, 5, 3, 2)
    retention_days = None if args.no_retention else args.retention_days
    what = "no [retention] table" if retention_days is None else f"retention {retention_days:g} day(s)"
    print(f"disk per simulated trading day; {what}; {common.load_line()}", flush=True)
    runs = [run_once(n, days, args.speed or speed_for(n), retention_days, args.keep, args.checkpoint_interval_s)
            for n in (int(x) for x in args.symbols.split(","))]
    figures = []
    for run in runs:
        growth = [total(b) - total(a) for a, b in zip(run["samples"], run["samples"][1:], strict=False)]
        figure = common.Figure(f"disk_growth_last_day_{run['symbols']}_symbols", "MiB",
                               note=f"x{run['speed']:g}, verify ok={run['verify_ok']}")
        figure.add(growth[-1] / MiB if growth else None)
        figures.append(figure)
    result = common.report("disk per simulated trading day", figures, {"runs": runs})
    common.write_json(args, result)
    return result


if __name__ == "__main__":
    main()
