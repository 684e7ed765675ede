"""The soak drill, short: three simulated trading days around Thanksgiving 2026 (Wednesday, the
holiday closed, Friday's 13:00 ET early close, the weekend, Monday) with kills of every kind, run as
the operator runs it (``python ops/drills/soak.py``). Every day must pass with no restart that the
drill did not cause, ``verify`` ok, and nothing of the run left afterwards. The long run and its
figures are in BENCHMARKS.md ("Soak"); latency is not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import REPO
from steadyhand.runtime import procs

# This seed's plan: five actor kills (alerter, risk; portfolio, heartbeat; strategy) and, on Monday,
# a power cut and a start with the crash point oms.mid_reconcile:1 armed. No restart of the whole
# bot on the 3.5-hour Friday: at x3000 a start takes simulated hours, and the day must trade.
SEED = "20261136"


def test_soak_three_days_with_kills_no_unplanned_restart_verify_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "ops" / "drills" / "soak.py"), "--days", "3", "--start", "2026-11-25",
         "--nights", "skip", "--speed", "3000", "--kills-per-day", "2", "--seed", SEED, "--max-drift", "0",
         "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    left = procs.run_processes(tmp_path / "var")
    procs.terminate(left)
    assert not left, f"processes left by the soak: {[p.pid for p in left]}"
    soak: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    days = soak["days"]
    assert result.returncode == 0 and soak["ok"], (soak["failures"], result.stderr[-3000:])
    assert [d["date"] for d in days] == ["2026-11-25", "2026-11-27", "2026-11-30"]
    assert [d["hours"] for d in days] == [6.5, 3.5, 6.5]  # Friday closes at 13:00 ET
    assert "after holiday" in days[1]["note"] and "after weekend" in days[2]["note"]
    for day in days:
        assert day["restarts"]["unplanned"] == 0, day["restarts"]["unplanned_rows"]
        assert day["verify_ok"] and day["violations"] == 0
        assert day["latency"]["orders"] > 0 and day["up_at_open"]
        assert {"run", "oms", "feed", "heartbeat"} <= set(day["processes"])
    assert sum(soak["kills"].values()) >= 3 and soak["kills"].get("actor", 0) >= 2
    assert soak["kills"].get("power_cut", 0) >= 1
    assert sum(d["restarts"]["restarted"] for d in days) >= soak["kills"]["actor"]  # each kill restarted
    assert soak["final"]["verify_ok"] and soak["final"]["stop_exit_code"] == 0
