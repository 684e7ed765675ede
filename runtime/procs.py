"""Processes, ports and the loopback-only patch for Thespian.

Thespian binds every listening socket (admin and each actor) to all interfaces and unpickles
whatever arrives, so anyone who can reach a port runs code as the bot's user. It has no setting
for this; :func:`bind_thespian_to_loopback` patches the one place where the bind address is chosen,
before any actor system starts (DESIGN §1). Child processes are forked and inherit the patch.

Every process of a run carries ``STEADYHAND_RUN_DIR`` in its environment, so the processes of a
run (even orphans of a killed admin) can be found and stopped by data directory alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

# Set only by `steadyhand run` (which re-executes itself with it), never by users: /proc/PID/environ
# shows a process's environment as of its exec, and forked actors inherit it.
RUN_MARKER = "STEADYHAND_RUN_DIR"
LOOPBACK = "127.0.0.1"

_patched = False


def bind_thespian_to_loopback() -> None:
    """Make every Thespian TCP socket listen on 127.0.0.1 only (idempotent)."""
    global _patched
    os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK
    if _patched:
        return
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def loopback_init(self: IPBase.IPActorAddress, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        # Thespian binds "external" addresses to ('', port): every interface. Never here.
        if self.bindname and self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (LOOPBACK, self.bindname[1])

    IPBase.IPActorAddress.__init__ = loopback_init  # type: ignore[method-assign]
    _patched = True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_listening(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def run_marker(data_dir: str | Path) -> str:
    return str(Path(data_dir).resolve())


def run_processes(data_dir: str | Path, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Every live process whose environment marks it as part of the run on ``data_dir``."""
    marker = run_marker(data_dir)
    skip = {os.getpid(), *exclude}
    with contextlib.suppress(psutil.Error):  # never our own ancestors (a test runner, a shell)
        skip.update(p.pid for p in psutil.Process().parents())
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(RUN_MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def terminate(processes: list[psutil.Process], grace_s: float = 3.0) -> list[psutil.Process]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left; returns the survivors."""
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    return still


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.02) -> Any:
    """Poll ``predicate()`` until it returns something truthy (returned) or the deadline passes
    (None). The one deadline poll: tests, drills and benchmarks wrap it with their own failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    wanted = set(pids)
    result = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in wanted and conn.laddr:
            result.append((conn.pid, conn.laddr.ip, conn.laddr.port))
    return result


def pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
