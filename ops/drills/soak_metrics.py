"""What the soak drill measures, per simulated day: processes (RSS, open files, CPU), disk, the
supervisor's restarts journal and bar -> ack latency; and the table it prints.

Read-only on the run's data dir: everything here could run beside a production bot.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from drill import actor_pids, query
from steadyhand.runtime import procs
from steadyhand.sim.clock import SimClock

MIB = 2**20
_PID_IN_DETAIL = re.compile(r"pid (\d+)")


# --- processes --------------------------------------------------------------------------------


def processes_by_role(data_dir: Path, run_pid: int | None,
                      exchange_pid: int | None = None) -> dict[str, psutil.Process]:
    """Every process of the run, named: ``run`` (``steadyhand run``), each actor by name, the
    ``supervisor`` (the actors' parent), Thespian's ``admin`` (the supervisor's parent) and its
    ``logger`` (the admin's other child); ``exchange`` with Alpaca. Anything else: ``other:<pid>``."""
    actors = {pid: name for name, pid in actor_pids(data_dir).items()}
    found: dict[int, psutil.Process] = {p.pid: p for p in procs.run_processes(data_dir)}
    parent: dict[int, int] = {}
    for pid, proc in found.items():
        with contextlib.suppress(psutil.Error):
            parent[pid] = proc.ppid()
    supervisor = next((parent[p] for p in actors if p in parent and parent[p] not in actors), None)
    admin = parent.get(supervisor) if supervisor is not None else None
    named: dict[str, psutil.Process] = {}
    for pid, proc in found.items():
        if pid == run_pid:
            role = "run"
        elif pid in actors:
            role = actors[pid]
        elif pid == supervisor:
            role = "supervisor"
        elif pid == admin:
            role = "admin"
        elif admin is not None and parent.get(pid) == admin:
            role = "logger"
        else:
            role = f"other:{pid}"
        named[role] = proc
    if exchange_pid is not None:
        with contextlib.suppress(psutil.Error):
            named["exchange"] = psutil.Process(exchange_pid)
    return named


@dataclass
class CpuMeter:
    """CPU seconds used by the run's processes, summed over samples: a process that is killed
    loses at most the time since its last sample, a new one counts from its start."""

    seen: dict[int, float] = field(default_factory=dict)
    total_s: float = 0.0

    def sample(self, processes: dict[str, psutil.Process]) -> None:
        for proc in processes.values():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                used = t.user + t.system
                self.total_s += max(0.0, used - self.seen.get(proc.pid, 0.0))
                self.seen[proc.pid] = used


def snapshot(processes: dict[str, psutil.Process]) -> dict[str, dict[str, float]]:
    """RSS (MiB) and open file descriptors of each process right now."""
    out: dict[str, dict[str, float]] = {}
    for role, proc in sorted(processes.items()):
        with contextlib.suppress(psutil.Error):
            out[role] = {"rss_mib": round(proc.memory_info().rss / MIB, 1), "fds": proc.num_fds()}
    return out


# --- disk ---------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def disk(data_dir: Path) -> dict[str, float]:
    """MiB of steadyhand.db and exchange.db (each with its -wal and -shm) and of logs/."""
    def db(name: str) -> float:
        return sum(_size(data_dir / f"{name}{suffix}") for suffix in ("", "-wal", "-shm")) / MIB

    logs = sum(_size(p) for p in (data_dir / "logs").glob("*") if p.is_file()) / MIB
    return {"steadyhand_db_mib": round(db("steadyhand.db"), 2),
            "steadyhand_wal_mib": round(_size(data_dir / "steadyhand.db-wal") / MIB, 2),
            "exchange_db_mib": round(db("exchange.db"), 2),
            "exchange_wal_mib": round(_size(data_dir / "exchange.db-wal") / MIB, 2),
            "logs_mib": round(logs, 2)}


# --- the supervisor's journal ---------------------------------------------------------------------


def restarts_since(data_dir: Path, after_id: int, victims: set[int], clock: SimClock) -> dict[str, Any]:
    """The supervisor's journal since row ``after_id``: restarts, and those no kill of the drill
    caused (an exit, or an "unresponsive" kill by the heartbeat, of a pid the drill did not kill;
    an escalation). Each unplanned row gets its simulated time (``clock``: the day's anchor)."""
    rows = query(data_dir, "SELECT id, ts, actor, event, detail FROM restarts WHERE id > ? ORDER BY id", (after_id,))
    events = Counter(r[3] for r in rows)
    unplanned = []
    for _id, ts, actor, event, detail in rows:
        match = _PID_IN_DETAIL.search(detail or "")
        pid = int(match.group(1)) if match else 0
        caused = pid in victims or "operator restart" in (detail or "")
        if event == "escalated" or (event in ("exited", "unresponsive") and not caused):
            sim = clock.at_real(datetime.fromisoformat(ts).timestamp())
            unplanned.append({"ts": ts, "sim": f"{sim:%Y-%m-%d %H:%M:%S}Z", "actor": actor, "event": event,
                              "detail": detail})
    exits = [u for u in unplanned if u["event"] != "unresponsive"]
    alone = [u for u in unplanned if u["event"] == "unresponsive" and not _exit_follows(u, exits)]
    return {"restarted": events.get("restarted", 0), "exited": events.get("exited", 0),
            "unresponsive": events.get("unresponsive", 0), "escalated": events.get("escalated", 0),
            "unplanned": len(exits) + len(alone), "unplanned_rows": unplanned,
            "last_id": max((int(r[0]) for r in rows), default=after_id)}


def _exit_follows(unresponsive: dict[str, Any], exits: list[dict[str, Any]]) -> bool:
    """An "unresponsive" kill is followed by the victim's exit: count the pair once."""
    pid = _PID_IN_DETAIL.search(unresponsive["detail"] or "")
    return bool(pid) and any(e["actor"] == unresponsive["actor"] and pid.group(0) in (e["detail"] or "")
                             for e in exits)


# --- bar -> ack -----------------------------------------------------------------------------------


@dataclass
class LatencyReader:
    """The OMS's ``order_submitted`` events, read on from where the last call stopped, grouped by
    the simulated date of the bar the order came from (its client order id carries the bar time:
    ``sma-SPY-20261116T1431Z-B0``)."""

    log_dir: Path
    offsets: dict[str, int] = field(default_factory=dict)
    by_day: dict[str, list[float]] = field(default_factory=dict)

    def read(self) -> None:
        path = self.log_dir / "oms.jsonl"
        offset = self.offsets.get("oms", 0)
        with contextlib.suppress(OSError):
            if path.stat().st_size < offset:  # rotated since the last read: finish the old file first
                self._read_from(self.log_dir / "oms.jsonl.1", offset)
                offset = 0
            self.offsets["oms"] = offset + self._read_from(path, offset)

    def _read_from(self, path: Path, offset: int) -> int:
        """Take the complete lines of ``path`` from ``offset``; how many bytes that was."""
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return 0
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        for line in complete.splitlines():
            self._take(line)
        return len(complete)

    def _take(self, line: bytes) -> None:
        if b"order_submitted" not in line:
            return
        try:
            entry = json.loads(line)
        except ValueError:
            return
        ms = entry.get("bar_to_ack_ms")
        parts = str(entry.get("client_order_id", "")).split("-")
        if entry.get("event") != "order_submitted" or ms is None or len(parts) < 3 or len(parts[2]) < 8:
            return
        day = f"{parts[2][:4]}-{parts[2][4:6]}-{parts[2][6:8]}"
        self.by_day.setdefault(day, []).append(float(ms))

    def day(self, date: str) -> dict[str, Any]:
        values = self.by_day.get(date, [])
        return {"orders": len(values), "p50_ms": round(statistics.median(values), 2) if values else None,
                "p99_ms": round(sorted(values)[int(0.99 * (len(values) - 1))], 2) if values else None}


# --- the table ------------------------------------------------------------------------------------

COLUMNS = ("day", "date", "hours", "kills", "restarts", "unplanned", "verify", "orders", "p50 ms",
           "rss MiB", "max rss", "fds", "cpu %", "sh.db MiB", "ex.db MiB", "logs MiB")


def row(day: dict[str, Any]) -> list[str]:
    kills = day["kills"]
    procs_now = day["processes"]
    rss = [p["rss_mib"] for p in procs_now.values()]
    top = max(procs_now.items(), key=lambda kv: kv[1]["rss_mib"], default=("-", {"rss_mib": 0}))
    return [str(day["day"]), day["date"] + (f" ({day['note']})" if day.get("note") else ""),
            f"{day['hours']:g}", f"{sum(kills.values())} ({kills.get('actor', 0)}a {kills.get('power_cut', 0)}p "
            f"{kills.get('crash_point', 0)}c)", str(day["restarts"]["restarted"]), str(day["restarts"]["unplanned"]),
            "ok" if day["verify_ok"] else "FAIL", str(day["latency"]["orders"]),
            "-" if day["latency"]["p50_ms"] is None else f"{day['latency']['p50_ms']:.2f}",
            f"{sum(rss):.0f}", f"{top[1]['rss_mib']:.0f} {top[0]}", str(sum(int(p["fds"]) for p in procs_now.values())),
            f"{day['cpu_pct']:.0f}", f"{day['disk']['steadyhand_db_mib']:.2f}", f"{day['disk']['exchange_db_mib']:.2f}",
            f"{day['disk']['logs_mib']:.2f}"]


def table(days: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per simulated day (pasted as is into BENCHMARKS.md)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(d)) + " |" for d in days]
    return "\n".join(lines)
