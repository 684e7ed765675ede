"""Running the TWS face: in a thread (tests, tools) or as a process of its own (the CLI entry
``python -m steadyhand.sim.server.tws``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steadyhand.config import Settings
from steadyhand.sim.server import tws_wire as w

if TYPE_CHECKING:
    from steadyhand.sim.server.tws import TwsServer

LOOPBACK = "127.0.0.1"
INFO_FILE = "tws.json"  # port, pid and admin port of a running TWS face, in the data dir


class TwsServerThread:
    """Run a :class:`TwsServer` on its own event loop thread; ``start()`` returns once bound."""

    def __init__(self, server: TwsServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="tws-face", daemon=True)

    def start(self, timeout_s: float = 30.0) -> TwsServerThread:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("tws face did not start")
        if self._error is not None:
            raise RuntimeError("tws face failed to start") from self._error
        return self

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def run_coroutine(self, make: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout_s)  # type: ignore[arg-type]

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("tws face thread did not stop")

    def __enter__(self) -> TwsServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m steadyhand.sim.server.tws --port P --data-dir D [--config F]`` until SIGTERM / Ctrl-C.

    Writes ``<data dir>/tws.json`` (port, pid, admin_port: see :mod:`tws_admin`) while it serves,
    as ``exchange serve`` writes ``exchange.json``. Until ``exchange serve --tws-port`` is wired,
    this runs the TWS face as its own process; on the same data dir it shares the book and the
    clock with the Alpaca face.
    """
    import json
    import os
    import signal

    from steadyhand.config import load_settings, with_overrides
    from steadyhand.sim.server.tws import DEFAULT_ACCOUNT, TwsServer
    from steadyhand.sim.server.tws_admin import TwsAdmin

    parser = argparse.ArgumentParser(prog="steadyhand.sim.server.tws", description="the TWS face of the local exchange")
    parser.add_argument("--port", type=int, default=7497)
    parser.add_argument("--data-dir", default="./var")
    parser.add_argument("--config", default=None)
    parser.add_argument("--server-version", type=int, default=w.MAX_VERSION)
    parser.add_argument("--account", default=DEFAULT_ACCOUNT)
    parser.add_argument("--start", help="where a new simulated clock starts (as steadyhand run --start)")
    parser.add_argument("--admin-port", type=int, default=0, help="loopback admin (fault knobs); 0: any free port")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(args.config) if args.config else Settings()
    if args.start:
        settings = with_overrides(settings, start=args.start)
    thread = TwsServerThread(TwsServer(data_dir, settings, port=args.port, server_version=args.server_version,
                                       accounts=(args.account,)))
    thread.start()
    admin = TwsAdmin(thread.server, args.admin_port)
    thread.run_coroutine(admin.start)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    info = data_dir / INFO_FILE
    info.write_text(json.dumps({"port": thread.server.port, "pid": os.getpid(), "admin_port": admin.port}) + "\n")
    print(f"steadyhand exchange (TWS face): serving on {LOOPBACK}:{thread.server.port}, server version "
          f"{args.server_version}, account {thread.server.account}, data dir {data_dir}", flush=True)
    try:
        stop.wait()
    finally:
        info.unlink(missing_ok=True)
        thread.run_coroutine(admin.close)
        thread.stop()
    return 0
