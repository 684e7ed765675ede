"""``steadyhand exchange serve``: a local Alpaca-compatible paper exchange on the simulated exchange.

One process on 127.0.0.1, one port, four faces (point alpaca-py's ``url_override``s at them):

===================  =================================  =========================================
face                 URL                                what
===================  =================================  =========================================
trading REST         ``http://127.0.0.1:PORT``          ``/v2/account``, ``/v2/orders`` ...
market-data REST     ``http://127.0.0.1:PORT``          ``/v2/stocks/bars``
trade updates        ``ws://127.0.0.1:PORT/stream``     JSON in binary frames, as Alpaca paper
market data stream   ``ws://127.0.0.1:PORT/v2/iex``     msgpack; also ``/v2/sip``, ``/v2/test``
===================  =================================  =========================================

A Starlette app served by uvicorn (HTTP/1.1 and websockets on the same port). This module is the
process: the app, the book it serves, credentials, the rate limit, the test knobs, and the runners
(a thread for tests and tools, ``cmd_serve`` for the CLI); :mod:`.alpaca` is the Alpaca face.

The book is the :class:`~steadyhand.sim.exchange.SimExchange` in ``<data dir>/exchange.db`` with the
clock anchored there, so the exchange outlives the bot like a real broker, and a bot run with the
same data directory shares its simulated clock. All SimExchange work happens on one worker thread
(SQLite connections belong to their thread); the event loop only moves bytes. A poller on that
thread drives matching every ``poll_interval_s`` and turns the book's change log into trade
updates (``new``, ``partial_fill``, ``fill``, ``canceled``, ``expired``, ``rejected``).

Authentication: the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers (and the streams' auth
messages) must match ``STEADYHAND_EXCHANGE_API_KEY`` / ``STEADYHAND_EXCHANGE_SECRET_KEY`` when those
are set; when they are not, any non-empty pair is accepted (it is a local paper exchange). Like
Alpaca it allows 200 requests a minute per key (HTTP 429 beyond; ``rate_limit_per_minute``).

Test knobs, loopback only (the whole server is), no authentication:

- ``POST /_admin/faults`` ``{"rules": [{"method": "POST", "path": "/v2/orders", "status": 503,
  "count": 2, "delay_s": 0, "after": false, "reject": ""}]}``: the next ``count`` matching requests
  get ``status`` (429, 500, 503 ...) and/or are delayed ``delay_s``; with ``after`` the request is
  processed first (an order that landed although the client saw an error or a timeout); ``reject``
  accepts an order and then rejects it on the trade-updates stream. ``DELETE /_admin/faults`` clears.
- ``POST /_admin/drop_streams`` ``{"which": "trade" | "data" | "all"}``: abort those websocket
  connections (no close handshake, as a network failure would).
- ``GET /_admin/status``: connections, pending faults, request counts, the simulated now.

Not implemented (404): assets, watchlists, portfolio history, crypto and options.
Server-side rejections (the ``reject`` knob) live in memory only and are gone after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from steadyhand.config import Settings
from steadyhand.sim.clock import NowSource, anchor_run_clock, start_of
from steadyhand.sim.exchange import SimExchange, open_sim_exchange
from steadyhand.sim.market import MarketModel, load_market
from steadyhand.sim.server import alpaca, alpaca_streams
from steadyhand.sim.server.loop_thread import LoopThread

log = logging.getLogger("steadyhand.exchange")

LOOPBACK = "127.0.0.1"
KEY_ENV, SECRET_ENV = "STEADYHAND_EXCHANGE_API_KEY", "STEADYHAND_EXCHANGE_SECRET_KEY"
INFO_FILE = "exchange.json"  # port and pid of a running server, in the data dir
_STARTUP_TIMEOUT_S = 30.0
# An idle keep-alive connection stays open this long: alpaca-py (requests) reuses its connection,
# and a server-side close racing a new request would look to the client like a lost order.
_KEEP_ALIVE_S = 3600


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One injected fault (see the module docstring)."""

    method: str = "*"
    path: str = ""  # prefix of the request path
    status: int = 0
    delay_s: float = 0.0
    after: bool = False
    reject: str = ""

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and path.startswith(self.path)


def vars_of(rule: FaultRule) -> dict[str, Any]:
    return {f.name: getattr(rule, f.name) for f in fields(FaultRule)}


class _SpuriousHandshakeError(logging.Filter):
    """Drops the error uvicorn's websockets-sansio protocol logs after every websocket *denial*
    (our 404 for an unknown stream path), although the client got the 404 intact: it forgets to
    mark the handshake done (upstream: Kludex/uvicorn pull request 3138). Our stream handlers always
    accept or deny, so the message means nothing else here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _SpuriousHandshakeError) for f in logger.filters):
        logger.addFilter(_SpuriousHandshakeError())


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: our runners own SIGINT/SIGTERM (uvicorn would
    re-raise the signal after its shutdown, so ``exchange serve`` could not exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ExchangeServer:
    """The local Alpaca-compatible exchange. ``await start()`` binds; ``await close()`` stops it.

    ``clock`` defaults to the one anchored in ``exchange.db`` from ``settings.sim``; tests pass their
    own (e.g. anchored just before a close). ``credentials`` is ``(key, secret)`` or None for "any
    non-empty pair".
    """

    def __init__(
        self,
        data_dir: str | Path,
        settings: Settings,
        *,
        port: int = 0,
        clock: NowSource | None = None,
        credentials: tuple[str, str] | None = None,
        rate_limit_per_minute: int = 200,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.symbols = tuple(dict.fromkeys((*settings.symbols, *settings.alpaca.symbols)))
        self.requested_port = port
        self.port = 0
        self.credentials = credentials
        self.rate_limit_per_minute = rate_limit_per_minute
        self.poll_interval_s = poll_interval_s
        self.db_path = self.data_dir / "exchange.db"
        self.clock: NowSource = clock if clock is not None else _anchor(self.db_path, settings)
        self.market: MarketModel = load_market(settings.sim, self.symbols)
        self.faults: list[list[Any]] = []  # [rule, remaining count]
        self.request_counts: Counter[str] = Counter()
        self.sessions: set[alpaca_streams.StreamSession] = set()
        self.started_sim: datetime | None = None  # the simulated time this server started at
        self.alpaca = alpaca.AlpacaFace(self)
        self.app = self._build_app()
        self._hits: dict[tuple[str, str], deque[float]] = {}  # (key, api) -> request times
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-sim")
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sim: SimExchange | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        base = f"http://{LOOPBACK}:{self.port}"
        return {"trading_url": base, "data_url": base, "trading_stream_url": f"ws://{LOOPBACK}:{self.port}"
                f"{alpaca_streams.TRADE_STREAM_PATH}", "data_stream_url": f"ws://{LOOPBACK}:{self.port}/v2/iex"}

    async def start(self) -> None:
        """Open the book, bind 127.0.0.1, serve; returns once requests are answered. On failure
        (the port is taken ...) nothing is left open and the error is raised."""
        await self.call(self._open)
        try:
            sock = _bind(self.requested_port)
        except OSError:
            await self._abandon()
            raise
        self.port = int(sock.getsockname()[1])
        # httptools (C) rather than h11 (pure Python) parses HTTP: 0.2 instead of 0.45 ms of server CPU
        # a request (bench_exchange; the hand-written server took 0.14). No permessage-deflate (the
        # hand-written server had none): small frames on loopback, compressing them only costs CPU.
        self._uvicorn = _Uvicorn(uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
            http="httptools", ws="websockets-sansio", ws_max_size=2**20, ws_per_message_deflate=False,
            server_header=False, proxy_headers=False, timeout_keep_alive=_KEEP_ALIVE_S,
            timeout_graceful_shutdown=5))
        _quiet_uvicorn()
        serving = self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not self._uvicorn.started:
            if serving.done() or time.monotonic() > deadline:
                serving.cancel()
                sock.close()
                await self._abandon()
                error = serving.exception() if serving.done() and not serving.cancelled() else "timed out"
                raise OSError(f"the web server did not start: {error}")
            await asyncio.sleep(0.005)
        self._tasks = self.alpaca.start_background()

    async def _abandon(self) -> None:
        await self.call(self._close_sim)
        self._executor.shutdown(wait=True)

    async def wait_stopped(self) -> None:
        """Until the web server stops of its own accord (it does not, unless something broke)."""
        if self._serving is not None:
            await asyncio.shield(self._serving)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        for session in list(self.sessions):
            await session.close(1001)  # "going away", before uvicorn says "restart" (1012)
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                await self._serving
            except (Exception, SystemExit):  # noqa: BLE001 - stopping anyway; uvicorn logged it
                pass
        await self.call(self._close_sim)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self._sim = open_sim_exchange(self.settings, self.data_dir, self.clock, market=self.market)
        self.started_sim = self.clock.now()
        self.alpaca.opened()

    def _close_sim(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the one thread that owns the book."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def sim(self) -> SimExchange:
        assert self._sim is not None, "server not started"
        return self._sim

    # --- the app ------------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        admin = [
            Route("/_admin/faults", alpaca.endpoint(self._add_faults), methods=["POST"]),
            Route("/_admin/faults", alpaca.endpoint(self._clear_faults), methods=["DELETE"]),
            Route("/_admin/drop_streams", alpaca.endpoint(self._drop_streams), methods=["POST"]),
            Route("/_admin/status", alpaca.endpoint(self._status), methods=["GET"]),
        ]
        app = Starlette(routes=[*admin, *self.alpaca.routes()],
                        middleware=[Middleware(alpaca.AlpacaGate, face=self.alpaca)],
                        exception_handlers={HTTPException: self._no_route})
        app.router.redirect_slashes = False  # "/v2/orders/" is not found, as before (no 307)
        return app

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        """The router's 404 / 405 in Alpaca's error shape."""
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/_admin/"):
            return alpaca.json_response(404, alpaca.error_body(404, "no such admin endpoint"))
        message = f"method {request.method} not allowed" if exc.status_code == 405 else "endpoint not found"
        return alpaca.json_response(exc.status_code, alpaca.error_body(exc.status_code, message))

    # --- credentials and the rate limit ---------------------------------------------------------------

    def authorized(self, key: str, secret: str) -> bool:
        if self.credentials is None:
            return bool(key) and bool(secret)
        want_key, want_secret = self.credentials
        # Both comparisons always run: no early exit that would time which half was wrong.
        ok_key = hmac.compare_digest(key.encode(), want_key.encode())
        ok_secret = hmac.compare_digest(secret.encode(), want_secret.encode())
        return ok_key and ok_secret

    def within_rate(self, key: str, api: str = "trading") -> bool:
        """Count one request of ``key`` to ``api``; False when it is over the per-minute limit.
        As at Alpaca, the trading API and the market data API (``/v2/stocks/...``) each have their
        own budget: the bot's bars and quotes do not use up its order requests."""
        if self.rate_limit_per_minute <= 0:
            return True
        now = time.monotonic()
        hits = self._hits.setdefault((key, api), deque())
        while hits and hits[0] <= now - 60.0:
            hits.popleft()
        if len(hits) >= self.rate_limit_per_minute:
            return False
        hits.append(now)
        return True

    # --- test knobs -------------------------------------------------------------------------------------

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        """The first pending fault for this request, counted down (None: serve it normally)."""
        for entry in self.faults:
            rule, remaining = entry
            if remaining > 0 and rule.matches(method, path):
                entry[1] -= 1
                self.faults = [e for e in self.faults if e[1] > 0]
                return rule
        return None

    async def _add_faults(self, request: Request) -> alpaca.Reply:
        rules = alpaca.json_object(await request.body()).get("rules", [])
        for raw in rules:
            count = int(raw.pop("count", 1))
            self.faults.append([FaultRule(**raw), count])
        return 200, {"pending": sum(e[1] for e in self.faults)}

    async def _clear_faults(self, request: Request) -> alpaca.Reply:
        self.faults.clear()
        return 200, {"pending": 0}

    async def _drop_streams(self, request: Request) -> alpaca.Reply:
        which = alpaca.json_object(await request.body()).get("which", "all")
        dropped = [s for s in list(self.sessions) if which in ("all", s.kind)]
        for session in dropped:
            self.abort(session.websocket)
            self.sessions.discard(session)
        return 200, {"dropped": len(dropped)}

    async def _status(self, request: Request) -> alpaca.Reply:
        kinds = Counter(s.kind for s in self.sessions)
        return 200, {
            "now": alpaca.wire.iso(self.clock.now()),
            "connections": {"trade": kinds["trade"], "data": kinds["data"],
                            "listening": sum(1 for s in self.sessions if s.listening)},
            "faults": [{**vars_of(e[0]), "count": e[1]} for e in self.faults],
            "requests": dict(self.request_counts),
        }

    def abort(self, websocket: WebSocket) -> None:
        """Cut a websocket's TCP connection with no close handshake, as a network failure would.
        ASGI has no word for that, so the connection is found among uvicorn's by its peer address."""
        client = tuple(websocket.scope.get("client") or ())
        if self._uvicorn is None or not client:
            return
        for connection in list(self._uvicorn.server_state.connections):
            transport = getattr(connection, "transport", None)
            if getattr(connection, "client", None) == client and transport is not None:
                transport.abort()


def _bind(port: int) -> socket.socket:
    """A listening-to-be TCP socket on 127.0.0.1 only (never a wider address). The protocol is
    named: asyncio sets TCP_NODELAY only on connections of a socket whose proto is IPPROTO_TCP, and
    without it every response (headers, then body) waits ~40 ms for the client's delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def _anchor(db_path: Path, settings: Settings) -> NowSource:
    """The same clock ``steadyhand run`` anchors from ``[sim]`` (cmd_serve reports its notes)."""
    return anchor_run_clock(db_path, settings.sim)[0]


# ---------------------------------------------------------------------------------------------
# Running it: in a thread (tests, tools) or as the CLI command
# ---------------------------------------------------------------------------------------------


class ServerThread(LoopThread[ExchangeServer]):
    """Run an :class:`ExchangeServer` on its own event loop thread; ``start()`` returns once bound."""

    what = "exchange server"

    def __init__(self, server: ExchangeServer) -> None:
        super().__init__(server, name="exchange-server")

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        super().start(timeout_s)
        return self

    def __enter__(self) -> ServerThread:
        return self.start()


def credentials_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    env = os.environ if environ is None else environ
    key, secret = env.get(KEY_ENV, ""), env.get(SECRET_ENV, "")
    return (key, secret) if key and secret else None


async def _serve(server: ExchangeServer, data_dir: Path, tws_port: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        tws = await _start_tws(server, data_dir, tws_port) if tws_port is not None else None
    except BaseException:
        await server.close()  # the TWS port is taken, say: nothing half-started is left behind
        raise
    info = data_dir / INFO_FILE
    info.write_text(json.dumps({"port": server.port, "pid": os.getpid(), **server.urls,
                                **({"tws_port": tws[0].port} if tws else {})}) + "\n")
    print(f"steadyhand exchange: serving on {LOOPBACK}:{server.port} (data dir {data_dir}, "
          f"sim now {server.clock.now():%Y-%m-%d %H:%M:%S} UTC)", flush=True)
    for name, url in server.urls.items():
        print(f"  {name} = \"{url}\"", flush=True)
    if tws:
        print(f"  tws_port = {tws[0].port} (TWS face: [ibkr] port, account {tws[0].account}, server version "
              f"{tws[0].server_version}, admin port {tws[1].port})", flush=True)
    auth = "the key pair in " + KEY_ENV + "/" + SECRET_ENV if server.credentials else "any non-empty key pair"
    print(f"  accepting {auth}; Ctrl-C stops", flush=True)
    stopping = asyncio.create_task(stop.wait())
    broken = asyncio.create_task(server.wait_stopped())
    try:
        await asyncio.wait([stopping, broken], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, broken):
            task.cancel()
        info.unlink(missing_ok=True)
        if tws:
            (data_dir / "tws.json").unlink(missing_ok=True)
            await tws[1].close()
            await tws[0].close()
        await server.close()
        print("steadyhand exchange: stopped", flush=True)
    if not stop.is_set():
        raise OSError("the web server stopped by itself (see the log above)")


async def _start_tws(server: ExchangeServer, data_dir: Path, port: int) -> tuple[Any, Any]:
    """The TWS face in this process, on this loop, the same book (exchange.db) and the same clock
    object as the Alpaca face; with its loopback admin (fault knobs) and ``tws.json`` as the
    stand-alone face writes it."""
    from steadyhand.sim.server.tws import TwsServer
    from steadyhand.sim.server.tws_admin import TwsAdmin

    tws = TwsServer(data_dir, server.settings, port=port, clock=server.clock)
    await tws.start()
    admin = TwsAdmin(tws, 0)
    await admin.start()
    (data_dir / "tws.json").write_text(json.dumps({"port": tws.port, "pid": os.getpid(),
                                                   "admin_port": admin.port}) + "\n")
    return tws, admin


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``steadyhand exchange serve [--port N] [--tws-port N] [--data-dir DIR] [--config F] [--start S]``."""
    given = getattr(args, "data_dir", None) or os.environ.get("STEADYHAND_DATA_DIR") or "./var"
    data_dir = Path(given).expanduser().resolve()
    start_of(settings.sim)  # a start outside the calendar: exit 2 before anything is created
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    clock, notes = anchor_run_clock(data_dir / "exchange.db", settings.sim)
    for note in notes:
        print(f"steadyhand exchange: {note}", flush=True)
    try:
        server = ExchangeServer(data_dir, settings, port=int(getattr(args, "port", 0) or 0), clock=clock,
                                credentials=credentials_from_env())
        asyncio.run(_serve(server, data_dir, getattr(args, "tws_port", None)))
    except OSError as exc:
        print(f"steadyhand exchange: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0
