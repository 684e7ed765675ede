"""``steadyhand exchange serve``: a local Alpaca-compatible paper exchange on the simulated exchange.

One asyncio process on 127.0.0.1, one port, four faces (point alpaca-py's ``url_override``s at them):

===================  =================================  =========================================
face                 URL                                what
===================  =================================  =========================================
trading REST         ``http://127.0.0.1:PORT``          ``/v2/account``, ``/v2/orders`` ...
market-data REST     ``http://127.0.0.1:PORT``          ``/v2/stocks/bars``
trade updates        ``ws://127.0.0.1:PORT/stream``     JSON in binary frames, as Alpaca paper
market data stream   ``ws://127.0.0.1:PORT/v2/iex``     msgpack; also ``/v2/sip``, ``/v2/test``
===================  =================================  =========================================

The book is the :class:`~steadyhand.brokers.sim.SimExchange` in ``<data dir>/exchange.db`` with the
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

Not implemented (404): assets, watchlists, portfolio history, replace (PATCH), crypto and options.
Server-side rejections (the ``reject`` knob) live in memory only and are gone after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import http
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
from steadyhand import alpaca_wire as wire
from steadyhand import market_hours
from steadyhand.actors.messages import Bar, OrderStatus, OrderType, Side, TimeInForce
from steadyhand.brokers.base import (
    BrokerFill,
    BrokerOrder,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    OrderSpec,
)
from steadyhand.brokers.sim import NowSource, SimExchange
from steadyhand.config import Settings
from steadyhand.market import MarketModel, load_market
from websockets.frames import Opcode
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

log = logging.getLogger("steadyhand.exchange")

LOOPBACK = "127.0.0.1"
KEY_ENV, SECRET_ENV = "STEADYHAND_EXCHANGE_API_KEY", "STEADYHAND_EXCHANGE_SECRET_KEY"
INFO_FILE = "exchange.json"  # port and pid of a running server, in the data dir
MINUTE = timedelta(minutes=1)
CENT = Decimal("0.01")
DATA_STREAM_PATHS = ("/v2/iex", "/v2/sip", "/v2/test")
TRADE_STREAM_PATH = "/stream"
_OPEN = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)
_MAX_HEAD = 64 * 1024
_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "corrections",
             "cancelErrors")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            raise HttpError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "request body must be a JSON object")
        return data


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


Reply = tuple[int, Any]  # (HTTP status, JSON-able body or None)


# ---------------------------------------------------------------------------------------------
# Websocket sessions (websockets' sans-I/O protocol over our own asyncio streams, so REST and both
# streams share one port)
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class WsSession:
    kind: str  # "trade" | "data"
    protocol: ServerProtocol
    writer: asyncio.StreamWriter
    authenticated: bool = False
    listening: bool = False  # trade updates
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in _CHANNELS})

    async def send(self, payload: bytes, text: bool = False) -> None:
        if self.writer.is_closing():
            return
        if text:
            self.protocol.send_text(payload)
        else:
            self.protocol.send_binary(payload)
        await self._flush()

    async def send_msgpack(self, messages: list[dict[str, Any]]) -> None:
        await self.send(msgpack.packb(messages, default=_msgpack_default))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(json.dumps(message).encode())

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data and not self.writer.is_closing():
            self.writer.write(data)
            try:
                await self.writer.drain()
            except ConnectionError:
                self.writer.close()

    async def messages(self, reader: asyncio.StreamReader) -> Any:
        """Whole messages (fragments reassembled) until the client closes or the link drops."""
        parts: list[bytes] = []
        while True:
            data = await reader.read(65536)
            if not data:
                self.protocol.receive_eof()
                return
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                    parts.append(bytes(event.data))
                    if event.fin:
                        yield b"".join(parts)
                        parts = []
                elif event.opcode is Opcode.CLOSE:
                    await self._flush()  # the protocol has queued the closing reply
                    return
            await self._flush()  # pongs

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1001) -> None:
        if self.writer.is_closing():
            return
        try:
            self.protocol.send_close(code, "server shutting down")
        except Exception:  # noqa: BLE001 - already closing: nothing to say
            pass
        await self._flush()
        self.writer.close()


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return msgpack.Timestamp.from_datetime(obj.astimezone(UTC))
    raise TypeError(f"cannot pack {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


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
        self.sessions: set[WsSession] = set()
        self.rejected: dict[str, dict[str, Any]] = {}  # client order id -> order JSON (server-side)
        self._pending_updates: list[dict[str, Any]] = []  # trade updates made outside the poller
        self._hits: dict[str, deque[float]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-sim")
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._cursor: str | None = None
        self._announced: set[str] = set()
        self._started_sim: datetime | None = None
        self._sim: SimExchange | None = None
        self._db: sqlite3.Connection | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Reply]]] = [
            ("GET", re.compile(r"/v2/account"), self._account),
            ("GET", re.compile(r"/v2/account/activities(?:/(?P<kind>[A-Z_]+))?"), self._activities),
            ("POST", re.compile(r"/v2/orders"), self._submit),
            ("GET", re.compile(r"/v2/orders"), self._list_orders),
            ("DELETE", re.compile(r"/v2/orders"), self._cancel_all),
            ("GET", re.compile(r"/v2/orders:by_client_order_id"), self._order_by_client_id),
            ("GET", re.compile(r"/v2/orders/(?P<oid>[^/]+)"), self._get_order),
            ("DELETE", re.compile(r"/v2/orders/(?P<oid>[^/]+)"), self._cancel),
            ("GET", re.compile(r"/v2/positions"), self._positions),
            ("DELETE", re.compile(r"/v2/positions"), self._close_all_positions),
            ("GET", re.compile(r"/v2/positions/(?P<symbol>[^/]+)"), self._position),
            ("DELETE", re.compile(r"/v2/positions/(?P<symbol>[^/]+)"), self._close_position),
            ("GET", re.compile(r"/v2/clock"), self._clock),
            ("GET", re.compile(r"/v2/calendar"), self._calendar),
            ("GET", re.compile(r"/v2/stocks/bars"), self._bars),
        ]

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        base = f"http://{LOOPBACK}:{self.port}"
        return {"trading_url": base, "data_url": base, "trading_stream_url": f"ws://{LOOPBACK}:{self.port}"
                f"{TRADE_STREAM_PATH}", "data_stream_url": f"ws://{LOOPBACK}:{self.port}/v2/iex"}

    async def start(self) -> None:
        await self._call(self._open)
        self._server = await asyncio.start_server(self._connection, LOOPBACK, self.requested_port,
                                                  limit=_MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._market_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            await session.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self._call(self._close_sim)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        sim = self.settings.sim
        self._sim = SimExchange(self.db_path, self.market, self.clock,
                                partial_fill_probability=sim.partial_fill_probability,
                                slippage_bps=sim.slippage_bps, latency_ms=sim.latency_ms,
                                start_cash=sim.start_cash, seed=sim.seed)
        self._db = sqlite3.connect(str(self.db_path), timeout=30)
        self._db.row_factory = sqlite3.Row
        self._started_sim = self.clock.now()
        self._cursor = self._sim.poll(None).cursor

    def _close_sim(self) -> None:
        if self._sim is not None:
            self._sim.close()
        if self._db is not None:
            self._db.close()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def sim(self) -> SimExchange:
        assert self._sim is not None, "server not started"
        return self._sim

    # --- HTTP -------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, head, target)
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                parts = urlsplit(target)
                request = HttpRequest(method, parts.path, parse_qs(parts.query), headers, body)
                status, payload = await self._respond(request)
                _write_response(writer, status, payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            raise
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, request: HttpRequest) -> Reply:
        try:
            if request.path.startswith("/_admin/"):
                return await self._admin(request)
            self._check_auth(request.headers.get("apca-api-key-id", ""),
                             request.headers.get("apca-api-secret-key", ""))
            self._check_rate(request.headers.get("apca-api-key-id", ""))
            self.request_counts[f"{request.method} {request.path}"] += 1
            rule = self._take_fault(request)
            if rule is not None and not rule.after:
                if rule.delay_s:
                    await asyncio.sleep(rule.delay_s)
                if rule.status:
                    return rule.status, wire.error_body(rule.status, f"injected fault {rule.status}")
            if rule is not None and rule.reject and request.method == "POST":
                reply = await self._call(self._submit_rejected, request, rule.reject)
            else:
                handler, groups = self._route(request)
                reply = await self._call(handler, request, *groups)
            if rule is not None and rule.after:
                if rule.delay_s:
                    await asyncio.sleep(rule.delay_s)
                if rule.status:
                    return rule.status, wire.error_body(rule.status, f"injected fault {rule.status}")
            return reply
        except HttpError as exc:
            return exc.status, wire.error_body(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the exchange down
            log.exception("internal error on %s %s", request.method, request.path)
            return 500, wire.error_body(500, f"internal error: {exc}")

    def _route(self, request: HttpRequest) -> tuple[Callable[..., Reply], tuple[str, ...]]:
        allowed = False
        for method, pattern, handler in self._routes:
            m = pattern.fullmatch(request.path)
            if m is None:
                continue
            if method == request.method:
                return handler, tuple(v for v in m.groups() if v is not None)
            allowed = True
        if allowed:
            raise HttpError(405, f"method {request.method} not allowed")
        raise HttpError(404, "endpoint not found")

    def _authorized(self, key: str, secret: str) -> bool:
        if self.credentials is None:
            return bool(key) and bool(secret)
        want_key, want_secret = self.credentials
        # Both comparisons always run: no early exit that would time which half was wrong.
        ok_key = hmac.compare_digest(key.encode(), want_key.encode())
        ok_secret = hmac.compare_digest(secret.encode(), want_secret.encode())
        return ok_key and ok_secret

    def _check_auth(self, key: str, secret: str) -> None:
        if not self._authorized(key, secret):
            raise HttpError(401, "request is not authorized")

    def _check_rate(self, key: str) -> None:
        if self.rate_limit_per_minute <= 0:
            return
        now = time.monotonic()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - 60.0:
            hits.popleft()
        if len(hits) >= self.rate_limit_per_minute:
            raise HttpError(429, "rate limit exceeded")
        hits.append(now)

    def _take_fault(self, request: HttpRequest) -> FaultRule | None:
        for entry in self.faults:
            rule, remaining = entry
            if remaining > 0 and rule.matches(request.method, request.path):
                entry[1] -= 1
                self.faults = [e for e in self.faults if e[1] > 0]
                return rule
        return None

    async def _admin(self, request: HttpRequest) -> Reply:
        path = request.path
        if path == "/_admin/faults" and request.method == "POST":
            rules = request.json().get("rules", [])
            for raw in rules:
                count = int(raw.pop("count", 1))
                self.faults.append([FaultRule(**raw), count])
            return 200, {"pending": sum(e[1] for e in self.faults)}
        if path == "/_admin/faults" and request.method == "DELETE":
            self.faults.clear()
            return 200, {"pending": 0}
        if path == "/_admin/drop_streams" and request.method == "POST":
            which = request.json().get("which", "all")
            dropped = [s for s in list(self.sessions) if which in ("all", s.kind)]
            for session in dropped:
                session.abort()
                self.sessions.discard(session)
            return 200, {"dropped": len(dropped)}
        if path == "/_admin/status" and request.method == "GET":
            kinds = Counter(s.kind for s in self.sessions)
            return 200, {
                "now": wire.iso(self.clock.now()),
                "connections": {"trade": kinds["trade"], "data": kinds["data"],
                                "listening": sum(1 for s in self.sessions if s.listening)},
                "faults": [{**vars_of(e[0]), "count": e[1]} for e in self.faults],
                "requests": dict(self.request_counts),
            }
        raise HttpError(404, "no such admin endpoint")

    # --- REST handlers (run on the sim thread) -----------------------------------------------------

    def _account(self, request: HttpRequest) -> Reply:
        account = self.sim.account()
        long_value = short_value = Decimal(0)
        for p in self.sim.positions():
            value = self._mark(p.symbol, p.avg_entry_price) * p.qty
            if p.qty > 0:
                long_value += value
            else:
                short_value += value
        created = self._started_sim or self.clock.now()
        return 200, wire.account_json(account, long_value.quantize(CENT), short_value.quantize(CENT), created)

    def _mark(self, symbol: str, fallback: Decimal) -> Decimal:
        now = self.clock.now()
        q = self.market.quote(symbol, now)
        if q is not None:
            return Decimal(str(round(q.mid, 4)))
        last = self.market.history(symbol, now, 1)
        return Decimal(str(last[-1].close)) if last else fallback

    def _submit(self, request: HttpRequest) -> Reply:
        spec = _spec_from_body(request.json())
        try:
            order = self.sim.submit(spec)
        except DuplicateClientOrderId:
            raise HttpError(422, wire.DUPLICATE_CLIENT_ID_MESSAGE) from None
        except OrderRejected as exc:
            text = str(exc)
            raise HttpError(403 if "buying power" in text else 422, text) from None
        return 200, wire.order_json(order)

    def _submit_rejected(self, request: HttpRequest, reason: str) -> Reply:
        """The ``reject`` knob: accepted now, rejected on the stream a moment later."""
        spec = _spec_from_body(request.json())
        if self.sim.get_by_client_id(spec.client_order_id) or spec.client_order_id in self.rejected:
            raise HttpError(422, wire.DUPLICATE_CLIENT_ID_MESSAGE)
        now = self.clock.now()
        order = BrokerOrder(str(uuid.uuid4()), spec.client_order_id, spec.symbol, spec.side, spec.qty,
                            spec.type, spec.time_in_force, spec.limit_price, spec.stop_price,
                            OrderStatus.REJECTED, 0, None, now, now, reason)
        self.rejected[spec.client_order_id] = wire.order_json(order)
        self._pending_updates.append(_trade_update("rejected", wire.order_json(order), now))
        return 200, wire.order_json(order, status="accepted")

    def _order_rows(self, where: str, params: tuple[Any, ...], order_by: str, limit: int) -> list[BrokerOrder]:
        self.sim.open_orders()  # catch the book up to now before reading it
        assert self._db is not None
        rows = self._db.execute(
            f"SELECT broker_order_id FROM orders WHERE {where} ORDER BY {order_by} LIMIT ?", (*params, limit)
        ).fetchall()
        return [self.sim.get_order(r[0]) for r in rows]

    def _list_orders(self, request: HttpRequest) -> Reply:
        status = request.arg("status", "open")
        limit = min(max(_int_arg(request, "limit", 50), 1), 500)
        direction = request.arg("direction", "desc")
        clauses, params = ["1 = 1"], []
        if status == "open":
            clauses.append(f"status IN {_OPEN!r}")
        elif status == "closed":
            clauses.append(f"status NOT IN {_OPEN!r}")
        elif status != "all":
            raise HttpError(422, f"invalid status {status!r}")
        for name, op in (("after", ">"), ("until", "<")):
            value = request.arg(name)
            if value:
                clauses.append(f"submitted_at {op} ?")
                params.append(_iso_db(_parse_time(value, name)))
        symbols = [s for s in (request.arg("symbols") or "").split(",") if s]
        if symbols:
            clauses.append(f"symbol IN ({','.join('?' * len(symbols))})")
            params.extend(symbols)
        side = request.arg("side")
        if side:
            clauses.append("side = ?")
            params.append(side)
        order = "ASC" if direction == "asc" else "DESC"
        orders = [wire.order_json(o) for o in self._order_rows(
            " AND ".join(clauses), tuple(params), f"submitted_at {order}, id {order}", limit)]
        if status in ("closed", "all"):
            extra = [o for o in self.rejected.values() if not symbols or o["symbol"] in symbols]
            orders = sorted(orders + extra, key=lambda o: o["submitted_at"], reverse=order == "DESC")[:limit]
        return 200, orders

    def _find(self, oid: str) -> BrokerOrder:
        try:
            uuid.UUID(oid)
        except ValueError:
            raise HttpError(422, "order_id is missing") from None
        try:
            return self.sim.get_order(oid)
        except OrderNotFound:
            raise HttpError(404, "order not found") from None

    def _get_order(self, request: HttpRequest, oid: str) -> Reply:
        for rejected in self.rejected.values():
            if rejected["id"] == oid:
                return 200, rejected
        return 200, wire.order_json(self._find(oid))

    def _order_by_client_id(self, request: HttpRequest) -> Reply:
        cid = request.arg("client_order_id") or ""
        if cid in self.rejected:
            return 200, self.rejected[cid]
        order = self.sim.get_by_client_id(cid)
        if order is None:
            raise HttpError(404, "order not found")
        return 200, wire.order_json(order)

    def _cancel(self, request: HttpRequest, oid: str) -> Reply:
        self._find(oid)  # 422 / 404 first, as Alpaca
        try:
            self.sim.cancel(oid)
        except OrderNotFound:
            raise HttpError(404, "order not found") from None
        except NotCancelable:
            current = self.sim.get_order(oid)
            raise HttpError(422, f'order is already in "{wire.TO_ALPACA_STATUS[current.status]}" state') from None
        return 204, None

    def _cancel_all(self, request: HttpRequest) -> Reply:
        results = []
        for order in self.sim.open_orders():
            try:
                self.sim.cancel(order.broker_order_id)
                results.append({"id": order.broker_order_id, "status": 200,
                                "body": wire.order_json(self.sim.get_order(order.broker_order_id))})
            except (NotCancelable, OrderNotFound) as exc:
                results.append({"id": order.broker_order_id, "status": 422,
                                "body": wire.error_body(422, str(exc))})
        return 207, results

    def _positions(self, request: HttpRequest) -> Reply:
        return 200, [wire.position_json(p, self._mark(p.symbol, p.avg_entry_price)) for p in self.sim.positions()]

    def _position(self, request: HttpRequest, symbol: str) -> Reply:
        for p in self.sim.positions():
            if p.symbol == symbol:
                return 200, wire.position_json(p, self._mark(p.symbol, p.avg_entry_price))
        raise HttpError(404, "position does not exist")

    def _close(self, symbol: str, qty: int, held: int) -> BrokerOrder:
        side = Side.SELL if held > 0 else Side.BUY
        spec = OrderSpec(client_order_id=str(uuid.uuid4()), symbol=symbol, side=side, qty=qty)
        try:
            return self.sim.submit(spec)
        except OrderRejected as exc:
            raise HttpError(403, str(exc)) from None

    def _close_position(self, request: HttpRequest, symbol: str) -> Reply:
        held = next((p.qty for p in self.sim.positions() if p.symbol == symbol), 0)
        if held == 0:
            raise HttpError(404, "position does not exist")
        qty = abs(held)
        if request.arg("qty"):
            qty = min(qty, _whole(request.arg("qty"), "qty"))
        elif request.arg("percentage"):
            qty = int(abs(held) * float(request.arg("percentage") or 100) / 100)
        if qty < 1:
            raise HttpError(422, "qty must be at least 1")
        return 200, wire.order_json(self._close(symbol, qty, held))

    def _close_all_positions(self, request: HttpRequest) -> Reply:
        if (request.arg("cancel_orders") or "").lower() == "true":
            self._cancel_all(request)
        results = []
        for p in self.sim.positions():
            try:
                order = self._close(p.symbol, abs(p.qty), p.qty)
                results.append({"symbol": p.symbol, "status": 200, "order_id": order.broker_order_id,
                                "body": wire.order_json(order)})
            except HttpError as exc:
                results.append({"symbol": p.symbol, "status": exc.status,
                                "body": {**wire.error_body(exc.status, exc.message), "symbol": p.symbol}})
        return 207, results

    def _clock(self, request: HttpRequest) -> Reply:
        return 200, wire.clock_json(self.sim.clock())

    def _calendar(self, request: HttpRequest) -> Reply:
        now = self.clock.now()
        start = _parse_time(request.arg("start"), "start") if request.arg("start") else now - timedelta(days=7)
        end = _parse_time(request.arg("end"), "end") if request.arg("end") else now + timedelta(days=30)
        try:
            sessions = market_hours.sessions_between(start, end + timedelta(days=1))
        except ValueError as exc:
            raise HttpError(422, str(exc)) from None
        return 200, wire.calendar_json(sessions)

    def _activities(self, request: HttpRequest, kind: str = "") -> Reply:
        kinds = {kind} if kind else set((request.arg("activity_types") or "FILL").split(","))
        if "FILL" not in kinds:
            return 200, []
        self.sim.open_orders()  # catch up first
        assert self._db is not None
        clauses, params = ["1 = 1"], []
        for name, op in (("after", ">"), ("until", "<")):
            value = request.arg(name)
            if value:
                clauses.append(f"ts {op} ?")
                params.append(_iso_db(_parse_time(value, name)))
        if request.arg("date"):
            day = _parse_time(request.arg("date"), "date")
            clauses.append("ts >= ? AND ts < ?")
            params.extend([_iso_db(day), _iso_db(day + timedelta(days=1))])
        rows = self._db.execute(f"SELECT * FROM fills WHERE {' AND '.join(clauses)}", params).fetchall()
        order_ids = sorted({r["broker_order_id"] for r in rows})
        cum = _cumulative(self._db, order_ids)
        meta = {r[0]: (r[1], r[2]) for r in self._db.execute(
            f"SELECT broker_order_id, qty, status FROM orders WHERE broker_order_id IN "
            f"({','.join('?' * len(order_ids))})", order_ids)}
        activities = []
        for r in rows:
            fill = _fill_from_row(r)
            qty, status = meta[r["broker_order_id"]]
            activities.append(wire.fill_activity_json(fill, cum[fill.fill_id], qty,
                                                      wire.TO_ALPACA_STATUS[OrderStatus(status)]))
        desc = request.arg("direction", "desc") != "asc"
        activities.sort(key=lambda a: a["id"], reverse=desc)
        token = request.arg("page_token")
        if token:
            activities = [a for a in activities if (a["id"] < token if desc else a["id"] > token)]
        size = min(max(_int_arg(request, "page_size", 100), 1), 100)
        return 200, activities[:size]

    def _bars(self, request: HttpRequest) -> Reply:
        timeframe = request.arg("timeframe", "1Min")
        if timeframe not in ("1Min", "1T", "1Minute"):
            raise HttpError(422, f"timeframe {timeframe!r} is not supported here (1Min only)")
        symbols = sorted({s for s in (request.arg("symbols") or "").split(",") if s})
        if not symbols:
            raise HttpError(422, "symbols is required")
        now_floor = market_hours.minute_floor(self.clock.now())  # bars before it have closed
        end = min(_parse_time(request.arg("end"), "end") + timedelta(microseconds=1), now_floor) \
            if request.arg("end") else now_floor
        start = _parse_time(request.arg("start"), "start") if request.arg("start") else None
        limit = min(max(_int_arg(request, "limit", 1000), 1), 10_000)
        offset = _decode_token(request.arg("page_token"))
        want = offset + limit + 1
        desc = request.arg("sort", "asc") == "desc"
        found: list[Bar] = []
        for symbol in symbols:
            if symbol not in self.market.symbols:
                continue
            found.extend(self._symbol_bars(symbol, start, end, want - len(found), desc))
            if len(found) >= want:
                break
        page = found[offset:offset + limit]
        out: dict[str, list[dict[str, Any]]] = {}
        for bar in page:
            out.setdefault(bar.symbol, []).append(wire.bar_rest_json(bar))
        more = len(found) > offset + limit
        return 200, {"bars": out, "next_page_token": _encode_token(offset + limit) if more else None,
                     "currency": "USD"}

    def _symbol_bars(self, symbol: str, start: datetime | None, end: datetime, need: int,
                     desc: bool) -> list[Bar]:
        """Up to ``need`` bars of one symbol with start <= ts < end, in the requested order."""
        if need <= 0:
            return []
        if desc or start is None:
            bars = self.market.history(symbol, end, need)
            if start is None and not desc:
                # Alpaca's default start is the beginning of the day; the latest session here.
                day_open = market_hours.previous_open(end - timedelta(microseconds=1))
                bars = [b for b in bars if b.ts >= day_open]
            if start is not None:
                bars = [b for b in bars if b.ts >= start]
            return bars[::-1] if desc else bars
        out: list[Bar] = []
        for o, c in market_hours.sessions_between(start, end):
            m = max(o, market_hours.minute_floor(start))
            if m < start:
                m += MINUTE
            while m < min(c, end) and len(out) < need:
                bar = self.market.bar(symbol, m)
                if bar is not None:
                    out.append(bar)
                m += MINUTE
            if len(out) >= need:
                break
        return out

    # --- websockets -------------------------------------------------------------------------------

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                         target: str) -> None:
        path = urlsplit(target).path
        kind = "trade" if path == TRADE_STREAM_PATH else "data" if path in DATA_STREAM_PATHS else ""
        protocol = ServerProtocol(max_size=2**20)
        protocol.receive_data(head)
        events = protocol.events_received()
        request = events[0] if events and isinstance(events[0], WsRequest) else None
        if request is None or not kind:
            response = protocol.reject(404, "no such stream\n")
        else:
            response = protocol.accept(request)
        protocol.send_response(response)
        writer.write(b"".join(protocol.data_to_send()))
        await writer.drain()
        if response.status_code != 101:
            return
        session = WsSession(kind, protocol, writer)
        self.sessions.add(session)
        try:
            if kind == "data":
                await session.send_msgpack([{"T": "success", "msg": "connected"}])
            async for message in session.messages(reader):
                if kind == "trade":
                    await self._on_trade_message(session, message)
                else:
                    await self._on_data_message(session, message)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.sessions.discard(session)

    async def _on_trade_message(self, session: WsSession, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
            action, data = msg.get("action"), msg.get("data") or {}
        except (ValueError, AttributeError):
            await session.send_json({"stream": "error", "data": {"error_message": "invalid message"}})
            return
        if action in ("authenticate", "auth"):
            ok = self._authorized(str(data.get("key_id", "")), str(data.get("secret_key", "")))
            session.authenticated = ok
            await session.send_json({"stream": "authorization", "data": {
                "action": "authenticate", "status": "authorized" if ok else "unauthorized"}})
            if not ok:
                await session.close(1008)
        elif action == "listen":
            if not session.authenticated:
                await session.send_json({"stream": "authorization", "data": {
                    "action": "listen", "status": "unauthorized"}})
                return
            streams = [s for s in data.get("streams", []) if s == "trade_updates"]
            session.listening = bool(streams)
            await session.send_json({"stream": "listening", "data": {"streams": streams}})

    async def _on_data_message(self, session: WsSession, raw: bytes) -> None:
        try:
            msg = msgpack.unpackb(raw)
        except Exception:  # noqa: BLE001 - try JSON, which Alpaca also accepts
            try:
                msg = json.loads(raw)
            except ValueError:
                await session.send_msgpack([{"T": "error", "code": 400, "msg": "invalid syntax"}])
                return
        action = msg.get("action") if isinstance(msg, dict) else None
        if action == "auth":
            if self._authorized(str(msg.get("key", "")), str(msg.get("secret", ""))):
                session.authenticated = True
                await session.send_msgpack([{"T": "success", "msg": "authenticated"}])
            else:
                await session.send_msgpack([{"T": "error", "code": 402, "msg": "auth failed"}])
        elif action in ("subscribe", "unsubscribe"):
            if not session.authenticated:
                await session.send_msgpack([{"T": "error", "code": 401, "msg": "not authenticated"}])
                return
            for channel in _CHANNELS:
                for symbol in msg.get(channel, []) or []:
                    if action == "subscribe":
                        session.subscriptions[channel].add(str(symbol))
                    else:
                        session.subscriptions[channel].discard(str(symbol))
            await session.send_msgpack([{"T": "subscription",
                                         **{c: sorted(session.subscriptions[c]) for c in _CHANNELS}}])
        else:
            await session.send_msgpack([{"T": "error", "code": 400, "msg": "invalid syntax"}])

    # --- background: trade updates and market data --------------------------------------------------

    async def _poll_loop(self) -> None:
        """Drive the book (matching is lazy) and push what changed as trade updates."""
        while True:
            try:
                updates = await self._call(self._collect_updates)
            except Exception:  # noqa: BLE001 - keep serving; the next round tries again
                log.exception("trade update poll failed")
                updates = []
            for update in updates:
                payload = json.dumps(update).encode()
                for session in [s for s in self.sessions if s.kind == "trade" and s.listening]:
                    await session.send(payload)
            await asyncio.sleep(self.poll_interval_s)

    def _collect_updates(self) -> list[dict[str, Any]]:
        updates, self._pending_updates = self._pending_updates, []
        batch = self.sim.poll(self._cursor)
        self._cursor = batch.cursor
        fills_by_order: dict[str, list[BrokerFill]] = {}
        for f in batch.fills:
            fills_by_order.setdefault(f.broker_order_id, []).append(f)
        orders = {o.broker_order_id: o for o in batch.orders}
        for oid in fills_by_order:
            if oid not in orders:
                orders[oid] = self.sim.get_order(oid)
        for oid, order in orders.items():
            if oid not in self._announced and self._started_sim and order.submitted_at >= self._started_sim:
                self._announced.add(oid)
                updates.append(_trade_update("new", wire.order_json(order, status="new", filled_qty=0),
                                             order.submitted_at))
            fills = fills_by_order.get(oid, [])
            if fills:
                updates.extend(self._fill_updates(order, fills))
            if order.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED):
                self._announced.discard(oid)
                event = wire.TO_ALPACA_STATUS[order.status]
                updates.append(_trade_update(event, wire.order_json(order), order.updated_at))
            elif order.status is OrderStatus.FILLED:
                self._announced.discard(oid)
        return updates

    def _fill_updates(self, order: BrokerOrder, fills: list[BrokerFill]) -> list[dict[str, Any]]:
        """One partial_fill / fill event per fill, each with the order as it was right after it."""
        assert self._db is not None
        cum = _cumulative(self._db, [order.broker_order_id])
        notional = {r["fill_id"]: r for r in self._db.execute(
            "SELECT fill_id, qty, price FROM fills WHERE broker_order_id = ?", (order.broker_order_id,))}
        out = []
        for f in sorted(fills, key=lambda f: cum[f.fill_id]):
            done = cum[f.fill_id]
            paid = sum(Decimal(r["price"]) * r["qty"] for fid, r in notional.items() if cum[fid] <= done)
            avg = (paid / done).quantize(Decimal("0.0001"))
            event = "fill" if done >= order.qty else "partial_fill"
            snapshot = wire.order_json(order, status="filled" if event == "fill" else "partially_filled",
                                       filled_qty=done, filled_avg_price=avg)
            if event == "fill":
                snapshot["filled_at"] = wire.iso(f.ts)
            update = _trade_update(event, snapshot, f.ts)
            update["data"].update(execution_id=wire.derived_uuid("execution", f.fill_id),
                                  price=wire.money(f.price), qty=str(f.qty))
            out.append(update)
        return out

    async def _market_loop(self) -> None:
        """Push each closed minute's bar to data subscribers, and quotes about once a second."""
        next_minute = market_hours.minute_floor(self.clock.now())
        last_quotes = 0.0
        while True:
            now = self.clock.now()
            data_sessions = [s for s in self.sessions if s.kind == "data" and s.authenticated]
            due = []
            while next_minute + MINUTE <= now:
                due.append(next_minute)
                next_minute += MINUTE
            for minute in due[-5:]:  # after a stall, only the latest few (history has the rest)
                await self._push_bars(minute, data_sessions)
            if time.monotonic() - last_quotes >= 1.0:
                last_quotes = time.monotonic()
                await self._push_quotes(now, data_sessions)
            real_at = getattr(self.clock, "real_at", None)
            wait = (real_at(next_minute + MINUTE) - time.time()) if real_at else 0.2
            await asyncio.sleep(min(max(wait, 0.005), 0.5))

    async def _push_bars(self, minute: datetime, sessions: list[WsSession]) -> None:
        wanted = {sym for s in sessions for sym in s.subscriptions["bars"]}
        if not wanted:
            return
        symbols = self.symbols if "*" in wanted else tuple(s for s in self.symbols if s in wanted)
        bars = await self._call(lambda: [b for b in (self.market.bar(s, minute) for s in symbols) if b])
        for session in sessions:
            subs = session.subscriptions["bars"]
            mine = [wire.bar_stream_msg(b) for b in bars if "*" in subs or b.symbol in subs]
            if mine:
                await session.send_msgpack(mine)

    async def _push_quotes(self, now: datetime, sessions: list[WsSession]) -> None:
        wanted = {sym for s in sessions for sym in s.subscriptions["quotes"]}
        if not wanted:
            return
        symbols = self.symbols if "*" in wanted else tuple(s for s in self.symbols if s in wanted)
        quotes = await self._call(lambda: [q for q in (self.market.quote(s, now) for s in symbols) if q])
        for session in sessions:
            subs = session.subscriptions["quotes"]
            mine = [{"T": "q", "S": q.symbol, "bx": "V", "bp": q.bid, "bs": 1, "ax": "V", "ap": q.ask,
                     "as": 1, "c": ["R"], "z": "C", "t": q.ts} for q in quotes if "*" in subs or q.symbol in subs]
            if mine:
                await session.send_msgpack(mine)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def vars_of(rule: FaultRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in FaultRule.__slots__}


def _anchor(db_path: Path, settings: Settings) -> NowSource:
    """The same clock ``steadyhand run`` anchors from ``[sim]`` (cmd_serve reports its notes)."""
    from steadyhand.clock import anchor_run_clock

    return anchor_run_clock(db_path, settings.sim)[0]


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise ConnectionError("malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method.upper(), target, headers


def _write_response(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = b"" if payload is None or status == 204 else json.dumps(payload, default=str).encode()
    phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Error"
    head = [f"HTTP/1.1 {status} {phrase}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    if body:
        head.append("Content-Type: application/json; charset=utf-8")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def _trade_update(event: str, order: dict[str, Any], ts: datetime) -> dict[str, Any]:
    return {"stream": "trade_updates", "data": {"event": event, "order": order, "timestamp": wire.iso(ts)}}


def _int_arg(request: HttpRequest, name: str, default: int) -> int:
    value = request.arg(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise HttpError(422, f"{name} must be an integer") from None


def _parse_time(value: str | None, name: str) -> datetime:
    text = (value or "").strip().replace("Z", "+00:00").replace(" ", "+")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise HttpError(422, f"{name}: invalid time {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC) if "T" in text else t.replace(tzinfo=wire.NEW_YORK)
    return t.astimezone(UTC)


def _iso_db(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")  # the sim's fixed-width text times


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except (ValueError, UnicodeDecodeError):
        raise HttpError(422, "invalid page_token") from None


def _whole(value: Any, name: str) -> int:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise HttpError(422, f"{name} must be a number") from None
    if d != d.to_integral_value() or d < 1:
        raise HttpError(422, f"{name} must be a whole number >= 1 (fractional orders are not supported here)")
    return int(d)


def _price(value: Any, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise HttpError(422, f"{name} must be a number") from None


def _spec_from_body(body: dict[str, Any]) -> OrderSpec:
    """An OrderSpec from Alpaca's order JSON, with Alpaca's 422s for what the sim does not do."""
    if body.get("notional") not in (None, ""):
        raise HttpError(422, "notional orders are not supported here")
    if body.get("order_class") not in (None, "", "simple"):
        raise HttpError(422, f"order_class {body.get('order_class')!r} is not supported here")
    if body.get("extended_hours"):
        raise HttpError(422, "extended hours orders are not supported here")
    if not body.get("symbol"):
        raise HttpError(422, "symbol is required")
    try:
        side = Side(body.get("side"))
        otype = OrderType(body.get("type") or body.get("order_type") or "market")
        tif = TimeInForce(body.get("time_in_force") or "day")
    except ValueError as exc:
        raise HttpError(422, f"invalid order: {exc}") from None
    cid = str(body.get("client_order_id") or uuid.uuid4())
    if len(cid) > 128:
        raise HttpError(422, "client_order_id must be at most 128 characters")
    return OrderSpec(client_order_id=cid, symbol=str(body["symbol"]).upper(), side=side,
                     qty=_whole(body.get("qty"), "qty"), type=otype, time_in_force=tif,
                     limit_price=_price(body.get("limit_price"), "limit_price"),
                     stop_price=_price(body.get("stop_price"), "stop_price"))


def _cumulative(db: sqlite3.Connection, order_ids: list[str]) -> dict[str, int]:
    """fill id -> the order's cumulative filled qty right after that fill (fills are numbered)."""
    if not order_ids:
        return {}
    rows = db.execute(
        f"SELECT broker_order_id, fill_id, qty FROM fills WHERE broker_order_id IN "
        f"({','.join('?' * len(order_ids))})", order_ids).fetchall()
    by_order: dict[str, list[tuple[int, str, int]]] = {}
    for oid, fid, qty in rows:
        by_order.setdefault(oid, []).append((int(fid.rsplit("-", 1)[1]), fid, qty))
    cum: dict[str, int] = {}
    for fills in by_order.values():
        total = 0
        for _n, fid, qty in sorted(fills):
            total += qty
            cum[fid] = total
    return cum


def _fill_from_row(r: sqlite3.Row) -> BrokerFill:
    return BrokerFill(fill_id=r["fill_id"], broker_order_id=r["broker_order_id"],
                      client_order_id=r["client_order_id"], symbol=r["symbol"], side=Side(r["side"]),
                      qty=r["qty"], price=Decimal(r["price"]), ts=datetime.fromisoformat(r["ts"]))


# ---------------------------------------------------------------------------------------------
# Running it: in a thread (tests, tools) or as the CLI command
# ---------------------------------------------------------------------------------------------


class ServerThread:
    """Run an :class:`ExchangeServer` on its own event loop thread; ``start()`` returns once bound."""

    def __init__(self, server: ExchangeServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="exchange-server", daemon=True)

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        if self._thread.is_alive() or self._ready.is_set():
            return self  # already running (``with start_exchange(...)`` after a start)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("exchange server did not start")
        if self._error is not None:
            raise RuntimeError("exchange server failed to start") from self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
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
        """Run a coroutine on the server's loop (tests use it to poke at live state)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout_s)  # type: ignore[arg-type]

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("exchange server thread did not stop")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def credentials_from_env(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    env = os.environ if environ is None else environ
    key, secret = env.get(KEY_ENV, ""), env.get(SECRET_ENV, "")
    return (key, secret) if key and secret else None


async def _serve(server: ExchangeServer, data_dir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    info = data_dir / INFO_FILE
    info.write_text(json.dumps({"port": server.port, "pid": os.getpid(), **server.urls}) + "\n")
    print(f"steadyhand exchange: serving on {LOOPBACK}:{server.port} (data dir {data_dir}, "
          f"sim now {server.clock.now():%Y-%m-%d %H:%M:%S} UTC)", flush=True)
    for name, url in server.urls.items():
        print(f"  {name} = \"{url}\"", flush=True)
    auth = "the key pair in " + KEY_ENV + "/" + SECRET_ENV if server.credentials else "any non-empty key pair"
    print(f"  accepting {auth}; Ctrl-C stops", flush=True)
    try:
        await stop.wait()
    finally:
        info.unlink(missing_ok=True)
        await server.close()
        print("steadyhand exchange: stopped", flush=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``steadyhand exchange serve [--port N] [--data-dir DIR] [--config F] [--start S]``."""
    from steadyhand.clock import anchor_run_clock, start_of

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
        asyncio.run(_serve(server, data_dir))
    except OSError as exc:
        print(f"steadyhand exchange: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0

