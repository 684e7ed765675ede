"""The CLI's connection to the running system: the run file, and joining the actor system.

``steadyhand run`` writes ``<data dir>/run.json`` (admin port, pid); every other command finds the
running system through it and talks to the supervisor as an external Thespian client. A client
must never start anything: not an actor system of its own (Thespian starts a fresh admin when its
probe finds the port free, e.g. while a run is exiting), and not a supervisor (``createActor`` with a
global name creates one when none is registered). So the admin port is checked first, the client's
probe is told an admin is there (so it only ever joins), and the operator secret is read before
Thespian is touched at all.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadyhand.actors.messages import CommandResult
from steadyhand.runtime import procs

RUN_FILE = "run.json"
ASK_TIMEOUT_S = 5.0


class NotRunning(RuntimeError):
    """No live run on this data dir."""


# --- data dir and run file ---------------------------------------------------------------------


def data_dir_of(args: argparse.Namespace) -> Path:
    given = getattr(args, "data_dir", None) or os.environ.get("STEADYHAND_DATA_DIR") or "./var"
    return Path(given).expanduser().resolve()


def read_run_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_run_file(data_dir: Path, info: dict[str, Any]) -> None:
    tmp = data_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, data_dir / RUN_FILE)


def running_info(data_dir: Path) -> dict[str, Any] | None:
    """run.json of a live run (its process alive and its admin port listening), else None."""
    info = read_run_file(data_dir)
    if not info or not procs.pid_alive(int(info.get("pid", 0))):
        return None
    if not procs.port_listening(int(info["admin_port"])):
        return None
    return info


# --- talking to the running system --------------------------------------------------------------


@dataclass
class Connection:
    system: Any
    supervisor: Any
    data_dir: Path
    secret: bytes = b""

    def ask(self, message: Any, timeout: float = ASK_TIMEOUT_S) -> Any:
        with self.system.private() as ctx:
            return ctx.ask(self.supervisor, message, timeout)

    def command(self, name: str, args: dict[str, Any] | None = None, command_id: str | None = None,
                timeout: float = 30.0) -> CommandResult:
        """Send a signed operator command and wait for its result."""
        from steadyhand.control.commands import load_secret, new_command

        command = new_command(name, self.secret or load_secret(self.data_dir), args, command_id)
        reply = self.ask(command, timeout)
        if not isinstance(reply, CommandResult):
            return CommandResult(command.command_id, False, error=f"no answer from the supervisor in {timeout:g}s")
        return reply


def connect(data_dir: Path) -> Connection:
    """Join the running actor system as an external client (never start one by accident).

    Raises NotRunning, and SecretError (no usable operator secret) before any connection is made.
    """
    from steadyhand.control.commands import load_secret

    info = running_info(data_dir)
    if info is None:
        raise NotRunning(f"steadyhand is not running (data dir {data_dir})")
    secret = load_secret(data_dir)
    procs.bind_thespian_to_loopback()
    from steadyhand.supervisor import SUPERVISOR_NAME, Supervisor
    from thespian.actors import ActorSystem, InvalidActorAddress
    from thespian.system.transport.TCPTransport import TCPTransport

    probe = TCPTransport.__dict__["probeAdmin"]  # the staticmethod itself, to put back as it was
    TCPTransport.probeAdmin = staticmethod(lambda addr: True)  # join only: never start an admin
    try:
        system = ActorSystem("multiprocTCPBase", {"Admin Port": int(info["admin_port"])},
                             logDefs=quiet_logging(), transientUnique=True)
    except InvalidActorAddress as exc:
        raise NotRunning(f"steadyhand is not running (data dir {data_dir}): no actor system answers") from exc
    finally:
        TCPTransport.probeAdmin = probe
    # If the run's supervisor is gone this creates an unstarted one; it refuses the first command
    # and exits (Supervisor.on_command_unstarted), so nothing is left behind.
    supervisor = system.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    return Connection(system, supervisor, data_dir, secret)


def quiet_logging() -> dict[str, Any]:
    return {"version": 1, "disable_existing_loggers": False,
            "handlers": {"null": {"class": "logging.NullHandler"}},
            "root": {"level": "WARNING", "handlers": ["null"]}}
