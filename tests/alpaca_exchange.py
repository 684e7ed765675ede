"""Shared by the Alpaca tests: a local exchange server in a thread, its admin knobs, and waiting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from harness import pinned_start, poll
from steadyhand.config import AlpacaSettings, Settings, SimSettings
from steadyhand.runtime import procs
from steadyhand.sim.clock import anchor_clock
from steadyhand.sim.server import ExchangeServer, ServerThread

KEY, SECRET = "test-key-id", "test-secret-value-4f1c"
T = TypeVar("T")


def start_exchange(
    data_dir: Path,
    *,
    start: datetime | None = None,
    speed: float = 60.0,
    partial_fill_probability: float = 1.0,
    credentials: tuple[str, str] | None = (KEY, SECRET),
    rate_limit_per_minute: int = 0,
) -> ServerThread:
    """A server on 127.0.0.1 (port 0) over ``data_dir/exchange.db``; every order fills in parts.
    The clock starts at ``start``, by default the suite's pinned start (harness.SIM_START)."""
    settings = Settings(sim=SimSettings(partial_fill_probability=partial_fill_probability, speed=speed,
                                        latency_ms=20.0))
    clock = anchor_clock(data_dir / "exchange.db", speed=speed, start=start or pinned_start())
    server = ExchangeServer(data_dir, settings, clock=clock, credentials=credentials,
                            rate_limit_per_minute=rate_limit_per_minute)
    return ServerThread(server).start()


def module_exchange(tmp_path_factory: Any, name: str) -> Iterator[ServerThread]:
    """Body of a module-scoped fixture: one server for the module, proven stopped afterwards."""
    thread = start_exchange(tmp_path_factory.mktemp(name))
    yield thread
    port = thread.server.port
    thread.stop()
    assert not procs.port_listening(port)


def alpaca_settings(thread: ServerThread, **overrides: Any) -> AlpacaSettings:
    """[alpaca] settings pointing at the local server; no client-side throttling unless asked."""
    base = AlpacaSettings(max_requests_per_minute=60_000, timeout_s=5.0, **thread.server.urls)
    return dataclasses.replace(base, **overrides)


def admin(thread: ServerThread, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"http://127.0.0.1:{thread.server.port}/_admin/{path}"
    response = requests.request(method, url, json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def inject(thread: ServerThread, **rule: Any) -> None:
    admin(thread, "POST", "faults", {"rules": [rule]})


def wait_for(predicate: Callable[[], T], timeout_s: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (and return that) or fail."""
    return poll(predicate, timeout_s, interval=0.02, what=what)
