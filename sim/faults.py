"""The sim exchange's fault switch: broker faults switched on and off at run time, by a test, a
drill or an operator, for every process using one ``exchange.db`` (a JSON file next to it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from steadyhand.brokers.base import OrderRejected, TransientBrokerError, UnknownOutcome

FAULTS_FILE = "sim_faults.json"  # next to exchange.db
FAULT_MODES = ("reject", "error", "timeout", "slow", "disconnect")
OPS = ("submit", "cancel", "replace", "get_by_client_id", "fills_for", "open_orders", "positions", "account",
       "clock", "poll")


def faults_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FAULTS_FILE


def set_fault(data_dir: str | Path, mode: str, *, delay_s: float = 0.2, ops: tuple[str, ...] = ()) -> Path:
    """Switch a broker fault on for every process using this exchange (atomic replace).

    ``reject``: every submission is rejected. ``error``: every call fails with a 5xx-style
    TransientBrokerError. ``disconnect``: every call fails as a refused connection (also transient).
    ``timeout``: every call waits ``delay_s`` and raises UnknownOutcome -- submissions and cancels
    *are* carried out first (the reply is what gets lost: the case that breeds duplicate orders).
    ``slow``: every call waits ``delay_s`` and then works. ``ops`` limits it to some calls.
    """
    if mode not in FAULT_MODES:
        raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}, got {mode!r}")
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown broker calls {sorted(unknown)}; known: {', '.join(OPS)}")
    path = faults_path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"mode": mode, "delay_s": delay_s, "ops": list(ops)}))
    os.replace(tmp, path)
    return path


def clear_fault(data_dir: str | Path) -> None:
    faults_path(data_dir).unlink(missing_ok=True)


class FaultSwitch:
    """Reads the faults file when it changes (one ``stat`` per call when nothing changed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._fault: dict[str, object] | None = None

    def current(self) -> dict[str, object] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key = self._fault = None
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:
            self._key = key
            try:
                fault = json.loads(self.path.read_text())
                self._fault = fault if fault.get("mode") in FAULT_MODES else None
            except (OSError, ValueError, AttributeError):
                self._fault = None  # half-written or hand-edited badly: no fault rather than a crash
        return self._fault

    def inject(self, op: str) -> bool:
        """Apply a switched-on fault to the call ``op``; True when the call must end in
        UnknownOutcome after doing its work (a timeout of a submission or cancel)."""
        fault = self.current()
        if fault is None or (fault.get("ops") and op not in fault["ops"]):  # type: ignore[operator]
            return False
        mode = fault["mode"]
        if mode in ("slow", "timeout"):
            time.sleep(float(fault.get("delay_s", 0.2)))  # type: ignore[arg-type]
        if mode == "error":
            raise TransientBrokerError(f"503 service unavailable (simulated fault) on {op}")
        if mode == "disconnect":
            raise TransientBrokerError(f"connection refused (simulated disconnect) on {op}")
        if mode == "reject" and op == "submit":
            raise OrderRejected("simulated fault: the exchange rejects every order")
        if mode == "timeout":
            if op in ("submit", "cancel", "replace"):
                return True
            raise UnknownOutcome(f"timed out (simulated fault) on {op}")
        return False
