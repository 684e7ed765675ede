"""Shared fixtures: a real ``steadyhand run`` process per test, stopped and proven gone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import SIM_START, Bot, pinned_start
from steadyhand.runtime import procs
from thespian.actors import ActorSystem


def pytest_configure(config: pytest.Config) -> None:
    """A bad STEADYHAND_TEST_SIM_START stops the run before any test (see tests/harness.py)."""
    try:
        pinned_start()
    except ValueError as exc:
        raise pytest.UsageError(f"STEADYHAND_TEST_SIM_START={SIM_START!r}: {exc}") from None


def pytest_report_header() -> str:
    """Which simulated day the suite runs on."""
    start = pinned_start()
    return f"simulated start: {SIM_START}" + (f" ({start:%Y-%m-%d %H:%M} UTC)" if start else " (unpinned)")


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    """An in-process actor system (simpleSystemBase) for one test."""
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    yield asys
    asys.shutdown()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def make_bot(data_dir: Path) -> Iterator[Callable[..., Bot]]:
    """Start bots; afterwards prove that no process and no port of theirs is left."""
    bots: list[Bot] = []

    def factory(config: str | None = None, args: tuple[str, ...] = (), **kw: Any) -> Bot:
        bot = Bot(data_dir, config=config, args=args, **kw)
        bots.append(bot)
        return bot

    yield factory
    for bot in bots:
        if bot.proc is not None and bot.proc.poll() is None:
            bot.stop()
    problems = []
    left = procs.run_processes(data_dir)
    if left:
        procs.terminate(left)
        problems.append(f"leftover processes {[p.pid for p in left]}")
    for bot in bots:
        if bot.admin_port and procs.port_listening(bot.admin_port):
            problems.append(f"admin port {bot.admin_port} still listening")
    assert not problems, "; ".join(problems)


