"""The Alpaca face's two websockets: trade updates at ``/stream`` (JSON in binary frames, as Alpaca
paper sends them) and market data at ``/v2/iex``, ``/v2/sip``, ``/v2/test`` (msgpack), with the
pushers behind them.

The trade-update poller reads the book's change log on the book thread every
``server.poll_interval_s`` (which also drives matching, as it is lazy) and turns it into Alpaca's
events: ``new``, ``partial_fill``, ``fill``, ``canceled``, ``expired``, ``rejected``, ``replaced``. The market-data
pusher sends each closed minute's bar to its subscribers, and quotes about once a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgpack
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected, WebSocketState
from steadyhand.brokers.alpaca import wire
from steadyhand.domain import BrokerOrder, Fill, OrderStatus, market_hours

if TYPE_CHECKING:
    from steadyhand.sim.exchange import SimExchange
    from steadyhand.sim.server.app import ExchangeServer

log = logging.getLogger("steadyhand.exchange")

MINUTE = timedelta(minutes=1)
DATA_STREAM_PATHS = ("/v2/iex", "/v2/sip", "/v2/test")
TRADE_STREAM_PATH = "/stream"
_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "corrections",
             "cancelErrors")


# ---------------------------------------------------------------------------------------------
# Websocket sessions
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StreamSession:
    kind: str  # "trade" | "data"
    websocket: WebSocket
    authenticated: bool = False
    listening: bool = False  # trade updates
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in _CHANNELS})

    @property
    def open(self) -> bool:
        return self.websocket.application_state is WebSocketState.CONNECTED

    async def send(self, payload: bytes) -> None:
        """One binary frame; a connection that has gone is left to its reader to clean up."""
        if not self.open:
            return
        try:
            await self.websocket.send_bytes(payload)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            pass

    async def send_msgpack(self, messages: list[dict[str, Any]]) -> None:
        await self.send(msgpack.packb(messages, default=_msgpack_default))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(json.dumps(message).encode())

    async def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        if not self.open:
            return
        try:
            await self.websocket.close(code, reason)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            pass


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return msgpack.Timestamp.from_datetime(obj.astimezone(UTC))
    raise TypeError(f"cannot pack {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# The streams
# ---------------------------------------------------------------------------------------------


class AlpacaStreams:
    """The websocket routes and the two pushers over ``server``'s book and sessions."""

    def __init__(self, server: ExchangeServer) -> None:
        self.server = server
        self._pending_updates: list[dict[str, Any]] = []  # trade updates made outside the poller
        self._cursor: str | None = None
        self._announced: set[str] = set()

    @property
    def sim(self) -> SimExchange:
        return self.server.sim

    def opened(self) -> None:
        """The book is open (on its thread): updates start from its change log as it is now."""
        self._cursor = self.sim.poll(None).cursor

    def announce(self, update: dict[str, Any]) -> None:
        """A trade update made outside the poller (the ``reject`` knob); sent with the next round."""
        self._pending_updates.append(update)

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [WebSocketRoute(TRADE_STREAM_PATH, self._trade_stream)]
        routes.extend(WebSocketRoute(path, self._data_stream) for path in DATA_STREAM_PATHS)
        routes.append(WebSocketRoute("/{path:path}", self._no_stream))  # any other path: 404
        return routes

    def start_background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._market_loop())]

    # --- websockets -------------------------------------------------------------------------------

    async def _trade_stream(self, websocket: WebSocket) -> None:
        await self._stream("trade", websocket)

    async def _data_stream(self, websocket: WebSocket) -> None:
        await self._stream("data", websocket)

    async def _no_stream(self, websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse("no such stream\n", status_code=404))

    async def _stream(self, kind: str, websocket: WebSocket) -> None:
        """One stream connection: whole messages in (text or binary), until it closes or drops."""
        await websocket.accept()
        session = StreamSession(kind, websocket)
        self.server.sessions.add(session)
        try:
            if kind == "data":
                await session.send_msgpack([{"T": "success", "msg": "connected"}])
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message["bytes"] if message.get("bytes") is not None else (message.get("text") or "").encode()
                if kind == "trade":
                    await self._on_trade_message(session, raw)
                else:
                    await self._on_data_message(session, raw)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            pass
        finally:
            self.server.sessions.discard(session)

    async def _on_trade_message(self, session: StreamSession, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
            action, data = msg.get("action"), msg.get("data") or {}
        except (ValueError, AttributeError):
            await session.send_json({"stream": "error", "data": {"error_message": "invalid message"}})
            return
        if action in ("authenticate", "auth"):
            ok = self.server.authorized(str(data.get("key_id", "")), str(data.get("secret_key", "")))
            session.authenticated = ok
            await session.send_json({"stream": "authorization", "data": {
                "action": "authenticate", "status": "authorized" if ok else "unauthorized"}})
            if not ok:
                await session.close(1008, "unauthorized")
        elif action == "listen":
            if not session.authenticated:
                await session.send_json({"stream": "authorization", "data": {
                    "action": "listen", "status": "unauthorized"}})
                return
            streams = [s for s in data.get("streams", []) if s == "trade_updates"]
            session.listening = bool(streams)
            await session.send_json({"stream": "listening", "data": {"streams": streams}})

    async def _on_data_message(self, session: StreamSession, raw: bytes) -> None:
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
            if self.server.authorized(str(msg.get("key", "")), str(msg.get("secret", ""))):
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
                updates = await self.server.call(self._collect_updates)
            except Exception:  # noqa: BLE001 - keep serving; the next round tries again
                log.exception("trade update poll failed")
                updates = []
            for update in updates:
                payload = json.dumps(update).encode()
                for session in [s for s in self.server.sessions if s.kind == "trade" and s.listening]:
                    await session.send(payload)
            await asyncio.sleep(self.server.poll_interval_s)

    def _collect_updates(self) -> list[dict[str, Any]]:
        updates, self._pending_updates = self._pending_updates, []
        batch = self.sim.poll(self._cursor)
        self._cursor = batch.cursor
        fills_by_order: dict[str, list[Fill]] = {}
        for f in batch.fills:
            fills_by_order.setdefault(f.broker_order_id, []).append(f)
        orders = {o.broker_order_id: o for o in batch.orders}
        for oid in fills_by_order:
            if oid not in orders:
                orders[oid] = self.sim.get_order(oid)
        started = self.server.started_sim
        for oid, order in orders.items():
            if oid not in self._announced and started and order.submitted_at >= started:
                self._announced.add(oid)
                updates.append(trade_update("new", wire.order_json(order, status="new", filled_qty=0),
                                             order.submitted_at))
            fills = fills_by_order.get(oid, [])
            if fills:
                updates.extend(self._fill_updates(order, fills))
            if order.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED,
                                OrderStatus.REPLACED):
                self._announced.discard(oid)
                event = wire.TO_ALPACA_STATUS[order.status]
                updates.append(trade_update(event, wire.order_json(order), order.updated_at))
            elif order.status is OrderStatus.FILLED:
                self._announced.discard(oid)
        return updates

    def _fill_updates(self, order: BrokerOrder, fills: list[Fill]) -> list[dict[str, Any]]:
        """One partial_fill / fill event per fill, each with the order as it was right after it."""
        sequence = self.sim.fill_sequences([order.broker_order_id]).get(order.broker_order_id, [])
        cum = {f.fill_id: total for f, total in sequence}
        out = []
        for f in sorted(fills, key=lambda f: cum[f.fill_id]):
            done = cum[f.fill_id]
            paid = sum(g.price * g.qty for g, total in sequence if total <= done)
            avg = (paid / done).quantize(Decimal("0.0001"))
            event = "fill" if done >= order.qty else "partial_fill"
            snapshot = wire.order_json(order, status="filled" if event == "fill" else "partially_filled",
                                       filled_qty=done, filled_avg_price=avg)
            if event == "fill":
                snapshot["filled_at"] = wire.iso(f.ts)
            update = trade_update(event, snapshot, f.ts)
            update["data"].update(execution_id=wire.derived_uuid("execution", f.fill_id),
                                  price=wire.money(f.price), qty=str(f.qty))
            out.append(update)
        return out

    async def _market_loop(self) -> None:
        """Push each closed minute's bar to data subscribers, and quotes about once a second."""
        clock = self.server.clock
        next_minute = market_hours.minute_floor(clock.now())
        last_quotes = 0.0
        while True:
            now = clock.now()
            data_sessions = [s for s in self.server.sessions if s.kind == "data" and s.authenticated]
            due = []
            while next_minute + MINUTE <= now:
                due.append(next_minute)
                next_minute += MINUTE
            for minute in due[-5:]:  # after a stall, only the latest few (history has the rest)
                await self._push_bars(minute, data_sessions)
            if time.monotonic() - last_quotes >= 1.0:
                last_quotes = time.monotonic()
                await self._push_quotes(now, data_sessions)
            real_at = getattr(clock, "real_at", None)
            wait = (real_at(next_minute + MINUTE) - time.time()) if real_at else 0.2
            await asyncio.sleep(min(max(wait, 0.005), 0.5))

    def _wanted(self, sessions: list[StreamSession], channel: str) -> tuple[str, ...]:
        wanted = {sym for s in sessions for sym in s.subscriptions[channel]}
        return self.server.symbols if "*" in wanted else tuple(s for s in self.server.symbols if s in wanted)

    async def _push_bars(self, minute: datetime, sessions: list[StreamSession]) -> None:
        symbols = self._wanted(sessions, "bars")
        if not symbols:
            return
        market = self.server.market
        bars = await self.server.call(lambda: [b for b in (market.bar(s, minute) for s in symbols) if b])
        for session in sessions:
            subs = session.subscriptions["bars"]
            mine = [wire.bar_stream_msg(b) for b in bars if "*" in subs or b.symbol in subs]
            if mine:
                await session.send_msgpack(mine)

    async def _push_quotes(self, now: datetime, sessions: list[StreamSession]) -> None:
        symbols = self._wanted(sessions, "quotes")
        if not symbols:
            return
        market = self.server.market
        quotes = await self.server.call(lambda: [q for q in (market.quote(s, now) for s in symbols) if q])
        for session in sessions:
            subs = session.subscriptions["quotes"]
            mine = [{"T": "q", "S": q.symbol, "bx": "V", "bp": q.bid, "bs": 1, "ax": "V", "ap": q.ask,
                     "as": 1, "c": ["R"], "z": "C", "t": q.ts} for q in quotes if "*" in subs or q.symbol in subs]
            if mine:
                await session.send_msgpack(mine)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def trade_update(event: str, order: dict[str, Any], ts: datetime) -> dict[str, Any]:
    return {"stream": "trade_updates", "data": {"event": event, "order": order, "timestamp": wire.iso(ts)}}
