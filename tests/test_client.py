"""The CLI's connection never starts anything: no actor system of its own, no supervisor.

Seen once under load: ``steadyhand pause`` with a world-readable secret exited 1 and left three
forked processes. A client that looks the supervisor up by its global name creates one when none
is registered; these tests hold that such a stray refuses the command and exits, and that a bad
secret is refused before Thespian is touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from steadyhand.control import commands
from steadyhand.control.client import connect, write_run_file
from steadyhand.runtime import procs
from thespian.actors import ActorSystem

from tests.harness import poll


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture
def bare_admin(tmp_path: Path) -> Iterator[tuple[Path, set[int]]]:
    """An actor system with no supervisor in it, and a run file that points at it."""
    procs.bind_thespian_to_loopback()
    port = procs.free_port()
    system = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    write_run_file(data_dir, {"pid": os.getpid(), "admin_port": port})
    commands.load_secret(data_dir, create=True)
    try:
        yield data_dir, _descendants()
    finally:
        system.shutdown()
        assert poll(lambda: not _descendants(), timeout=20), f"left behind: {_descendants()}"


def test_a_command_to_a_run_without_supervisor_is_refused_and_leaves_nothing(
        bare_admin: tuple[Path, set[int]]) -> None:
    data_dir, before = bare_admin
    reply = connect(data_dir).command("pause", timeout=30)
    assert not reply.ok
    assert "not running" in (reply.error or "")
    # The supervisor that the global-name lookup created has exited again.
    assert poll(lambda: _descendants() <= before, timeout=20), f"stray: {_descendants() - before}"


def test_a_readable_secret_is_refused_before_connecting(bare_admin: tuple[Path, set[int]]) -> None:
    data_dir, before = bare_admin
    (data_dir / commands.SECRET_FILE).chmod(0o644)
    with pytest.raises(commands.SecretError, match="readable by others"):
        connect(data_dir)
    assert _descendants() == before
