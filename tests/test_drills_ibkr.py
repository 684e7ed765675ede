"""Crash safety through the IBKR adapter: the randomized kill drill with ``broker = "ibkr"`` against the
TWS face of the local exchange, a process of its own (the "Gateway") that stays up while the bot is
killed. Real processes, the real ib_async client, 127.0.0.1 only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import REPO
from steadyhand.runtime import procs


def test_ibkr_random_kills_drill_zero_violations_face_stays_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "ops" / "drills" / "random_kills.py"), "--broker", "ibkr",
                             "--count", "10", "--seed", "20261201", "--data-dir", str(tmp_path), "--json"],
                            capture_output=True, text=True, timeout=240, cwd=REPO)
    totals: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    left = procs.run_processes(tmp_path / "var")
    procs.terminate(left)
    assert not left, f"processes left by the drill: {[p.pid for p in left]}"
    face = totals["exchange"]
    assert not procs.pid_alive(face["pid"]) and not procs.port_listening(face["port"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert totals["broker"] == "ibkr" and totals["kills"] >= 10 and totals["violations"] == 0
    assert face["stayed_up"] and face["checks"] >= totals["kills"] and face["exit_code"] == 0
    assert totals["verify_running"]["ok"] and totals["verify_stopped"]["ok"]
    assert totals["verify_stopped"]["counts"]["broker_fills"] >= 5  # it traded through the TWS API
