"""Operator commands: signing, checking and the command journal's rules.

A command carries an id, a name, arguments, the time it was issued and who issued it, and an
HMAC-SHA256 over all of those with the operator secret. The secret comes from
``STEADYHAND_OPERATOR_SECRET`` or from ``<data dir>/operator.secret`` (created 0600 at first run; a
file anyone else can read is refused).

What this protects: a command must come from someone who holds the secret, must be fresh
(``MAX_SKEW_S``), and cannot be altered in transit. A repeated command id returns the first result and
does nothing again (so a replayed capture is harmless); an id reused for a different command is
refused. What it does not protect: Thespian itself unpickles whatever reaches its sockets, so the
transport must stay on loopback (it does: see runtime/procs.py) and the machine's other users are trusted
to the extent that they can reach 127.0.0.1.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from steadyhand.actors.messages import OperatorCommand

SECRET_ENV = "STEADYHAND_OPERATOR_SECRET"
SECRET_FILE = "operator.secret"
MAX_SKEW_S = 60.0  # a command older (or further in the future) than this is refused as stale

COMMANDS = ("status", "pause", "resume", "halt", "flatten", "cancel-all", "restart", "reload", "shutdown",
            "ack")


class SecretError(RuntimeError):
    pass


def load_secret(data_dir: str | Path, create: bool = False) -> bytes:
    """The operator secret: the environment first, else the 0600 file (created when asked)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        if not create:
            raise SecretError(f"no operator secret: set {SECRET_ENV} or start steadyhand once to create {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_text().strip().encode()


def _payload(command: OperatorCommand) -> bytes:
    return json.dumps([command.command_id, command.name, command.args, repr(command.issued_at),
                       command.operator], sort_keys=True, separators=(",", ":")).encode()


def sign(command: OperatorCommand, secret: bytes) -> str:
    return hmac.new(secret, _payload(command), hashlib.sha256).hexdigest()


def new_command(name: str, secret: bytes, args: dict[str, Any] | None = None,
                command_id: str | None = None) -> OperatorCommand:
    """A signed command, ready to send."""
    unsigned = OperatorCommand(command_id=command_id or uuid.uuid4().hex, name=name, args=args or {},
                               issued_at=time.time(), operator=f"{getpass.getuser()}@{socket.gethostname()}")
    return OperatorCommand(**{**_fields(unsigned), "signature": sign(unsigned, secret)})


def refusal(command: Any, secret: bytes, now: float | None = None) -> str | None:
    """Why this command must be refused (unsigned, forged, stale, unknown), or None when it is fine."""
    if not isinstance(command, OperatorCommand):
        return "not an operator command"
    if not command.signature:
        return "unsigned command"
    if not hmac.compare_digest(command.signature, sign(command, secret)):
        return "bad signature"
    now = time.time() if now is None else now
    if abs(now - command.issued_at) > MAX_SKEW_S:
        return f"stale command (issued {now - command.issued_at:.0f}s ago)"
    if command.name not in COMMANDS:
        return f"unknown command {command.name!r}"
    return None


def _fields(command: OperatorCommand) -> dict[str, Any]:
    return {"command_id": command.command_id, "name": command.name, "args": command.args,
            "issued_at": command.issued_at, "operator": command.operator, "signature": command.signature}
