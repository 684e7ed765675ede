"""What every drill needs: ``steadyhand run`` as a real process, its state, kills, and verify.

Drills are scripts (``python ops/drills/<name>.py``) an operator can run by hand and CI runs through
``tests/test_drills.py``; each prints what it did and exits non-zero when an invariant broke.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steadyhand.runtime import crashpoints, procs

START_TIMEOUT_S = 60.0
START_HELP = ("where a new data dir's simulated clock starts (steadyhand run --start): YYYY-MM-DD or an ISO "
              "timestamp; default the latest session's open")


def start_args(start: str) -> list[str]:
    """``--start`` for ``steadyhand run`` / ``exchange serve``, when a drill was given one."""
    return ["--start", start] if start else []


class DrillError(RuntimeError):
    pass


class Run:
    """One ``steadyhand run`` process in a session of its own."""

    def __init__(self, data_dir: Path, args: list[str], env: dict[str, str] | None = None,
                 may_die: bool = False) -> None:
        """Start it and wait until it is running. ``may_die``: a crash point armed with ``:group``
        may kill the whole run while it starts; then return with the run dead (``alive`` False)."""
        self.data_dir = data_dir
        cmd = [sys.executable, "-m", "steadyhand.cli", "run", "--data-dir", str(data_dir), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.output: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.started.wait(0.2):
            if self.proc.poll() is not None:  # dead before it was running: not worth a minute's wait
                if may_die:
                    return
                raise DrillError(f"steadyhand run exited with {self.proc.returncode} before it was running:\n"
                                 + "".join(self.output[-20:]))
            if time.monotonic() > deadline:
                self.power_cut()
                raise DrillError("steadyhand run did not start:\n" + "".join(self.output[-20:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("steadyhand running"):
                self.started.set()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def power_cut(self) -> None:
        """SIGKILL every process of the run at once (admin, actors and the run command). A process
        still there 10 s later (seen once in a 1,000-kill drill on a machine at load 10) is named
        on stderr and killed once more: the drill goes on, and the operator knows."""
        crashpoints.kill_run(self.data_dir)
        self.proc.wait(10)
        if procs.wait_until(lambda: not procs.run_processes(self.data_dir), 10):
            return
        left = procs.run_processes(self.data_dir)
        print(f"power cut: still there after 10 s: {[_describe(p) for p in left]}; killing again",
              file=sys.stderr, flush=True)
        crashpoints.kill_run(self.data_dir)
        wait_for(lambda: not procs.run_processes(self.data_dir), 10, "the killed run's processes gone")

    def stop(self, timeout: float = 40.0) -> int:
        """SIGINT, as Ctrl-C: the graceful stop."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise DrillError("steadyhand run did not stop on SIGINT:\n" + "".join(self.output[-20:])) from None


def _describe(process: Any) -> str:
    try:
        return (f"pid {process.pid} {process.status()} ppid {process.ppid()} "
                f"age {time.time() - process.create_time():.1f}s")
    except Exception:  # gone meanwhile
        return f"pid {process.pid} (gone)"


class Exchange:
    """``steadyhand exchange serve`` as a process of its own (its own session, no run marker) on the
    drill's data dir: a local Alpaca-compatible broker that outlives every kill of the bot. Sharing
    the data dir (and the ``[sim] speed``) shares the simulated clock anchored in ``exchange.db``."""

    INFO_FILE = "exchange.json"

    def command(self, data_dir: Path, config: Path, start: str) -> list[str]:
        return [sys.executable, "-m", "steadyhand.cli", "exchange", "serve", "--port", "0",
                "--data-dir", str(data_dir), "--config", str(config), *start_args(start)]

    def __init__(self, data_dir: Path, config: Path, start: str = "") -> None:
        self.data_dir = data_dir
        self.info_file = data_dir / self.INFO_FILE
        self.info_file.unlink(missing_ok=True)  # a killed earlier server's: not this one's
        env = {k: v for k, v in os.environ.items() if k != procs.RUN_MARKER}  # not part of the bot's run
        cmd = self.command(data_dir, config, start)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.info: dict[str, Any] = wait_for(self._served, START_TIMEOUT_S, "the exchange to serve")
        except DrillError:
            self.kill()
            raise DrillError("steadyhand exchange serve did not start:\n" + "".join(self.output[-20:])) from None
        self.pid, self.port = self.proc.pid, int(self.info["port"])
        self.urls = {k: v for k, v in self.info.items() if k.endswith("_url")}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def _served(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise DrillError("steadyhand exchange serve exited:\n" + "".join(self.output[-20:]))
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == self.proc.pid else None

    @property
    def up(self) -> bool:
        """The same process still running and its port still accepting connections."""
        return self.proc.poll() is None and procs.port_listening(self.port)

    def requests(self) -> dict[str, int]:
        """The API requests it has served, by method and path (its loopback admin status)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_admin/status", timeout=5) as reply:
                served = json.loads(reply.read())["requests"]
        except (OSError, ValueError, KeyError):
            return {}
        by_path: Counter[str] = Counter()
        for what, n in served.items():  # one line for every order id: /v2/orders/{id}
            by_path[re.sub(r"/v2/orders/[0-9a-f-]{36}$", "/v2/orders/{id}", what)] += n
        return dict(by_path)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as an operator's Ctrl-C; then prove the process and its port gone."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DrillError("steadyhand exchange serve did not stop on SIGTERM") from None
        wait_for(lambda: not procs.port_listening(self.port), 10, f"the exchange's port {self.port} closed")
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class TwsFace(Exchange):
    """The TWS face of the local exchange (``python -m steadyhand.sim.server.tws``) as a process of
    its own, like :class:`Exchange`: the "Gateway" that outlives every kill of the bot (issue 12)."""

    INFO_FILE = "tws.json"

    def command(self, data_dir: Path, config: Path, start: str) -> list[str]:
        return [sys.executable, "-m", "steadyhand.sim.server.tws", "--port", "0", "--data-dir", str(data_dir),
                "--config", str(config), *start_args(start)]

    def requests(self) -> dict[str, int]:
        return {}  # the socket protocol has no request log to report


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    value = procs.wait_until(predicate, timeout, interval)
    if not value:
        raise DrillError(f"timed out after {timeout}s waiting for {what}")
    return value


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = data_dir / "steadyhand.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # no schema yet
    finally:
        db.close()


def report_count(data_dir: Path) -> int:
    rows = query(data_dir, "SELECT count(*) FROM reconciliations")
    return int(rows[0][0]) if rows else 0


def actor_pids(data_dir: Path) -> dict[str, int]:
    return {name: pid for name, pid in query(data_dir, "SELECT name, pid FROM actors WHERE alive = 1 AND pid > 0")}


def verify_now(data_dir: Path, config: Path | None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``steadyhand verify --json`` as an operator runs it."""
    cmd = [sys.executable, "-m", "steadyhand.cli", "verify", "--json", "--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    try:
        checked = json.loads(result.stdout)
    except ValueError:
        raise DrillError(f"verify failed: {result.stderr.strip()}") from None
    if checked["ok"] != (result.returncode == 0):
        raise DrillError(f"verify exit code {result.returncode} disagrees with ok={checked['ok']}")
    return checked


VIOLATION_KEYS = ("duplicate_submissions", "lost_fills", "unknown_open_orders", "stale_open_orders",
                  "position_mismatches")


def violations(checked: dict[str, Any]) -> int:
    return sum(len(checked[key]) for key in VIOLATION_KEYS)


def leftovers(data_dir: Path) -> list[int]:
    return [p.pid for p in procs.run_processes(data_dir)]


def fired_pid(data_dir: Path) -> int | None:
    """The pid a crash point fired in (``crashpoint.fired`` reads ``name:N pid P``). The file is
    created first and written just after: a look in between sees it empty, so wait a moment."""
    def read() -> int | None:
        try:
            text = crashpoints.fired_path(data_dir).read_text()
        except OSError:
            return None
        return int(text.rsplit("pid ", 1)[1].split()[0]) if "pid " in text and text.endswith("\n") else None

    return procs.wait_until(read, 2.0)


class RecoveryWatch:
    """How long each kill took to recover from, watched by a thread (every 20 ms) so the drill's
    rhythm -- and its kills during a recovery -- stay as they are:

    - an actor killed: from the SIGKILL to its replacement ready (a new live pid in ``actors``);
    - a run started after a power cut: from the spawn to that run's first reconciliation.

    A recovery cut short by the next power cut is counted as ``interrupted``, not timed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.times: dict[str, list[float]] = {"actor": [], "restart": []}
        self.interrupted = 0
        self._pending: list[tuple[str, float, Callable[[], bool]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def actor_killed(self, name: str, pid: int) -> None:
        def back() -> bool:
            new = actor_pids(self.data_dir).get(name)
            return bool(new and new != pid and procs.pid_alive(new))

        self._add("actor", back)

    def run_started(self, spawned: float, reports_before: int) -> None:
        self._add("restart", lambda: report_count(self.data_dir) > reports_before, spawned)

    def power_cut(self) -> None:
        with self._lock:
            self.interrupted += len(self._pending)
            self._pending.clear()

    def _add(self, kind: str, done: Callable[[], bool], since: float | None = None) -> None:
        with self._lock:
            self._pending.append((kind, time.monotonic() if since is None else since, done))

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                pending = list(self._pending)
            for entry in pending:
                kind, since, done = entry
                if done():
                    with self._lock:
                        if entry in self._pending:
                            self._pending.remove(entry)
                            self.times[kind].append(time.monotonic() - since)

    def close(self) -> dict[str, Any]:
        """Stop watching; the distribution of each kind (seconds)."""
        self._stop.set()
        self._thread.join(5)
        return {"interrupted": self.interrupted + len(self._pending),
                **{kind: distribution(values) for kind, values in self.times.items()}}


def distribution(values: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max (seconds, 3 decimals) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3)}
