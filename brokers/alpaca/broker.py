"""Alpaca (paper) behind the Broker interface, on alpaca-py.

- **REST** (``TradingClient``): submit with the client order id, cancel, look up by client id, open
  orders, positions, account, clock, calendar. alpaca-py retries 429 and 504 itself, three times
  with a fixed 3 s sleep and no timeout at all; here its own retries are switched off
  (``_retry = 0``), every request gets a timeout and passes a client-side rate limiter (default 180
  a minute, under Alpaca's 200), and tenacity retries what is safe to retry with jittered backoff.
- **Errors** (DESIGN §5): 422 "client_order_id must be unique" → :class:`DuplicateClientOrderId`
  (accepted earlier: look it up, never resubmit); 403 → :class:`OrderRejected` with Alpaca's reason;
  404 → :class:`OrderNotFound` / None; 429 and 5xx → retried, then :class:`TransientBrokerError`; a
  submit that times out → :class:`UnknownOutcome`. A retried submit re-posts the *same* client order
  id, so it can never place a second order: a duplicate reply to a retry is our first attempt.
- **Updates** (``poll``): the trade-updates stream (``TradingStream``) runs in a background thread
  and queues order snapshots and fills. While it is down the broker polls REST instead (recent
  orders, every order it watches, fill activities) at most every ``fallback_poll_s`` and says so
  (``polling_fallback``, a warning in the log); when it comes back, one more REST sweep covers
  what happened while it was away. Fills carry source-independent ids (``wire.fill_id``), so
  a fill seen on both paths is reported once.
- **Safety**: paper unless ``[alpaca] paper = false`` *and* ``allow_live = true``; the keys come only
  from ``ALPACA_API_KEY`` / ``ALPACA_SECRET_KEY`` and are never logged or put in a message.

URL overrides (``[alpaca]`` ``trading_url`` ... ) point everything at ``steadyhand exchange serve``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import (
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
)
from alpaca.trading.stream import TradingStream
from steadyhand.brokers.alpaca import wire
from steadyhand.brokers.alpaca.transport import (
    RateLimiter,
    StreamRunner,
    credentials,
    endpoints,
    translate,
    tune_rest_client,
    websocket_params,
)
from steadyhand.brokers.base import (
    BrokerError,
    BrokerUpdates,
    DuplicateClientOrderId,
    NotCancelable,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    replacement_client_id,
    submit_each,
)
from steadyhand.config import AlpacaSettings, Settings
from steadyhand.domain import (
    Account,
    BrokerOrder,
    Fill,
    MarketClock,
    OrderSpec,
    OrderStatus,
    OrderType,
    Position,
    TopOfBook,
)
from steadyhand.runtime.logs import module_logger
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

log = module_logger("steadyhand.brokers.alpaca")  # looked up per call: see logs.module_logger

_ACTIVITY_PAGE = 100
_MAX_ACTIVITY_PAGES = 50
QUOTE_TIMEOUT_S = 1.0  # the latest-quote request after a submit: short, it only feeds the execution report
_ORDER_PAGE = 500  # Alpaca's largest page of orders
_MAX_ORDER_PAGES = 1000
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Trade updates stream with up/down hooks
# ---------------------------------------------------------------------------------------------


class _TradeUpdates(TradingStream):
    """alpaca-py's TradingStream, telling us when it is listening and when it went away."""

    def __init__(self, on_up: Callable[[], None], on_down: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_up, self._on_down = on_up, on_down

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("stream") == "listening" and "trade_updates" in (msg.get("data") or {}).get("streams", []):
            self._on_up()
        await super()._dispatch(msg)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._on_down()


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------


class AlpacaBroker:
    """:class:`~steadyhand.brokers.base.Broker` on an Alpaca (paper) account."""

    name = "alpaca"

    def __init__(
        self,
        settings: AlpacaSettings,
        *,
        api_key: str,
        secret_key: str,
        stream: bool = True,
        fallback_poll_s: float = 2.0,
        retry_attempts: int = 3,
        retry_wait_s: float = 0.25,
        reconnect_min_s: float = 1.0,
    ) -> None:
        self.endpoints = endpoints(settings)
        self.settings = settings
        self.fallback_poll_s = fallback_poll_s
        self._retry_attempts = max(1, retry_attempts)
        self._retry_wait_s = retry_wait_s
        self.limiter = RateLimiter(settings.max_requests_per_minute)
        self._client = TradingClient(api_key, secret_key, paper=self.endpoints.paper,
                                     url_override=self.endpoints.trading_url)
        tune_rest_client(self._client, settings.timeout_s, self.limiter)
        # The quote at submit (issue 15): Alpaca's latest quote, on its own budget of data requests.
        self._data: StockHistoricalDataClient | None = None
        self.data_limiter = RateLimiter(settings.max_requests_per_minute)
        if settings.quote_at_submit:
            self._data = StockHistoricalDataClient(api_key, secret_key, url_override=self.endpoints.data_url)
            tune_rest_client(self._data, min(settings.timeout_s, QUOTE_TIMEOUT_S), None)
        self._instance = uuid.uuid4().hex[:8]  # a cursor from another instance starts over
        self._lock = threading.Lock()
        self._events: list[tuple[int, BrokerOrder | Fill]] = []
        self._seq = 0
        self._known: dict[str, tuple[OrderStatus, int]] = {}  # order id -> state the consumer knows
        self._fills_seen: set[str] = set()
        self._fill_qty: dict[str, int] = {}  # order id -> qty of the fills reported so far
        self._cids: dict[str, str] = {}  # order id -> client order id, for all_fills
        self._up = threading.Event()
        self._up_generation = 0
        self._swept_generation = -1
        self._last_sweep = 0.0
        self._said_fallback = False
        self._stream: StreamRunner | None = None
        if stream:
            trade_stream = _TradeUpdates(self._stream_up, self._stream_down, api_key=api_key,
                                         secret_key=secret_key, paper=self.endpoints.paper,
                                         url_override=self.endpoints.trading_stream_url,
                                         websocket_params=websocket_params())
            trade_stream._reconnect_min_backoff = reconnect_min_s
            trade_stream.subscribe_trade_updates(self._on_trade_update)
            self._stream = StreamRunner(trade_stream, "alpaca-trade-updates")
            self._stream.start()

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AlpacaBroker:
        key, secret = credentials(environ)
        return cls(settings.alpaca, api_key=key, secret_key=secret, **kwargs)

    # --- state of the stream ------------------------------------------------------------------------

    @property
    def stream_connected(self) -> bool:
        return self._up.is_set()

    @property
    def polling_fallback(self) -> bool:
        """True while updates come from REST polling because the stream is down."""
        return not self._up.is_set()

    def _stream_up(self) -> None:
        with self._lock:
            self._up_generation += 1
        self._up.set()
        log.info("alpaca trade updates stream listening")

    def _stream_down(self) -> None:
        if self._up.is_set():
            self._up.clear()
            self._said_fallback = False
            log.warning("alpaca trade updates stream down")

    async def _on_trade_update(self, update: Any) -> None:
        try:
            order = wire.order_from_alpaca(update.order)
            event = str(getattr(update.event, "value", update.event))
            fills = [wire.fill_from_trade_update(update)] if event in ("fill", "partial_fill") else []
        except Exception:  # noqa: BLE001 - one odd message must not kill the stream
            log.exception("unreadable trade update")
            return
        with self._lock:
            self._record([order], fills)

    # --- the event log behind poll() ------------------------------------------------------------------

    def _record(self, orders: list[BrokerOrder], fills: list[Fill]) -> None:
        """Queue what the consumer does not know yet (call with the lock held)."""
        for f in fills:
            if f.fill_id in self._fills_seen:
                continue
            self._fills_seen.add(f.fill_id)
            self._fill_qty[f.broker_order_id] = self._fill_qty.get(f.broker_order_id, 0) + f.qty
            self._push(f)
        for o in orders:
            known = self._known.get(o.broker_order_id)
            if known is not None:
                status, filled = known
                if status.is_terminal or (o.filled_qty < filled) or (status, filled) == (o.status, o.filled_qty):
                    continue  # nothing new, or an older snapshot arriving late
            self._known[o.broker_order_id] = (o.status, o.filled_qty)
            self._push(o)

    def _push(self, item: BrokerOrder | Fill) -> None:
        self._seq += 1
        self._events.append((self._seq, item))

    def _watch(self, order: BrokerOrder) -> BrokerOrder:
        """Sweeps follow this order from now on. Nothing is assumed about what the consumer did with
        the answer, so its current state is still reported by ``poll`` (harmless if known)."""
        with self._lock:
            self._known.setdefault(order.broker_order_id, (OrderStatus.SUBMITTED, -1))
        return order

    def _cursor(self, seq: int) -> str:
        return f"{self._instance}:{seq}"

    def poll(self, cursor: str | None) -> BrokerUpdates:
        if cursor is None:
            with self._lock:
                return BrokerUpdates(orders=(), fills=(), cursor=self._cursor(self._seq))
        self._maybe_sweep()
        instance, _, seq = cursor.partition(":")
        since = int(seq) if instance == self._instance and seq.isdigit() else 0
        with self._lock:
            items = [item for s, item in self._events if s > since]
            self._events = [(s, item) for s, item in self._events if s > since]  # acknowledged ones go
            latest = self._seq
        orders = tuple(i for i in items if isinstance(i, BrokerOrder))
        fills = tuple(i for i in items if isinstance(i, Fill))
        return BrokerUpdates(orders=orders, fills=fills, cursor=self._cursor(latest))

    def _maybe_sweep(self) -> None:
        up = self._up.is_set()
        with self._lock:
            generation = self._up_generation
        if up and self._swept_generation == generation:
            return  # the stream is up and what happened before it came up has been swept
        if not up and time.monotonic() - self._last_sweep < self.fallback_poll_s:
            return
        if not up and not self._said_fallback:
            self._said_fallback = True
            log.warning("alpaca trade updates stream is down: polling REST every %.1f s", self.fallback_poll_s)
        self._last_sweep = time.monotonic()
        try:
            self.sweep()
        except BrokerError as exc:
            log.warning("alpaca REST sweep failed: %r", exc)
            return
        if up:
            self._swept_generation = generation

    def sweep(self) -> None:
        """Catch up by REST: recent orders, every watched open order, and their missing fills."""
        recent = self._list_orders(QueryOrderStatus.ALL, limit=100)
        by_id = {o.broker_order_id: o for o in recent}
        with self._lock:
            watched = [oid for oid, (status, _) in self._known.items() if not status.is_terminal and oid not in by_id]
        for oid in watched:
            try:
                by_id[oid] = self._get_order(oid)
            except OrderNotFound:
                continue
        with self._lock:
            short = [o for o in by_id.values() if o.filled_qty > self._fill_qty.get(o.broker_order_id, 0)]
        fills = self._fills_of(short) if short else []
        with self._lock:
            self._record(list(by_id.values()), fills)

    # --- REST with retries ----------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], *, submit: bool = False) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self._retry_attempts),
            wait=wait_exponential_jitter(multiplier=self._retry_wait_s, max=max(self._retry_wait_s, 2.0),
                                        jitter=self._retry_wait_s),
            retry=retry_if_exception_type(TransientBrokerError),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    return fn()
                except Exception as exc:  # noqa: BLE001 - classified right here
                    raise translate(exc, submit=submit) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _list_orders(self, status: QueryOrderStatus, limit: int) -> list[BrokerOrder]:
        request = GetOrdersRequest(status=status, limit=limit, nested=False)
        return [wire.order_from_alpaca(o) for o in self._call(lambda r=request: self._client.get_orders(r))]

    def _get_order(self, broker_order_id: str) -> BrokerOrder:
        return wire.order_from_alpaca(self._call(lambda: self._client.get_order_by_id(broker_order_id)))

    def _fills_of(self, orders: list[BrokerOrder]) -> list[Fill]:
        """Every fill of these orders, from the FILL account activities since the oldest was placed."""
        cids = {o.broker_order_id: o.client_order_id for o in orders}
        after = min(o.submitted_at for o in orders) - timedelta(seconds=1)
        params: dict[str, Any] = {"after": wire.iso(after), "direction": "asc", "page_size": _ACTIVITY_PAGE}
        fills: list[Fill] = []
        for _ in range(_MAX_ACTIVITY_PAGES):
            page = self._call(lambda: self._client.get("/account/activities/FILL", dict(params))) or []
            fills.extend(wire.fill_from_activity(a, cids[a["order_id"]]) for a in page if a.get("order_id") in cids)
            if len(page) < _ACTIVITY_PAGE:
                break
            params["page_token"] = page[-1]["id"]
        return fills

    # --- Broker ---------------------------------------------------------------------------------------

    def submit_many(self, specs: Sequence[OrderSpec], between: Callable[[], None] | None = None,
                    ) -> list[BrokerOrder | BrokerError]:
        """One by one under the rate limit: no batch order call (``base.submit_each``)."""
        return submit_each(self, specs, between)

    def submit(self, spec: OrderSpec) -> BrokerOrder:
        request = _order_request(spec)
        attempts = 0

        def post() -> Any:
            nonlocal attempts
            attempts += 1
            return self._client.submit_order(request)

        try:
            order = wire.order_from_alpaca(self._call(post, submit=True))
        except DuplicateClientOrderId:
            if attempts < 2:
                raise  # the first attempt: accepted some time before this call
            found = self.get_by_client_id(spec.client_order_id)
            if found is None:
                raise
            return found  # our own earlier attempt landed although it reported an error
        quote = self._quote_at_submit(spec.symbol)  # after the submit: the order never waits for it
        return replace(self._watch(order), quote=quote)

    def _quote_at_submit(self, symbol: str) -> TopOfBook | None:
        """Alpaca's latest quote, one data request, best effort: None when it would wait for the
        rate limiter, fails or times out (the execution report then says the broker gave none)."""
        if self._data is None or not self.data_limiter.try_acquire():
            return None
        try:
            quotes = self._data.get_stock_latest_quote(
                StockLatestQuoteRequest(symbol_or_symbols=symbol, feed=DataFeed(self.settings.feed)))
            q = quotes.get(symbol) if isinstance(quotes, dict) else None
        except Exception as exc:  # a quote is worth no error in the order path
            log.debug("alpaca latest quote for %s failed: %r", symbol, exc)
            return None
        if q is None or not q.bid_price or not q.ask_price:
            return None
        return TopOfBook(symbol, q.timestamp, float(q.bid_price), float(q.ask_price), "alpaca")

    def cancel(self, broker_order_id: str) -> None:
        try:
            self._call(lambda: self._client.cancel_order_by_id(broker_order_id))
        except BrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, APIError) and cause.status_code == 422:
                raise NotCancelable(str(exc)) from cause
            raise

    def replace(self, broker_order_id: str, qty: int | None = None, limit_price: Decimal | None = None,
                stop_price: Decimal | None = None) -> BrokerOrder:
        """PATCH /v2/orders/{id} (alpaca-py ``replace_order_by_id``): Alpaca makes a new order for what
        is left to trade (``qty`` is the new total: what the old order filled is subtracted), with the
        derived client id :func:`replacement_client_id`, so an attempt that landed although its reply
        was lost is found again instead of replaced twice. Raises as :meth:`Broker.replace`."""
        old = self._get_order(broker_order_id)
        new_cid = replacement_client_id(old.client_order_id)
        if old.status.is_terminal:
            found = self.get_by_client_id(new_cid) if old.status is OrderStatus.REPLACED else None
            if found is not None and found.replaces == broker_order_id:
                return found  # an earlier attempt of this replace got there
            raise NotCancelable(f"alpaca: order {broker_order_id} is {old.status.value}: not replaceable")
        if qty is not None and qty <= old.filled_qty:
            raise OrderRejected(f"alpaca: qty {qty} is not above the {old.filled_qty} already filled")
        request = ReplaceOrderRequest(
            qty=None if qty is None else qty - old.filled_qty, client_order_id=new_cid,
            limit_price=None if limit_price is None else float(limit_price),
            stop_price=None if stop_price is None else float(stop_price))
        try:
            order = wire.order_from_alpaca(self._call(
                lambda: self._client.replace_order_by_id(broker_order_id, request), submit=True))
        except (DuplicateClientOrderId, OrderRejected) as exc:
            found = self.get_by_client_id(new_cid)
            if found is not None and found.replaces == broker_order_id:
                return found  # our own earlier attempt (a retry after a lost reply) replaced it
            cause = exc.__cause__
            if isinstance(cause, APIError) and cause.status_code == 422 and "not open" in str(exc):
                raise NotCancelable(str(exc)) from cause  # it filled or ended first
            raise
        return self._watch(order)

    def cancel_all(self) -> int:
        """DELETE /v2/orders: Alpaca cancels every open order at once (207, one status per order)."""
        responses = self._call(self._client.cancel_orders)
        return len(responses or [])

    def get_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        try:
            order = self._call(lambda: self._client.get_order_by_client_id(client_order_id))
        except OrderNotFound:
            return None
        return self._watch(wire.order_from_alpaca(order))

    def fills_for(self, broker_order_id: str) -> list[Fill]:
        return self._fills_of([self._get_order(broker_order_id)])

    def open_orders(self) -> list[BrokerOrder]:
        # Every page: reconciliation takes this list as the broker's whole open book (an order
        # past the first 500 would otherwise be looked up one by one, or, unknown, never seen).
        return [self._watch(o) for o in self._orders_paged(QueryOrderStatus.OPEN)]

    def positions(self) -> list[Position]:
        return [wire.position_from_alpaca(p) for p in self._call(self._client.get_all_positions)]

    def account(self) -> Account:
        return wire.account_from_alpaca(self._call(self._client.get_account))

    def clock(self) -> MarketClock:
        return wire.clock_from_alpaca(self._call(self._client.get_clock))

    # --- whole-account reads for tools (``steadyhand verify``); not in the Broker protocol ------------

    def all_orders(self) -> list[BrokerOrder]:
        """Every order of the account, oldest first."""
        orders = self._orders_paged(QueryOrderStatus.ALL)
        with self._lock:
            self._cids.update((o.broker_order_id, o.client_order_id) for o in orders)
        return orders

    def _orders_paged(self, status: QueryOrderStatus) -> list[BrokerOrder]:
        """The account's orders with ``status``, oldest first: ``GET /v2/orders?direction=asc``,
        paged by ``after`` (Alpaca's exclusive submitted-at bound, 500 orders a page at most)."""
        by_id: dict[str, BrokerOrder] = {}
        after: datetime | None = None
        for _ in range(_MAX_ORDER_PAGES):
            request = GetOrdersRequest(status=status, limit=_ORDER_PAGE, direction="asc", nested=False, after=after)
            page = [wire.order_from_alpaca(o) for o in self._call(lambda r=request: self._client.get_orders(r))]
            new = [o for o in page if o.broker_order_id not in by_id]
            by_id.update((o.broker_order_id, o) for o in new)
            if len(page) < _ORDER_PAGE:
                break
            if not new:
                raise BrokerError(f"more than {_ORDER_PAGE} orders submitted at one instant: cannot page on")
            # One microsecond back: orders submitted at the very instant of the page's last one are
            # not skipped (``after`` is exclusive); the repeats are dropped by id.
            after = max(o.submitted_at for o in page) - timedelta(microseconds=1)
        else:
            raise BrokerError(f"more than {_MAX_ORDER_PAGES * _ORDER_PAGE} orders: not read to the end")
        return sorted(by_id.values(), key=lambda o: (o.submitted_at, o.broker_order_id))

    def all_fills(self) -> list[Fill]:
        """Every fill of the account, oldest first: the FILL account activities
        (``GET /v2/account/activities/FILL?direction=asc``, paged by ``page_token``). Activities
        carry no client order id: it comes from the orders read by :meth:`all_orders` (an order
        placed since is looked up by id)."""
        params: dict[str, Any] = {"direction": "asc", "page_size": _ACTIVITY_PAGE}
        activities: list[dict[str, Any]] = []
        for _ in range(_MAX_ACTIVITY_PAGES * 20):
            page = self._call(lambda: self._client.get("/account/activities/FILL", dict(params))) or []
            activities.extend(page)
            if len(page) < _ACTIVITY_PAGE:
                break
            params["page_token"] = page[-1]["id"]
        else:
            raise BrokerError("too many fill activities: not read to the end")
        with self._lock:
            missing = {a["order_id"] for a in activities} - set(self._cids)
        for oid in missing:
            order = self._get_order(oid)
            with self._lock:
                self._cids[oid] = order.client_order_id
        return [wire.fill_from_activity(a, self._cids[a["order_id"]]) for a in activities]

    def calendar(self, start: date, end: date) -> list[tuple[datetime, datetime]]:
        """XNYS sessions (open, close) in UTC from Alpaca's calendar (not in the Broker protocol)."""
        request = GetCalendarRequest(start=start, end=end)
        days = self._call(lambda: self._client.get_calendar(request))
        return [(d.open.replace(tzinfo=wire.NEW_YORK).astimezone(UTC),
                 d.close.replace(tzinfo=wire.NEW_YORK).astimezone(UTC)) for d in days]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
        self._client._session.close()


def _order_request(spec: OrderSpec) -> Any:
    common: dict[str, Any] = {"symbol": spec.symbol, "qty": spec.qty, "side": spec.side.value,
                              "time_in_force": spec.time_in_force.value, "client_order_id": spec.client_order_id}
    limit = None if spec.limit_price is None else float(spec.limit_price)
    stop = None if spec.stop_price is None else float(spec.stop_price)
    if spec.type is OrderType.MARKET:
        return MarketOrderRequest(**common)
    if spec.type is OrderType.LIMIT:
        return LimitOrderRequest(**common, limit_price=limit)
    if spec.type is OrderType.STOP:
        return StopOrderRequest(**common, stop_price=stop)
    return StopLimitOrderRequest(**common, limit_price=limit, stop_price=stop)

