"""Test harness: the CLI as a subprocess, ``steadyhand run`` as a real process group, deadline polls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from steadyhand.runtime import procs

REPO = Path(__file__).resolve().parent.parent

# The one place that decides the simulated day of the suite, so no test depends on the date it
# runs. STEADYHAND_TEST_SIM_START (test-only) moves it, e.g. to a weekend, a holiday or an early
# close; "latest" is no pin: the latest session, as a user's first run on a fresh data dir.
SIM_START = os.environ.get("STEADYHAND_TEST_SIM_START", "").strip() or "2026-11-20"


def start_text() -> str:
    """SIM_START as ``[sim] start`` / ``--start`` takes it ("" when unpinned: the latest session)."""
    return "" if SIM_START == "latest" else SIM_START


def start_args() -> tuple[str, ...]:
    """``--start SIM_START`` for ``steadyhand run`` / ``exchange serve`` / a drill; nothing when unpinned."""
    return ("--start", start_text()) if start_text() else ()


def pinned_start() -> datetime | None:
    """Where the pinned simulated clock starts (the session open SIM_START names); None unpinned."""
    from steadyhand.sim.clock import resolve_start

    return resolve_start(start_text())


def sim_start() -> datetime:
    """Where a new simulated clock starts in this suite: the pinned start, else the latest open."""
    from steadyhand.domain import market_hours

    return pinned_start() or market_hours.previous_open(datetime.now(UTC))


def steadyhand(*args: str, data_dir: Path, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion."""
    return subprocess.run([sys.executable, "-m", "steadyhand.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Call ``predicate`` until it returns something truthy; fail the test at the deadline."""
    value = procs.wait_until(predicate, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
    return value


class Bot:
    """``steadyhand run`` as a real process in its own session (so a drill can kill its group)."""

    def __init__(self, data_dir: Path, config: str | None = None, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.env = {**os.environ, "STEADYHAND_TEST_HOOKS": "1", **(env or {})}
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = data_dir.parent / "steadyhand.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.started = threading.Event()
        self.admin_port = 0

    def start(self, timeout: float = 60, may_die_first: bool = False) -> Bot:
        """Start ``steadyhand run`` and wait for its start banner. ``may_die_first``: a run armed to
        die (a crash point that kills the group) may do so before the banner on a busy machine --
        trading starts while the last children (the dashboard) still come up; then this returns
        with the process gone instead of failing."""
        cmd = [sys.executable, "-m", "steadyhand.cli", "run", "--data-dir", str(self.data_dir), *self.args]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if not self._chooses_its_start():
            cmd += start_args()  # a data dir with a clock already keeps it (and the bot says so)
        self.started.clear()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, start_new_session=True, cwd=REPO)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        ended = (lambda: self.proc is not None and self.proc.poll() is not None) if may_die_first else (lambda: False)
        if not procs.wait_until(lambda: self.started.is_set() or ended(), timeout, 0.05):
            self.kill_group()
            pytest.fail("steadyhand run did not start:\n" + "".join(self.output))
        if not self.started.is_set():
            return self  # died on purpose before its banner (may_die_first)
        self.admin_port = json.loads((self.data_dir / "run.json").read_text())["admin_port"]
        return self

    def _chooses_its_start(self) -> bool:
        """The test gave a start, or replays a file (whose first bar is the start)."""
        if "--start" in self.args or "--replay" in self.args:
            return True
        config = tomllib.loads(self.config_path.read_text()) if self.config_path is not None else {}
        return bool(config.get("sim", {}).get("start") or config.get("sim", {}).get("replay"))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if line.startswith("steadyhand running"):
                self.started.set()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return steadyhand(*args, data_dir=self.data_dir, env=self.env, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        return json.loads(result.stdout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 40) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail("steadyhand run did not stop on its own:\n" + "".join(self.output[-30:]))

    def kill_group(self) -> None:
        """A power cut for the bot: SIGKILL the run's process group and every process of the run
        (Thespian puts its admin and actors in a process group of their own)."""
        from steadyhand.runtime.crashpoints import kill_run

        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_run(self.data_dir)
        self.proc.wait(10)

    def leftovers(self) -> list[Any]:
        return procs.run_processes(self.data_dir)
