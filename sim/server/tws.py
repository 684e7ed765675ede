"""The TWS face of the local exchange: the TWS / IB Gateway socket protocol on the simulated book.

``TwsServer`` listens on 127.0.0.1 and speaks the text protocol of server versions 176 and 178 (the
handshake ``API\\0`` + ``v157..178``, then length-prefixed NUL-separated fields, see
:mod:`tws_wire`) to any API client, in particular the real ib_async client. The book is the same
:class:`~steadyhand.sim.exchange.SimExchange` in ``<data dir>/exchange.db`` with the same anchored
simulated clock as the Alpaca face, so both faces (and the bot's ``verify``) see one market.

What it answers: startApi (managedAccounts with one paper account ``DU...``, nextValidId, the
2104 / 2106 / 2158 farm messages), placeOrder (openOrder + orderStatus; fills as execDetails and
commissionReport, joined by execId), cancelOrder (orderStatus Cancelled + error 202),
reqGlobalCancel, reqOpenOrders / reqAllOpenOrders, reqCompletedOrders, reqExecutions, reqPositions,
reqAccountUpdates (+ Multi), reqAccountSummary, reqContractDetails (STK SMART USD), reqCurrentTime,
reqIds, reqHistoricalData on 1-minute bars (also ``keepUpToDate``: the forming bar is updated, and
at every minute the finished bar is sent once more in full before the next one starts) and
reqRealTimeBars (5-second bars). A second connection with a client id in use gets error 326.

All book work runs on one worker thread (SQLite connections belong to their thread); the event
loop only moves bytes. Faults for tests (methods, used through :class:`TwsServerThread`): drop
every socket, send 1100 / 1101 / 1102, pacing (error 100), a Gateway restart (drop + ``nextValidId`` starts over),
reject the next orders with 201, commission reports before their executions, executions delayed.

Wiring into ``steadyhand exchange serve --tws-port P`` (one process, both faces): construct
``TwsServer(data_dir, settings, port=P, clock=<the Alpaca face's clock>)`` and ``await start()`` /
``await close()`` it next to the Alpaca face on the same event loop; each face opens its own
SimExchange connection on ``exchange.db`` (the book is multi-process safe), so nothing else is shared.
Until then ``python -m steadyhand.sim.server.tws`` runs it as a process of its own.

Commission reports follow IBKR Pro fixed pricing (USD 0.005 a share, 1.00 minimum, 1 % maximum);
they are information only: the book's cash does not deduct them.

placeOrder with the id of a live order of the same client modifies it in place (quantity, limit,
stop; 104 for a finished order, 105 when symbol, side or type differ).

Not implemented: market data
ticks (reqMktData), options, combos, algos, conditions; historical bar sizes other than 1 minute.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from steadyhand.brokers.base import NotCancelable, OrderNotFound, OrderRejected
from steadyhand.config import Settings
from steadyhand.domain import BrokerOrder, Fill, OrderSpec, OrderStatus, OrderType, Side, TimeInForce
from steadyhand.sim.clock import NowSource, anchor_run_clock
from steadyhand.sim.exchange import SimExchange, open_sim_exchange
from steadyhand.sim.market import MarketModel, load_market
from steadyhand.sim.schema import EXCHANGE_DB
from steadyhand.sim.server import tws_wire as w
from steadyhand.sim.server.tws_bars import BarsMixin, _parse_ib_time, _Sub
from steadyhand.sim.server.tws_ids import IdRow, TwsIds

log = logging.getLogger("steadyhand.exchange.tws")

LOOPBACK = "127.0.0.1"
DEFAULT_ACCOUNT = "DU1234567"
MINUTE = timedelta(minutes=1)
_IB_STATUS = {OrderStatus.SUBMITTED: "Submitted", OrderStatus.PARTIALLY_FILLED: "Submitted",
              OrderStatus.FILLED: "Filled", OrderStatus.CANCELED: "Cancelled", OrderStatus.EXPIRED: "Cancelled",
              OrderStatus.REJECTED: "Cancelled", OrderStatus.REPLACED: "Cancelled"}  # replaced: by the Alpaca face
_FARMS = ((2104, "Market data farm connection is OK:usfarm"), (2106, "HMDS data farm connection is OK:ushmds"),
          (2158, "Sec-def data farm connection is OK:secdefnj"))
Frames = list[bytes]


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    version: int
    client_id: int = -1
    ready: bool = False
    refused: bool = False  # answered with an error that ends the connection
    positions: bool = False
    account_updates: bool = False
    subs: dict[int, _Sub] = field(default_factory=dict)


@dataclass
class Faults:
    """What the fault knobs have armed (read and changed on the book thread)."""

    reject: int = 0  # the next N orders are rejected with 201
    reject_reason: str = "Simulated rejection"
    commission_first: bool = False  # commission report before its execution
    exec_delay_s: float = 0.0  # executions (and their reports) held back this long (wall seconds)
    silent_place: int = 0  # the next N orders reach the book but get no acknowledgement (a lost reply)
    refuse_connections: bool = False  # new connections are closed at once (a Gateway that is down)
    pacing: int = 0  # the next N requests also get error 100 (message rate exceeded); still answered


class TwsServer(BarsMixin):
    """The TWS face. ``await start()`` binds (port 0: any free port); ``await close()`` stops."""

    def __init__(self, data_dir: str | Path, settings: Settings, *, port: int = 0,
                 clock: NowSource | None = None, server_version: int = w.MAX_VERSION,
                 accounts: tuple[str, ...] = (DEFAULT_ACCOUNT,), poll_interval_s: float = 0.05) -> None:
        if not 176 <= server_version <= w.MAX_VERSION:
            raise ValueError(f"server_version must be 176..{w.MAX_VERSION}, got {server_version}")
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.requested_port, self.port = port, 0
        self.server_version = server_version
        self.accounts = accounts
        self.poll_interval_s = poll_interval_s
        self.db_path = self.data_dir / EXCHANGE_DB
        self.clock: NowSource = clock if clock is not None else _anchor(self.db_path, settings)
        self.symbols = tuple(dict.fromkeys((*settings.symbols, *settings.alpaca.symbols)))
        self.market: MarketModel = load_market(settings.sim, self.symbols)
        self.faults = Faults()
        self.connections = 0  # API connections accepted so far
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tws-book")
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: list[_Session] = []  # touched on the book thread only
        self._sim: SimExchange | None = None
        self._ids: TwsIds | None = None
        self._cursor: str | None = None
        self._sent: dict[str, tuple[str, int]] = {}  # broker order id -> (status, filled) last shown
        self._rejected: list[w.OrderView] = []  # orders rejected before reaching the book
        self._delayed: list[tuple[float, _Session, bytes]] = []

    @property
    def account(self) -> str:
        return self.accounts[0]

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._call(self._open)
        self._server = await asyncio.start_server(self._connection, LOOPBACK, self.requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._tasks = [asyncio.create_task(self._loop(self._collect, self.poll_interval_s)),
                       asyncio.create_task(self._loop(self._bars_tick, 0.1))]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for s in await self._call(lambda: list(self._sessions)):
            s.writer.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self._call(self._close_book)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self._sim = open_sim_exchange(self.settings, self.data_dir, self.clock, market=self.market)
        self._ids = TwsIds(self.data_dir)
        self._cursor = self._sim.poll(None).cursor

    def _close_book(self) -> None:
        if self._sim is not None:
            self._sim.close()
        if self._ids is not None:
            self._ids.close()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def sim(self) -> SimExchange:
        assert self._sim is not None, "server not started"
        return self._sim

    @property
    def ids(self) -> TwsIds:
        assert self._ids is not None, "server not started"
        return self._ids

    async def _loop(self, collect: Callable[[], list[tuple[_Session, bytes]]], interval_s: float) -> None:
        """Run ``collect`` on the book thread every ``interval_s`` and send what it produced."""
        while True:
            try:
                out = await self._call(collect)
            except Exception:  # noqa: BLE001 - keep serving; the next round tries again
                log.exception("tws face: %s failed", collect.__name__)
                out = []
            for session, data in out:
                if not session.writer.is_closing():
                    session.writer.write(data)
            await asyncio.sleep(interval_s)

    # --- connections ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: _Session | None = None
        try:
            if self.faults.refuse_connections or await reader.readexactly(4) != b"API\0":
                return
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            low, high = w.parse_version_range((await reader.readexactly(size)).decode().strip("\0"))
            version = min(high, self.server_version)
            if version < low:
                return
            session = _Session(writer=writer, version=version)
            connected = datetime.now(UTC).astimezone(w.NEW_YORK).strftime("%Y%m%d %H:%M:%S EST")
            writer.write(w.frame([version, connected]))
            buffer = bytearray()
            while chunk := await reader.read(65536):
                buffer += chunk
                for fields in w.split_frames(buffer):
                    out = await self._call(self._handle, session, fields)
                    if out:
                        writer.write(b"".join(out))
                    if session.refused:
                        await writer.drain()
                        return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            if session is not None:
                self._forget(session)
            writer.close()

    def _forget(self, session: _Session) -> None:
        # A new list, not an in-place change: the book thread iterates over the old one meanwhile.
        self._sessions = [s for s in self._sessions if s is not session]

    def _handle(self, s: _Session, f: list[str]) -> Frames:
        """One client message (on the book thread): the frames that answer it."""
        try:
            msg_id = int(f[0])
        except (IndexError, ValueError):
            return []
        if not s.ready:
            return self._start_api(s, f) if msg_id == w.START_API else []
        warn: Frames = []
        if self.faults.pacing > 0:
            self.faults.pacing -= 1
            warn = [w.error(-1, 100, "Max rate of messages per second has been exceeded:max=50 rec=51 (1)",
                            s.version)]
        handler = self._handlers().get(msg_id)
        if handler is None:
            log.info("tws face: message %s not implemented, ignored", msg_id)
            return []
        try:
            return warn + handler(s, f)
        except (IndexError, ValueError) as exc:
            req_id = int(f[2]) if len(f) > 2 and f[2].lstrip("-").isdigit() else -1
            return [*warn, w.error(req_id, 321, f"Error validating request: {exc}", s.version)]

    def _handlers(self) -> dict[int, Callable[[_Session, list[str]], Frames]]:
        return {w.PLACE_ORDER: self._place, w.CANCEL_ORDER: self._cancel, w.REQ_OPEN_ORDERS: self._open_orders,
                w.REQ_ALL_OPEN_ORDERS: self._all_open_orders, w.REQ_AUTO_OPEN_ORDERS: lambda s, f: [],
                w.REQ_COMPLETED_ORDERS: self._completed_orders, w.REQ_EXECUTIONS: self._executions,
                w.REQ_GLOBAL_CANCEL: self._global_cancel, w.REQ_POSITIONS: self._positions,
                w.CANCEL_POSITIONS: self._cancel_positions, w.REQ_ACCOUNT_UPDATES: self._account_updates,
                w.REQ_ACCOUNT_UPDATES_MULTI: self._account_updates_multi,
                w.CANCEL_ACCOUNT_UPDATES_MULTI: lambda s, f: [], w.REQ_ACCOUNT_SUMMARY: self._account_summary,
                w.CANCEL_ACCOUNT_SUMMARY: lambda s, f: [], w.REQ_CONTRACT_DETAILS: self._contract_details,
                w.REQ_IDS: self._req_ids, w.REQ_MANAGED_ACCTS: lambda s, f: [self._managed(s)],
                w.REQ_CURRENT_TIME: lambda s, f: [w.frame([49, 1, int(self.clock.now().timestamp())])],
                w.REQ_MARKET_DATA_TYPE: lambda s, f: [], w.REQ_HISTORICAL_DATA: self._historical,
                w.CANCEL_HISTORICAL_DATA: self._cancel_sub, w.REQ_REAL_TIME_BARS: self._real_time_bars,
                w.CANCEL_REAL_TIME_BARS: self._cancel_sub}

    def _managed(self, s: _Session) -> bytes:
        return w.frame([15, 1, ",".join(self.accounts)])

    def _start_api(self, s: _Session, f: list[str]) -> Frames:
        client_id = int(f[2])
        if any(other.client_id == client_id for other in self._sessions):
            s.refused = True  # as TWS: the error, then the socket is closed
            return [w.error(-1, 326, "Unable to connect as the client id is already in use. "
                            "Retry with a unique client id.", s.version)]
        s.client_id, s.ready = client_id, True
        self._sessions = [*self._sessions, s]
        self.connections += 1
        out = [self._managed(s), w.frame([9, 1, self.ids.next_valid_id(client_id)])]
        return out + [w.error(-1, code, text, s.version) for code, text in _FARMS]

    def _req_ids(self, s: _Session, f: list[str]) -> Frames:
        return [w.frame([9, 1, self.ids.next_valid_id(s.client_id)])]

    # --- views of the book ----------------------------------------------------------------------

    def _view(self, o: BrokerOrder, row: IdRow | None = None) -> w.OrderView:
        row = row or self.ids.ensure(o.broker_order_id, o.client_order_id)
        status = _IB_STATUS[o.status]
        last = 0.0
        if o.filled_qty:
            fills = self.sim.fills_for(o.broker_order_id)
            last = float(fills[-1].price) if fills else 0.0
        completed = {OrderStatus.FILLED: "Filled", OrderStatus.CANCELED: "Cancelled by Trader",
                     OrderStatus.EXPIRED: "Cancelled by System", OrderStatus.REJECTED: f"Rejected: {o.reason}",
                     OrderStatus.REPLACED: "Cancelled by Trader"}
        return w.OrderView(
            order_id=row.order_id, client_id=row.client_id, perm_id=row.perm_id, order_ref=row.order_ref,
            account=self.account, symbol=o.symbol, action="BUY" if o.side is Side.BUY else "SELL", qty=o.qty,
            order_type=w.ORDER_TYPES[o.type.value], lmt_price=_f(o.limit_price), aux_price=_f(o.stop_price),
            tif=o.time_in_force.value.upper(), status=status, filled=o.filled_qty,
            avg_fill_price=_f(o.avg_fill_price) or 0.0, last_fill_price=last,
            completed_time=w.ib_time(o.updated_at) if o.status.is_terminal else "",
            completed_status=completed.get(o.status, ""))

    def _exec(self, fill: Fill) -> w.ExecView:
        row = self.ids.ensure(fill.broker_order_id, fill.client_order_id)
        fills = sorted(self.sim.fills_for(fill.broker_order_id), key=lambda f: _fill_no(f.fill_id))
        cum, paid = 0, Decimal(0)
        for f in fills:
            cum, paid = cum + f.qty, paid + f.price * f.qty
            if f.fill_id == fill.fill_id:
                break
        return w.ExecView(
            exec_id=f"{row.perm_id:08x}.{_fill_no(fill.fill_id):08x}.01.01", order_id=row.order_id,
            client_id=row.client_id, perm_id=row.perm_id, order_ref=row.order_ref, account=self.account,
            symbol=fill.symbol, side="BOT" if fill.side is Side.BUY else "SLD", shares=fill.qty,
            price=float(fill.price), time=fill.ts, cum_qty=cum, avg_price=float(paid / cum) if cum else 0.0)

    def _exec_frames(self, e: w.ExecView, req_id: int, version: int) -> Frames:
        details = w.exec_details(e, req_id, version)
        report = w.commission_report(e.exec_id, w.commission(e.shares, e.price))
        return [report, details] if self.faults.commission_first else [details, report]

    def _owners(self, row: IdRow) -> list[_Session]:
        return [s for s in self._sessions if s.ready and row.order_id > 0 and s.client_id == row.client_id]

    # --- orders ---------------------------------------------------------------------------------

    def _place(self, s: _Session, f: list[str]) -> Frames:
        order_id, symbol, sec_type, currency = int(f[1]), f[3], f[4], f[11]
        action, qty_text, otype, lmt, aux, tif, account, order_ref = (f[16], f[17], f[18], f[19], f[20],
                                                                      f[21].upper() or "DAY", f[23], f[26])
        existing = self.ids.by_order_id(s.client_id, order_id) if order_id > 0 else None
        if existing is not None:
            return self._modify(s, existing, symbol, action, qty_text, otype, lmt, aux)
        err = self._order_error(s, order_id, symbol, sec_type, currency, action, qty_text, otype, tif, account)
        if err:
            return [w.error(order_id, err[0], err[1], s.version)]
        qty = int(float(qty_text))
        perm = self.ids.next_perm_id()
        ref = order_ref or f"tws-{s.client_id}-{order_id}"
        cid = ref if self.sim.get_by_client_id(ref) is None else f"{ref}#{perm}"  # IB does not enforce orderRef
        spec = OrderSpec(client_order_id=cid, symbol=symbol, side=Side.BUY if action == "BUY" else Side.SELL,
                         qty=qty, type=OrderType(w.FROM_ORDER_TYPE[otype]), time_in_force=TimeInForce(tif.lower()),
                         limit_price=_price(lmt) if otype in ("LMT", "STP LMT") else None,
                         stop_price=_price(aux) if otype in ("STP", "STP LMT") else None)
        if self.faults.reject > 0:
            self.faults.reject -= 1
            return self._rejected_order(s, order_id, spec, ref, self.faults.reject_reason)
        try:
            order = self.sim.submit(spec)
        except OrderRejected as exc:
            return self._rejected_order(s, order_id, spec, ref, str(exc))
        row = self.ids.add(order.broker_order_id, perm, order_id, s.client_id, ref)
        view = self._view(order, row)
        self._sent[order.broker_order_id] = (view.status, view.filled)
        if self.faults.silent_place > 0:
            self.faults.silent_place -= 1
            return []
        return [w.open_order(view, s.version), w.order_status(view)]

    def _modify(self, s: _Session, row: IdRow, symbol: str, action: str, qty_text: str, otype: str, lmt: str,
                aux: str) -> Frames:
        """placeOrder with a live order's id: a modification (quantity, limit, stop) in place."""
        current = self.sim.get_order(row.broker_order_id)
        if current.status.is_terminal:
            return [w.error(row.order_id, 104, f"Can't modify a {_IB_STATUS[current.status].lower()} order",
                            s.version)]
        same = (symbol == current.symbol and action == ("BUY" if current.side is Side.BUY else "SELL")
                and otype == w.ORDER_TYPES[current.type.value])
        if not same:
            return [w.error(row.order_id, 105, "Order being modified does not match original order", s.version)]
        try:
            qty = float(qty_text)
            order = self.sim.modify(row.broker_order_id, qty=int(qty) if qty == int(qty) else -1,
                                    limit_price=_price(lmt) if otype in ("LMT", "STP LMT") else None,
                                    stop_price=_price(aux) if otype in ("STP", "STP LMT") else None)
        except (OrderRejected, ValueError, ArithmeticError) as exc:
            return [w.error(row.order_id, 105, f"Order modification rejected: {exc}", s.version)]
        except NotCancelable as exc:
            return [w.error(row.order_id, 104, f"Can't modify the order: {exc}", s.version)]
        view = self._view(order, row)
        self._sent[order.broker_order_id] = (view.status, view.filled)
        return [w.open_order(view, s.version), w.order_status(view)]

    def _order_error(self, s: _Session, order_id: int, symbol: str, sec_type: str, currency: str, action: str,
                     qty_text: str, otype: str, tif: str, account: str) -> tuple[int, str] | None:
        if order_id <= 0 or self.ids.by_order_id(s.client_id, order_id) is not None \
                or order_id < self.ids.next_valid_id(s.client_id) - 1_000_000:
            return 103, "Duplicate order id"
        if sec_type != "STK" or currency not in ("USD", "") or symbol not in self.market.symbols:
            return 200, "No security definition has been found for the request"
        if account and account not in self.accounts:
            return 321, f"Error validating request:-'bN' : cause - The account code {account} is invalid"
        if action not in ("BUY", "SELL"):
            return 321, f"Error validating request:-'bN' : cause - Invalid action {action}"
        try:
            qty = float(qty_text)
        except ValueError:
            qty = 0.0
        if qty <= 0 or qty != int(qty):
            return 434, "The order size cannot be zero"
        if otype not in w.FROM_ORDER_TYPE:
            return 387, f"Unsupported order type for this exchange and security type: {otype}"
        if tif not in ("DAY", "GTC"):
            return 321, f"Error validating request:-'bN' : cause - Invalid time in force {tif}"
        return None

    def _rejected_order(self, s: _Session, order_id: int, spec: OrderSpec, ref: str, reason: str) -> Frames:
        """Error 201, and the order kept (in memory) among the completed orders, as TWS shows it."""
        self.ids.note_used(s.client_id, order_id)
        now = self.clock.now()
        view = w.OrderView(order_id=order_id, client_id=s.client_id, perm_id=self.ids.reserve_perm_id(),
                           order_ref=ref, account=self.account, symbol=spec.symbol,
                           action="BUY" if spec.side is Side.BUY else "SELL", qty=spec.qty,
                           order_type=w.ORDER_TYPES[spec.type.value], lmt_price=_f(spec.limit_price),
                           aux_price=_f(spec.stop_price), tif=spec.time_in_force.value.upper(), status="Cancelled",
                           filled=0, avg_fill_price=0.0, last_fill_price=0.0, completed_time=w.ib_time(now),
                           completed_status=f"Rejected: {reason}")
        self._rejected.append(view)
        return [w.error(order_id, 201, f"Order rejected - reason:{reason}", s.version), w.order_status(view)]

    def _cancel(self, s: _Session, f: list[str]) -> Frames:
        order_id = int(f[2])
        row = self.ids.by_order_id(s.client_id, order_id)
        if row is None:
            return [w.error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.",
                            s.version)]
        try:
            self.sim.cancel(row.broker_order_id)
        except (NotCancelable, OrderNotFound):
            state = self._view(self.sim.get_order(row.broker_order_id), row).status
            return [w.error(order_id, 10148, f"OrderId {order_id} that needs to be cancelled cannot be "
                            f"cancelled, state: {state}.", s.version)]
        return []  # the poller reports Cancelled + 202

    def _global_cancel(self, s: _Session, f: list[str]) -> Frames:
        for o in self.sim.open_orders():
            try:
                self.sim.cancel(o.broker_order_id)
            except (NotCancelable, OrderNotFound):
                pass  # filled in the meantime
        return []

    def _open_orders(self, s: _Session, f: list[str], everyone: bool = False) -> Frames:
        out: Frames = []
        for o in self.sim.open_orders():
            view = self._view(o)
            if everyone or (view.client_id == s.client_id and view.order_id > 0):
                out += [w.open_order(view, s.version), w.order_status(view)]
        return [*out, w.frame([53, 1])]

    def _all_open_orders(self, s: _Session, f: list[str]) -> Frames:
        return self._open_orders(s, f, everyone=True)

    def _completed_orders(self, s: _Session, f: list[str]) -> Frames:
        views = [self._view(o) for o in self.sim.all_orders() if o.status.is_terminal] + self._rejected
        views.sort(key=lambda v: v.perm_id)
        return [*[w.completed_order(v, s.version) for v in views], w.frame([102])]

    def _executions(self, s: _Session, f: list[str]) -> Frames:
        req_id, client, account, since, symbol, side = int(f[2]), int(f[3] or 0), f[4], f[5], f[6], f[9]
        start = _parse_ib_time(since) if since else None
        out: Frames = []
        for fill in sorted(self.sim.all_fills(), key=lambda x: (x.ts, x.fill_id)):
            e = self._exec(fill)
            if (client and e.client_id != client) or (account and account != self.account) \
                    or (symbol and symbol != e.symbol) or (start and fill.ts < start) \
                    or (side and side[0] != e.side[0] and side not in ("BOT", "SLD")):
                continue
            out += self._exec_frames(e, req_id, s.version)
        return [*out, w.frame([55, 1, req_id])]

    # --- account and positions --------------------------------------------------------------------

    def _mark(self, symbol: str, fallback: Decimal) -> float:
        q = self.market.quote(symbol, self.clock.now())
        if q is not None:
            return round(q.mid, 4)
        last = self.market.history(symbol, self.clock.now(), 1)
        return last[-1].close if last else float(fallback)

    def _positions(self, s: _Session, f: list[str]) -> Frames:
        s.positions = True
        out = [w.position(self.account, p.symbol, p.qty, float(p.avg_entry_price)) for p in self.sim.positions()]
        return [*out, w.frame([62, 1])]

    def _cancel_positions(self, s: _Session, f: list[str]) -> Frames:
        s.positions = False
        return []

    def _account_values(self) -> list[tuple[str, str]]:
        a = self.sim.account()
        gross = sum(abs(p.qty) * self._mark(p.symbol, p.avg_entry_price) for p in self.sim.positions())
        return [("NetLiquidation", str(a.equity)), ("TotalCashValue", str(a.cash)), ("CashBalance", str(a.cash)),
                ("BuyingPower", str(a.buying_power)), ("AvailableFunds", str(a.buying_power)),
                ("EquityWithLoanValue", str(a.equity)), ("GrossPositionValue", f"{gross:.2f}")]

    def _account_updates(self, s: _Session, f: list[str]) -> Frames:
        s.account_updates = f[2] == "1"
        if not s.account_updates:
            return []
        out = [w.frame([6, 2, tag, value, "USD", self.account]) for tag, value in self._account_values()]
        out += [w.portfolio(self.account, p.symbol, p.qty, self._mark(p.symbol, p.avg_entry_price),
                            float(p.avg_entry_price)) for p in self.sim.positions()]
        return [*out, w.frame([8, 1, self.clock.now().astimezone(w.NEW_YORK).strftime("%H:%M")]),
                w.frame([54, 1, self.account])]

    def _account_updates_multi(self, s: _Session, f: list[str]) -> Frames:
        req_id, model = int(f[2]), f[4]
        out = [w.frame([73, 1, req_id, self.account, model, tag, value, "USD"])
               for tag, value in self._account_values()]
        return [*out, w.frame([74, 1, req_id])]

    def _account_summary(self, s: _Session, f: list[str]) -> Frames:
        req_id, tags = int(f[2]), set(f[4].split(",")) if len(f) > 4 else set()
        out = [w.frame([63, 1, req_id, self.account, tag, value, "USD"])
               for tag, value in self._account_values() if not tags or "All" in tags or tag in tags]
        return [*out, w.frame([64, 1, req_id])]

    # --- contracts and bars ---------------------------------------------------------------------

    def _symbol_of(self, f: list[str], at: int) -> str | None:
        """The stock a request's contract (12 fields from ``at``) names, or None."""
        con, symbol, sec_type, currency = int(f[at] or 0), f[at + 1], f[at + 2], f[at + 9]
        if not symbol and con:
            symbol = next((sym for sym in self.market.symbols if w.con_id(sym) == con), "")
        ok = symbol in self.market.symbols and sec_type in ("STK", "") and currency in ("USD", "")
        return symbol if ok and (not con or con == w.con_id(symbol)) else None

    def _contract_details(self, s: _Session, f: list[str]) -> Frames:
        req_id = int(f[2])
        symbol = self._symbol_of(f, 3)
        if symbol is None:
            return [w.error(req_id, 200, "No security definition has been found for the request", s.version)]
        return [w.contract_details(req_id, symbol, s.version), w.frame([52, 1, req_id])]

    # --- what changed in the book -------------------------------------------------------------------

    def _collect(self) -> list[tuple[_Session, bytes]]:
        """New fills and order changes since the last round, to the clients that placed them."""
        out: list[tuple[_Session, bytes]] = []
        due = time.monotonic()
        out += [(s, data) for at, s, data in self._delayed if at <= due]
        self._delayed = [item for item in self._delayed if item[0] > due]
        batch = self.sim.poll(self._cursor)
        self._cursor = batch.cursor
        for fill in batch.fills:
            e = self._exec(fill)
            row = self.ids.ensure(fill.broker_order_id, fill.client_order_id)
            for s in self._owners(row):
                frames = self._exec_frames(e, -1, s.version)
                if self.faults.exec_delay_s > 0:
                    self._delayed += [(due + self.faults.exec_delay_s, s, data) for data in frames]
                else:
                    out += [(s, data) for data in frames]
            out += self._position_updates(fill.symbol)
        for order in {o.broker_order_id: o for o in batch.orders}.values():
            view = self._view(order)
            if self._sent.get(order.broker_order_id) == (view.status, view.filled):
                continue
            self._sent[order.broker_order_id] = (view.status, view.filled)
            for s in self._owners(self.ids.ensure(order.broker_order_id, order.client_order_id)):
                frames = [w.open_order(view, s.version), w.order_status(view)]
                if order.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED):
                    frames.append(w.error(view.order_id, 202, "Order Canceled - reason:", s.version))
                out += [(s, data) for data in frames]
        return out

    def _position_updates(self, symbol: str) -> list[tuple[_Session, bytes]]:
        held = next((p for p in self.sim.positions() if p.symbol == symbol), None)
        qty, avg = (held.qty, float(held.avg_entry_price)) if held else (0, 0.0)
        out = [(s, w.position(self.account, symbol, qty, avg)) for s in self._sessions if s.positions]
        mark = self._mark(symbol, Decimal(str(avg)))
        return out + [(s, w.portfolio(self.account, symbol, qty, mark, avg)) for s in self._sessions
                      if s.account_updates]

    # --- fault knobs (call on the server's loop: TwsServerThread.run_coroutine) ----------------------

    async def drop_connections(self) -> int:
        """Abort every API socket (no goodbye), as a network failure would."""
        sessions = await self._call(lambda: list(self._sessions))
        for s in sessions:
            s.writer.transport.abort()
        return len(sessions)

    async def send_system(self, code: int) -> None:
        """1100 (connectivity lost), 1101 (restored, data lost), 1102 (restored, data kept)."""
        text = {1100: "Connectivity between IB and Trader Workstation has been lost.",
                1101: "Connectivity between IB and TWS has been restored- data lost.",
                1102: "Connectivity between IB and TWS has been restored- data maintained."}[code]
        for s in await self._call(lambda: list(self._sessions)):
            s.writer.write(w.error(-1, code, text, s.version))

    async def gateway_restart(self) -> None:
        """Drop everyone and forget order ids: ``nextValidId`` starts over at 1 (permIds go on)."""
        await self.drop_connections()
        await self._call(self.ids.restart)

    async def session_count(self) -> int:
        return await self._call(lambda: len(self._sessions))

    async def subscriptions(self) -> int:
        """How many bar subscriptions are live (tests wait on it)."""
        return await self._call(lambda: sum(len(s.subs) for s in self._sessions))

    async def arm(self, **changes: Any) -> None:
        """Set fault fields (``reject``, ``reject_reason``, ``commission_first``, ``exec_delay_s``)."""
        def apply() -> None:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise ValueError(f"no fault knob {name!r}")
                setattr(self.faults, name, value)
        await self._call(apply)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _price(text: str) -> Decimal:
    value = Decimal(text)
    if value <= 0:
        raise ValueError(f"price must be positive, got {text}")
    return value


def _fill_no(fill_id: str) -> int:
    return int(fill_id.rsplit("-", 1)[1])


def _anchor(db_path: Path, settings: Settings) -> NowSource:
    """The same clock ``steadyhand run`` anchors from ``[sim]`` (start, replay, speed)."""
    return anchor_run_clock(db_path, settings.sim)[0]


from steadyhand.sim.server.tws_run import TwsServerThread, main  # noqa: E402 - re-exported; no cycle

__all__ = ["TwsServer", "TwsServerThread", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
