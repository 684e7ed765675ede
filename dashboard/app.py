"""The dashboard's web app: Starlette on uvicorn, 127.0.0.1 only, the local exchange's runner pieces.

Routes (every one needs the token, dashboard/access.py):

- ``/``: the page (dashboard/page.py); ``/static/plotly.min.js``: plotly's bundled copy, from the
  installed package (no CDN: the page works without internet).
- ``/api/state``: the view model (dashboard/views.py), read from the store READ-ONLY.
- ``/api/command`` (POST ``{"name", "args", "confirm"}``): pause, resume, halt, flatten, cancel-all,
  ack, sent to the supervisor as signed operator commands by the actor shell (``send_command``);
  halt and flatten need ``"confirm": true``.
- ``/stream``: the event stream (dashboard/stream.py); ``/metrics``: Prometheus (dashboard/metrics.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from steadyhand.dashboard import access, page
from steadyhand.dashboard.metrics import CONTENT_TYPE, Metrics
from steadyhand.dashboard.stream import Hub, LogTailer, frame, frame_of_event
from steadyhand.dashboard.views import Facts, circuit_after, state_view
from steadyhand.runtime.liveness import read_heartbeats
from steadyhand.runtime.logs import readable
from steadyhand.sim.server.app import LOOPBACK, _bind, _quiet_uvicorn, _Uvicorn
from steadyhand.state import store

CONTROLS = ("pause", "resume", "halt", "flatten", "cancel-all", "ack")
CONFIRMED = ("halt", "flatten")
LOG_POLL_S = 0.25  # how often the logs are looked at while someone watches (a stat per file when quiet)
STORE_POLL_S = 1.0  # how often new equity rows and alerts are looked for while someone watches
IDLE_POLL_S = 5.0  # both, while nobody watches: nothing is lost (the logs are read on from the offset)
IDLE_AFTER_S = 60.0  # no request and no stream client for this long: nobody watches
STATE_CACHE_S = 0.5  # /api/state built at most this often: pages refresh together after a frame
LOG_TAIL = 100
COMMAND_TIMEOUT_S = 30.0
SendCommand = Callable[[str, dict[str, Any]], "Future[dict[str, Any]]"]


def plotly_js() -> Path:
    """plotly.js as the plotly package ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class _IdleUvicorn(_Uvicorn):
    """uvicorn's main loop wakes 10 times a second to look for ``should_exit``; once a second is
    enough for a stop (the actor shell waits for it) and is most of an idle dashboard's CPU."""

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick counts tenths of a second (the Date header: 1 s)
            await asyncio.sleep(1.0)
            should_exit = await self.on_tick(counter)


@dataclass
class Context:
    """What the server knows of the run, given by the actor shell."""

    data_dir: Path
    run_id: str
    clock: Any  # the run clock (sim.clock)
    risk_limits: dict[str, Any]
    send_command: SendCommand
    backlog: int = 200
    client_queue: int = 1000


class DashboardServer:
    def __init__(self, ctx: Context, port: int = 0) -> None:
        self.ctx = ctx
        self.requested_port = port
        self.port = 0
        self.token = access.load_token(ctx.data_dir)
        self.hub = Hub(ctx.backlog, ctx.client_queue, on_drop=self._abort)
        self.tailer = LogTailer(ctx.data_dir / "logs")
        self.log_tail: deque[dict[str, Any]] = deque(maxlen=LOG_TAIL)
        self.circuit: dict[str, Any] = {"open": False, "since": None, "reason": ""}
        self.metrics = Metrics(self._open_db, self.facts)
        self.sockets: dict[asyncio.Queue[Any], WebSocket] = {}
        self._last_equity_ts = ""
        self._last_alert_id = 0
        self.last_request = 0.0  # monotonic time of the last authorized request (the actor shell reads it)
        self._db: Any = None  # the poller's read-only connection, kept open (opening one costs more)
        self._tables: set[str] = set()
        self._state_cache: tuple[float, bytes] = (0.0, b"")
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[
            Route("/", self._page), Route("/static/plotly.min.js", self._plotly),
            Route("/api/state", self._state), Route("/api/command", self._command, methods=["POST"]),
            Route("/metrics", self._metrics), WebSocketRoute("/stream", self._stream)])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/?token={self.token}"

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        sock = _bind(self.requested_port)
        self.port = int(sock.getsockname()[1])
        self._uvicorn = _IdleUvicorn(uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off", http="httptools",
            ws="websockets-sansio", ws_per_message_deflate=False, server_header=False, timeout_graceful_shutdown=2))
        _quiet_uvicorn()
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if self._serving.done() or time.monotonic() > deadline:
                sock.close()
                raise OSError("the dashboard's web server did not start")
            await asyncio.sleep(0.005)
        self._prime()
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._db is not None:
            self._db.close()
        for ws in list(self.sockets.values()):
            try:
                await ws.close(1001)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                await self._serving
            except (Exception, SystemExit):  # noqa: BLE001 - stopping anyway
                pass
        self.tailer.close()

    @property
    def serving(self) -> bool:
        """False once uvicorn or the poller has died: the actor shell then crashes to be restarted."""
        return all(t is not None and not t.done() for t in (self._serving, self._poller))

    # --- facts, store -------------------------------------------------------------------------

    def _open_db(self) -> Any:
        return store.open_readonly(self.ctx.data_dir)

    def facts(self) -> Facts:
        clock = self.ctx.clock
        try:
            run = json.loads((self.ctx.data_dir / "run.json").read_text())
        except (OSError, ValueError):
            run = {}
        return Facts(wall_now=time.time(), sim_now=clock.now(), real_seconds_per_sim_second=1.0 / clock.speed,
                     run=run, heartbeats=read_heartbeats(str(self.ctx.data_dir)), circuit=self.circuit,
                     risk_limits=self.ctx.risk_limits, log_tail=[{"ts": e.get("ts"), "actor": e.get("actor"),
                                                                  "level": e.get("level"), "text": readable(e)}
                                                                 for e in self.log_tail])

    # --- the stream's sources -----------------------------------------------------------------

    def _prime(self) -> None:
        """Start after what is already there: the tail of the logs feeds the backlog, old equity rows
        and alerts are not news."""
        self._poll_logs()
        db = self._open_db()
        if db is None:
            return
        try:
            if "equity" in db.table_names():
                self._last_equity_ts = db.execute("SELECT coalesce(max(ts), '') FROM equity").fetchone()[0]
            if "alerts" in db.table_names():
                self._last_alert_id = db.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0]
        finally:
            db.close()

    def idle(self) -> bool:
        """Nobody watches: no stream client, no request for a while (polls slow down, CPU ~0)."""
        return not self.hub.clients and time.monotonic() - self.last_request > IDLE_AFTER_S

    async def _poll_forever(self) -> None:
        next_store = 0.0
        while True:
            self._poll_logs()
            idle = self.idle()
            if time.monotonic() >= next_store:
                next_store = time.monotonic() + (IDLE_POLL_S if idle else STORE_POLL_S)
                try:
                    self._poll_store()
                except Exception as exc:  # noqa: BLE001 - a locked or missing store: try again next time
                    self.log_tail.append({"ts": "", "actor": "dashboard", "level": "warning",
                                          "event": "store_poll_failed", "error": repr(exc)})
            await asyncio.sleep(IDLE_POLL_S if idle else LOG_POLL_S)

    def _publish(self, item: dict[str, Any]) -> None:
        self.hub.publish(item)
        self.metrics.observe(item)

    def _poll_logs(self) -> None:
        for event in self.tailer.poll():
            self.log_tail.append(event)
            self.circuit = circuit_after(self.circuit, event)
            item = frame_of_event(event, self.ctx.run_id)
            if item is not None:
                self._publish(item)

    def _poll_store(self) -> None:
        if self._db is None:
            self._db = self._open_db()
            if self._db is None:
                return
            self._tables = set(self._db.table_names())  # migrations ran before any actor started
        try:
            if "equity" in self._tables:
                self._new_equity(self._db)
            if "alerts" in self._tables:
                self._new_alerts(self._db)
        except Exception:
            self._db.close()  # open afresh next time (a store replaced under us, say)
            self._db = None
            raise

    def _new_equity(self, db: Any) -> None:
        rows = db.execute("SELECT ts, equity, cash, realized, unrealized FROM equity WHERE ts > ? ORDER BY ts",
                          [self._last_equity_ts]).fetchall()
        now = store.now_iso()
        for ts, equity, cash, realized, unrealized in rows[-50:]:  # a long pause: only the newest
            self._publish(frame(self.ctx.run_id, "bar.received", f"bars at {ts}", now, bar_ts=ts))
            self._publish(frame(self.ctx.run_id, "equity.update", f"equity {float(equity):,.2f}", now, bar_ts=ts,
                                equity=round(float(equity), 2), cash=round(float(cash), 2),
                                realized_pnl=round(float(realized), 2), unrealized_pnl=round(float(unrealized), 2)))
        if rows:
            self._last_equity_ts = rows[-1][0]

    def _new_alerts(self, db: Any) -> None:
        rows = db.execute("SELECT id, severity, title, created_at FROM alerts WHERE id > ? ORDER BY id",
                          [self._last_alert_id]).fetchall()
        for alert_id, severity, title, created in rows:
            self._publish(frame(self.ctx.run_id, "alert.raised", title, created or store.now_iso(),
                                alert_id=alert_id, severity=severity))
        if rows:
            self._last_alert_id = rows[-1][0]

    def _abort(self, queue: asyncio.Queue[Any]) -> None:
        """Cut a dropped client's TCP connection: its sender may be blocked writing to a full socket,
        and would never see the queue's end-of-stream mark (as ExchangeServer.abort does)."""
        websocket = self.sockets.get(queue)
        client = tuple(websocket.scope.get("client") or ()) if websocket is not None else ()
        if self._uvicorn is None or not client:
            return
        for connection in list(self._uvicorn.server_state.connections):
            transport = getattr(connection, "transport", None)
            if getattr(connection, "client", None) == client and transport is not None:
                transport.abort()

    # --- access -------------------------------------------------------------------------------

    def _allowed(self, conn: HTTPConnection) -> bool:
        ok = access.valid(self.token, access.presented(conn.query_params, conn.headers, conn.cookies))
        if ok:
            self.last_request = time.monotonic()
        return ok

    def _with_cookie(self, response: Response) -> Response:
        response.set_cookie(access.COOKIE, self.token, httponly=True, samesite="strict", path="/")
        return response

    @staticmethod
    def _denied() -> Response:
        return PlainTextResponse("401 unauthorized: open the dashboard URL with its ?token= (steadyhand status)\n",
                                 status_code=401, headers={"WWW-Authenticate": "Bearer"})

    # --- routes -------------------------------------------------------------------------------

    async def _page(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._denied()
        return self._with_cookie(HTMLResponse(page.HTML))

    async def _plotly(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._denied()
        return FileResponse(plotly_js(), media_type="application/javascript",
                            headers={"Cache-Control": "private, max-age=86400"})

    async def _state(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._denied()
        built_at, body = self._state_cache
        if time.monotonic() - built_at >= STATE_CACHE_S:
            db = self._open_db()
            if db is None:
                return JSONResponse({"error": "no state database yet"}, status_code=503)
            try:
                view = state_view(db, self.facts())
            finally:
                db.close()
            view["run_id"] = self.ctx.run_id
            view["stream"] = {"clients": len(self.hub.clients), "dropped": self.hub.dropped}
            body = json.dumps(view, default=str).encode()
            self._state_cache = (time.monotonic(), body)
        return Response(body, media_type="application/json")

    async def _command(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._denied()
        try:
            body = await request.json()
            name, args = str(body["name"]), dict(body.get("args") or {})
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"ok": False, "error": 'expected JSON {"name": ..., "args": {...}}'}, status_code=400)
        if name not in CONTROLS:
            return JSONResponse({"ok": False, "error": f"unknown control {name!r}; one of {', '.join(CONTROLS)}"},
                                status_code=400)
        if name in CONFIRMED and body.get("confirm") is not True:
            return JSONResponse({"ok": False, "error": f"{name} needs confirmation (\"confirm\": true)"},
                                status_code=400)
        if name == "ack":
            try:
                args = {"alert_id": int(args["alert_id"])}
            except (KeyError, TypeError, ValueError):
                return JSONResponse({"ok": False, "error": "ack needs args.alert_id (an integer)"}, status_code=400)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.ctx.send_command(name, args)), COMMAND_TIMEOUT_S)
        except TimeoutError:
            return JSONResponse({"ok": False, "error": f"no answer from the supervisor in {COMMAND_TIMEOUT_S:g}s"},
                                status_code=504)
        return JSONResponse(result, status_code=200 if result.get("ok") else 409)

    async def _metrics(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._denied()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def _stream(self, websocket: WebSocket) -> None:
        if not self._allowed(websocket):
            await websocket.send_denial_response(self._denied())
            return
        await websocket.accept()
        queue = self.hub.subscribe()
        self.sockets[queue] = websocket
        try:
            while True:
                item = await queue.get()
                if item is None:  # dropped for being slow
                    await websocket.close(1008, "too slow: dropped")
                    return
                await websocket.send_text(item)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self.hub.unsubscribe(queue)
            self.sockets.pop(queue, None)
