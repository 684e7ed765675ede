"""The Alpaca face of ``steadyhand exchange serve``: Alpaca's trading and market-data REST API and
its two websockets (trade updates at ``/stream``, market data at ``/v2/iex`` ...), over the book.

What the real alpaca-py clients need, in Alpaca's shapes (:mod:`steadyhand.brokers.alpaca.wire`): error
bodies with Alpaca's codes, 207 multi-status for the bulk cancels and closes, base64 page tokens.
REST handlers run on the server's book thread (``server.call``); the websockets and their pushers
(:mod:`.alpaca_streams`) run on the event loop. :class:`AlpacaGate` is the ASGI middleware every
REST request passes first: keys, rate limit, then the injected faults of ``/_admin/faults``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from steadyhand.brokers.alpaca import wire
from steadyhand.brokers.base import DuplicateClientOrderId, NotCancelable, OrderNotFound, OrderRejected
from steadyhand.domain import Bar, BrokerOrder, OrderSpec, OrderStatus, OrderType, Side, TimeInForce, market_hours
from steadyhand.sim.server.alpaca_streams import AlpacaStreams, trade_update

if TYPE_CHECKING:
    from steadyhand.sim.exchange import SimExchange
    from steadyhand.sim.server.app import ExchangeServer

log = logging.getLogger("steadyhand.exchange")

MINUTE = timedelta(minutes=1)
CENT = Decimal("0.01")
_ACTIVITY_KIND = re.compile(r"[A-Z_]+")
error_body = wire.error_body


# ---------------------------------------------------------------------------------------------
# Requests and replies
# ---------------------------------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Reply = tuple[int, Any]  # (HTTP status, JSON-able body or None)


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (empty: ``{}``); 400 otherwise."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "request body must be a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as read on the event loop, handed to a handler on the book thread."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    @classmethod
    async def read(cls, request: Request) -> HttpRequest:
        # parse_qs drops blank values ("?symbols="), which the handlers take as "not given".
        query = parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
        return cls(request.method, request.url.path, query, await request.body())

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict[str, Any]:
        return json_object(self.body)


def json_response(status: int, payload: Any) -> Response:
    if payload is None or status == 204:
        return Response(status_code=status)
    return Response(json.dumps(payload, default=str).encode(), status_code=status,
                    media_type="application/json; charset=utf-8")


async def respond(make: Callable[[], Awaitable[Reply]], what: str) -> Response:
    """The reply ``make`` produces, an :class:`HttpError` in Alpaca's shape, or a logged 500 (a bug
    must not take the exchange down)."""
    try:
        status, payload = await make()
    except HttpError as exc:
        status, payload = exc.status, error_body(exc.status, exc.message)
    except Exception as exc:  # noqa: BLE001 - answered, and logged with its traceback
        log.exception("internal error on %s", what)
        status, payload = 500, error_body(500, f"internal error: {exc}")
    return json_response(status, payload)


def endpoint(handler: Callable[[Request], Awaitable[Reply]]) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint from a handler that returns a :data:`Reply`."""

    async def run(request: Request) -> Response:
        return await respond(lambda: handler(request), f"{request.method} {request.url.path}")

    return run


DATA_PATHS = ("/v2/stocks/", "/v1beta")  # Alpaca's market data API (data.alpaca.markets): its own rate budget


class AlpacaGate:
    """ASGI middleware in front of every REST request (not ``/_admin/``, not the websockets):
    the API keys (401), the per-key rate limit (429), the request count, then an injected fault:
    a delay and/or an error status before the request is served, or after it (the client sees the
    error although the order landed), or the ``reject`` knob in place of a submission."""

    def __init__(self, app: ASGIApp, face: AlpacaFace) -> None:
        self.app = app
        self.face = face

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_admin/"):
            await self.app(scope, receive, send)
            return
        server = self.face.server
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        key = headers.get("apca-api-key-id", "")
        if not server.authorized(key, headers.get("apca-api-secret-key", "")):
            await _error(401, "request is not authorized")(scope, receive, send)
            return
        if not server.within_rate(key, "data" if path.startswith(DATA_PATHS) else "trading"):
            await _error(429, "rate limit exceeded")(scope, receive, send)
            return
        server.request_counts[f"{method} {path}"] += 1
        rule = server.take_fault(method, path)
        if rule is None:
            await self.app(scope, receive, send)
            return
        if not rule.after:
            if rule.delay_s:
                await asyncio.sleep(rule.delay_s)
            if rule.status:
                await _error(rule.status, f"injected fault {rule.status}")(scope, receive, send)
                return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        target = hold if rule.after else send
        if rule.reject and method == "POST":
            request = await HttpRequest.read(Request(scope, receive))
            response = await respond(lambda: server.call(self.face.submit_rejected, request, rule.reject),
                                     f"{method} {path}")
            await response(scope, receive, target)
        else:
            await self.app(scope, receive, target)
        # A request that failed by itself (4xx, 5xx) is answered as it is: the fault is for a
        # request that went through (the order landed although the client saw an error).
        failed = bool(held) and held[0].get("type") == "http.response.start" and held[0]["status"] >= 400
        if rule.after and not failed:
            if rule.delay_s:
                await asyncio.sleep(rule.delay_s)
            if rule.status:
                await _error(rule.status, f"injected fault {rule.status}")(scope, receive, send)
                return
        for message in held:
            await send(message)


def _error(status: int, message: str) -> Response:
    return json_response(status, error_body(status, message))


# ---------------------------------------------------------------------------------------------
# The face
# ---------------------------------------------------------------------------------------------


class AlpacaFace:
    """Alpaca's API over ``server``'s book: :meth:`routes` for the app (REST and the websockets),
    :meth:`start_background` for the trade-update and market-data pushers."""

    def __init__(self, server: ExchangeServer) -> None:
        self.server = server
        self.streams = AlpacaStreams(server)
        self.rejected: dict[str, dict[str, Any]] = {}  # client order id -> order JSON (server-side)

    @property
    def sim(self) -> SimExchange:
        return self.server.sim

    def opened(self) -> None:
        """The book is open (called on its thread)."""
        self.streams.opened()

    def routes(self) -> list[BaseRoute]:
        rest: list[tuple[str, str, Callable[..., Reply]]] = [
            ("GET", "/v2/account", self._account),
            ("GET", "/v2/account/activities", self._activities),
            ("GET", "/v2/account/activities/{kind}", self._activities),
            ("POST", "/v2/orders", self._submit),
            ("GET", "/v2/orders", self._list_orders),
            ("DELETE", "/v2/orders", self._cancel_all),
            ("GET", "/v2/orders:by_client_order_id", self._order_by_client_id),
            ("GET", "/v2/orders/{oid}", self._get_order),
            ("DELETE", "/v2/orders/{oid}", self._cancel),
            ("PATCH", "/v2/orders/{oid}", self._replace),
            ("GET", "/v2/positions", self._positions),
            ("DELETE", "/v2/positions", self._close_all_positions),
            ("GET", "/v2/positions/{symbol}", self._position),
            ("DELETE", "/v2/positions/{symbol}", self._close_position),
            ("GET", "/v2/clock", self._clock),
            ("GET", "/v2/calendar", self._calendar),
            ("GET", "/v2/stocks/bars", self._bars),
            ("GET", "/v2/stocks/quotes/latest", self._latest_quotes),
        ]
        routes: list[BaseRoute] = [Route(path, endpoint(self._on_book(handler)), methods=[method])
                                   for method, path, handler in rest]
        return routes + self.streams.routes()

    def _on_book(self, handler: Callable[..., Reply]) -> Callable[[Request], Awaitable[Reply]]:
        """Read the request here, run ``handler(request, **path params)`` on the book thread."""

        async def run(request: Request) -> Reply:
            req = await HttpRequest.read(request)
            params = dict(request.path_params)
            return await self.server.call(lambda: handler(req, **params))

        return run

    def start_background(self) -> list[asyncio.Task[None]]:
        return self.streams.start_background()

    # --- REST handlers (run on the book thread) -----------------------------------------------------

    def _account(self, request: HttpRequest) -> Reply:
        account = self.sim.account()
        long_value = short_value = Decimal(0)
        for p in self.sim.positions():
            value = self._mark(p.symbol, p.avg_entry_price) * p.qty
            if p.qty > 0:
                long_value += value
            else:
                short_value += value
        created = self.server.started_sim or self.server.clock.now()
        return 200, wire.account_json(account, long_value.quantize(CENT), short_value.quantize(CENT), created)

    def _mark(self, symbol: str, fallback: Decimal) -> Decimal:
        now = self.server.clock.now()
        q = self.server.market.quote(symbol, now)
        if q is not None:
            return Decimal(str(round(q.mid, 4)))
        last = self.server.market.history(symbol, now, 1)
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

    def submit_rejected(self, request: HttpRequest, reason: str) -> Reply:
        """The ``reject`` knob: accepted now, rejected on the stream a moment later."""
        spec = _spec_from_body(request.json())
        if self.sim.get_by_client_id(spec.client_order_id) or spec.client_order_id in self.rejected:
            raise HttpError(422, wire.DUPLICATE_CLIENT_ID_MESSAGE)
        now = self.server.clock.now()
        order = BrokerOrder(str(uuid.uuid4()), spec.client_order_id, spec.symbol, spec.side, spec.qty,
                            spec.type, spec.time_in_force, spec.limit_price, spec.stop_price,
                            OrderStatus.REJECTED, 0, None, now, now, reason)
        self.rejected[spec.client_order_id] = wire.order_json(order)
        self.streams.announce(trade_update("rejected", wire.order_json(order), now))
        return 200, wire.order_json(order, status="accepted")

    def _list_orders(self, request: HttpRequest) -> Reply:
        status = request.arg("status", "open") or ""
        if status not in ("open", "closed", "all"):
            raise HttpError(422, f"invalid status {status!r}")
        limit = min(max(_int_arg(request, "limit", 50), 1), 500)
        desc = request.arg("direction", "desc") != "asc"
        bounds = {name: _parse_time(value, name) for name in ("after", "until") if (value := request.arg(name))}
        symbols = [s for s in (request.arg("symbols") or "").split(",") if s]
        found = self.sim.list_orders(status, after=bounds.get("after"), until=bounds.get("until"),  # type: ignore[arg-type]
                                     symbols=symbols, side=request.arg("side") or None, ascending=not desc,
                                     limit=limit)
        orders = [wire.order_json(o) for o in found]
        if status in ("closed", "all"):
            extra = [o for o in self.rejected.values() if not symbols or o["symbol"] in symbols]
            orders = sorted(orders + extra, key=lambda o: o["submitted_at"], reverse=desc)[:limit]
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

    def _replace(self, request: HttpRequest, oid: str) -> Reply:
        """PATCH /v2/orders/{id}, as Alpaca: a new order (new id, the body's ``client_order_id`` or a
        derived one, ``replaces``) for ``qty`` more shares on the new terms; the old order becomes
        ``replaced`` with ``replaced_by``. 422 when it is no longer open (it filled first)."""
        old = self._find(oid)  # 422 / 404 first, as Alpaca
        body = request.json()
        if body.get("trail") not in (None, ""):
            raise HttpError(422, "trail is only for trailing_stop orders")
        if body.get("time_in_force") not in (None, "", old.time_in_force.value):
            raise HttpError(422, "time_in_force cannot be changed here")
        qty = None if body.get("qty") in (None, "") else _whole(body["qty"], "qty")
        limit, stop = _price(body.get("limit_price"), "limit_price"), _price(body.get("stop_price"), "stop_price")
        if qty is None and limit is None and stop is None:
            raise HttpError(422, "order parameters are not changed")
        cid = body.get("client_order_id") or None
        if cid is not None and len(str(cid)) > 128:
            raise HttpError(422, "client_order_id must be at most 128 characters")
        try:
            current = self.sim.get_order(oid)
            order = self.sim.replace(oid, qty=None if qty is None else qty + current.filled_qty,
                                     limit_price=limit, stop_price=stop,
                                     client_order_id=None if cid is None else str(cid))
        except OrderNotFound:
            raise HttpError(404, "order not found") from None
        except NotCancelable:
            current = self.sim.get_order(oid)
            raise HttpError(422, f'order is not open: it is already in "{wire.TO_ALPACA_STATUS[current.status]}"'
                                 ' state') from None
        except DuplicateClientOrderId:
            raise HttpError(422, wire.DUPLICATE_CLIENT_ID_MESSAGE) from None
        except OrderRejected as exc:
            text = str(exc)
            raise HttpError(403 if "buying power" in text else 422, text) from None
        return 200, wire.order_json(order)

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
        now = self.server.clock.now()
        start = _parse_time(request.arg("start"), "start") if request.arg("start") else now - timedelta(days=7)
        end = _parse_time(request.arg("end"), "end") if request.arg("end") else now + timedelta(days=30)
        try:
            sessions = market_hours.sessions_between(start, end + timedelta(days=1))
        except ValueError as exc:
            raise HttpError(422, str(exc)) from None
        return 200, wire.calendar_json(sessions)

    def _activities(self, request: HttpRequest, kind: str = "") -> Reply:
        if kind and not _ACTIVITY_KIND.fullmatch(kind):
            raise HttpError(404, "endpoint not found")
        kinds = {kind} if kind else set((request.arg("activity_types") or "FILL").split(","))
        if "FILL" not in kinds:
            return 200, []
        after = _parse_time(request.arg("after"), "after") if request.arg("after") else None
        before = _parse_time(request.arg("until"), "until") if request.arg("until") else None
        if request.arg("date"):
            day = _parse_time(request.arg("date"), "date")
            # ts >= day is ts > day - 1 µs: the book keeps microseconds.
            after = max(after, day - timedelta(microseconds=1)) if after else day - timedelta(microseconds=1)
            before = min(before, day + timedelta(days=1)) if before else day + timedelta(days=1)
        fills = self.sim.fills_between(after, before)
        order_ids = sorted({f.broker_order_id for f in fills})
        cum = {f.fill_id: total for seq in self.sim.fill_sequences(order_ids).values() for f, total in seq}
        orders = self.sim.orders_by_id(order_ids)
        activities = []
        for fill in fills:
            order = orders[fill.broker_order_id]
            activities.append(wire.fill_activity_json(fill, cum[fill.fill_id], order.qty,
                                                      wire.TO_ALPACA_STATUS[order.status]))
        desc = request.arg("direction", "desc") != "asc"
        activities.sort(key=lambda a: a["id"], reverse=desc)
        token = request.arg("page_token")
        if token:
            activities = [a for a in activities if (a["id"] < token if desc else a["id"] > token)]
        size = min(max(_int_arg(request, "page_size", 100), 1), 100)
        return 200, activities[:size]

    def _latest_quotes(self, request: HttpRequest) -> Reply:
        """Alpaca's latest quote per symbol: the sim's bid/ask now, or while closed the last of the latest
        session (as Alpaca gives the last quote it has). Sizes and venue are fixed: the sim has none."""
        symbols = sorted({s for s in (request.arg("symbols") or "").split(",") if s})
        if not symbols:
            raise HttpError(422, "symbols is required")
        now = self.server.clock.now()
        quotes: dict[str, Any] = {}
        for symbol in symbols:
            if symbol not in self.server.market.symbols:
                continue
            q = self.server.market.quote(symbol, now)
            if q is None:
                with contextlib.suppress(ValueError):
                    close = market_hours.next_close(market_hours.previous_open(now))
                    q = self.server.market.quote(symbol, close - timedelta(seconds=1)) if close <= now else None
            if q is not None:
                quotes[symbol] = {"t": q.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "bp": q.bid, "bs": 1,
                                  "bx": "V", "ap": q.ask, "as": 1, "ax": "V", "c": ["R"], "z": "C"}
        return 200, {"quotes": quotes}

    def _bars(self, request: HttpRequest) -> Reply:
        timeframe = request.arg("timeframe", "1Min")
        if timeframe not in ("1Min", "1T", "1Minute"):
            raise HttpError(422, f"timeframe {timeframe!r} is not supported here (1Min only)")
        symbols = sorted({s for s in (request.arg("symbols") or "").split(",") if s})
        if not symbols:
            raise HttpError(422, "symbols is required")
        now_floor = market_hours.minute_floor(self.server.clock.now())  # bars before it have closed
        end = min(_parse_time(request.arg("end"), "end") + timedelta(microseconds=1), now_floor) \
            if request.arg("end") else now_floor
        start = _parse_time(request.arg("start"), "start") if request.arg("start") else None
        limit = min(max(_int_arg(request, "limit", 1000), 1), 10_000)
        offset = _decode_token(request.arg("page_token"))
        want = offset + limit + 1
        desc = request.arg("sort", "asc") == "desc"
        found: list[Bar] = []
        for symbol in symbols:
            if symbol not in self.server.market.symbols:
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
        market = self.server.market
        if desc or start is None:
            bars = market.history(symbol, end, need)
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
                bar = market.bar(symbol, m)
                if bar is not None:
                    out.append(bar)
                m += MINUTE
            if len(out) >= need:
                break
        return out

# ---------------------------------------------------------------------------------------------
# Alpaca's request values
# ---------------------------------------------------------------------------------------------


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
