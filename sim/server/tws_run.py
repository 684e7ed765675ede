"""Running the TWS face: in a thread (tests, tools) or as a process of its own (the CLI entry
``python -m steadyhand.sim.server.tws``)."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from steadyhand.config import Settings
from steadyhand.sim.server import tws_wire as w
from steadyhand.sim.server.loop_thread import LoopThread

if TYPE_CHECKING:
    from steadyhand.sim.server.tws import TwsServer

LOOPBACK = "127.0.0.1"
INFO_FILE = "tws.json"  # port, pid and admin port of a running TWS face, in the data dir


class TwsServerThread(LoopThread["TwsServer"]):
    """Run a :class:`TwsServer` on its own event loop thread; ``start()`` returns once bound."""

    what = "tws face"

    def __init__(self, server: TwsServer) -> None:
        super().__init__(server, name="tws-face")

    def start(self, timeout_s: float = 30.0) -> TwsServerThread:
        super().start(timeout_s)
        return self

    def __enter__(self) -> TwsServerThread:
        return self.start()


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
