"""Named crash points: a test or drill makes a process die at an exact place in the order path.

``STEADYHAND_CRASH_AT="name:N"`` makes the process that reaches ``crash_point("name")`` for the Nth
time die on the spot with ``os._exit`` (no cleanup, no flush: as close to SIGKILL as Python gets);
``"name:N:group"`` SIGKILLs every process of the run instead (a power cut at that point): the
``steadyhand run`` process, Thespian's admin and every actor -- found by their run marker, since
Thespian puts its admin and actors in a process group of their own.

A point fires once per run directory, not once per process: the actors inherit the variable, and a
restarted OMS would otherwise die again at its own Nth hit, crash-loop and halt the bot. Before it
dies, the firing process creates ``crashpoint.fired`` in the run's data directory (atomically,
``O_EXCL``); while that file exists the point is disarmed everywhere. A drill re-arms by deleting it.

Zero cost when off: the variable is parsed once at import; ``crash_point`` is then one global
lookup and a comparison.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

ENV = "STEADYHAND_CRASH_AT"
FIRED_FILE = "crashpoint.fired"
EXIT_CODE = 86  # recognisable in logs: "died at a crash point"

# Every point in the code, so drills can pick one at random and tests can check coverage.
POINTS: tuple[str, ...] = (
    "oms.after_journal",  # PENDING_SUBMIT committed, the broker not asked yet
    "oms.after_submit",  # the broker accepted it, the ack not journaled yet
    "oms.after_fill_received",  # fills polled from the broker, not journaled yet
    "oms.mid_reconcile",  # between two orders of a reconciliation
    "oms.mid_cancel_all",  # between two cancels of a cancel-all
    "oms.after_replace_journal",  # a replace intent committed, the broker not asked yet
    "oms.after_replace",  # the broker replaced the order, the result not journaled yet
)


def _parse(spec: str) -> tuple[str | None, int, bool]:
    if not spec:
        return None, 0, False
    parts = spec.split(":")
    name = parts[0]
    count = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    group = len(parts) > 2 and parts[2] == "group"
    if name not in POINTS or count < 1:
        raise ValueError(f"{ENV}={spec!r}: expected 'name:N[:group]' with name one of {', '.join(POINTS)}")
    return name, count, group


_ARMED, _AT, _GROUP = _parse(os.environ.get(ENV, ""))
_hits = 0


def crash_point(name: str) -> None:
    """Die here if this is the armed point's Nth hit in this process (and it has not fired yet)."""
    if _ARMED is None or name != _ARMED:
        return
    global _hits
    _hits += 1
    if _hits == _AT and _claim():
        if _GROUP:
            _power_cut()
        os._exit(EXIT_CODE)


def _power_cut() -> None:
    run_dir = os.environ.get("STEADYHAND_RUN_DIR")
    if run_dir:
        kill_run(run_dir)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_run(run_dir: str | Path) -> int:
    """SIGKILL every process of the run on ``run_dir`` but the caller; how many were killed.

    Everyone is frozen first (SIGSTOP), until no new process appears -- a supervisor still running
    would restart the actors being killed -- then all are killed at once. Used by the ``:group``
    crash points and by the drills for a power cut."""
    import psutil
    from steadyhand.runtime import procs

    marker = procs.run_marker(run_dir)
    # run_processes leaves out its caller's ancestors (for us: Thespian's admin, the supervisor)
    ancestors = {p.pid for p in psutil.Process().parents() if _environ(p).get(procs.RUN_MARKER) == marker}
    frozen: set[int] = set()
    for _ in range(10):
        new = ({p.pid for p in procs.run_processes(run_dir)} | ancestors) - frozen
        if not new:
            break
        for pid in new:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(frozen)


def _environ(process: object) -> dict[str, str]:
    try:
        return process.environ()  # type: ignore[attr-defined,no-any-return]
    except Exception:  # gone, or not ours to read
        return {}


def fired_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FIRED_FILE


def _claim() -> bool:
    """True for the one process that gets to fire (creates the marker file first)."""
    run_dir = os.environ.get("STEADYHAND_RUN_DIR")  # set by `steadyhand run` for all its processes
    if not run_dir:
        return True
    try:
        fd = os.open(fired_path(run_dir), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{_ARMED}:{_AT} pid {os.getpid()}\n".encode())
    os.fsync(fd)  # the drill must see it even though we die right after
    os.close(fd)
    return True
