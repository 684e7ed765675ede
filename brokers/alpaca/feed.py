"""Market data from Alpaca for the feed actor: live bars from the stream, history by REST.

The interface the feed actor uses (all synchronous, safe to call from the actor)::

    source = AlpacaBarSource.from_settings(settings)   # keys from ALPACA_API_KEY / ALPACA_SECRET_KEY
    source.start()                                     # StockDataStream in a background thread
    bars = source.drain()                              # list[Bar]: every bar received since the last
                                                       #   call, oldest first (may be empty)
    quotes = source.latest_quotes()                    # {symbol: (bid, ask, ts)} for the price band
    past = source.history(symbols, end, count)         # list[Bar]: the last ``count`` 1-minute bars
                                                       #   of each symbol starting before ``end``
    source.connected                                   # True while the stream is subscribed
    source.close()                                     # stops the thread; idempotent

Bars are steadyhand :class:`~steadyhand.domain.Bar` values (``ts`` = bar start, UTC), passed
on as received: validation (NaN, out of order, duplicates) stays the feed's job. The stream
reconnects by itself (alpaca-py, with backoff); bars that closed while it was away are not replayed
by Alpaca, so after a reconnect the feed should ask ``history`` for the gap. Symbols are
``[alpaca] symbols`` or, when empty, the top-level ``symbols``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
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
from steadyhand.config import AlpacaSettings, Settings
from steadyhand.domain import Bar

MAX_BUFFER = 100_000  # bars kept between drains; the oldest go first if nobody drains


class _BarStream(StockDataStream):
    """alpaca-py's StockDataStream, telling us when it is subscribed and when it went away."""

    def __init__(self, source: AlpacaBarSource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._source = source

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("T") == "subscription":
            self._source._connected.set()
        await super()._dispatch(msg)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._source._connected.clear()


class AlpacaBarSource:
    """Alpaca 1-minute bars (and quotes) for the feed actor; see the module docstring."""

    def __init__(
        self,
        settings: AlpacaSettings,
        symbols: Sequence[str],
        *,
        api_key: str,
        secret_key: str,
        quotes: bool = True,
        reconnect_min_s: float = 1.0,
        requests_per_minute: int = 20,
    ) -> None:
        self.settings = settings
        self.symbols = tuple(symbols)
        self.endpoints = endpoints(settings)
        self.feed = DataFeed(settings.feed)
        self._key, self._secret = api_key, secret_key
        self._quotes_wanted = quotes
        self._reconnect_min_s = reconnect_min_s
        self._bars: deque[Bar] = deque(maxlen=MAX_BUFFER)
        self._quotes: dict[str, tuple[float, float, datetime]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._runner: StreamRunner | None = None
        # The feed's share of the account's 200 requests a minute (the OMS has most of it).
        self._client = StockHistoricalDataClient(api_key, secret_key, url_override=self.endpoints.data_url)
        tune_rest_client(self._client, settings.timeout_s, RateLimiter(requests_per_minute))

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None,
                      **kwargs: Any) -> AlpacaBarSource:
        key, secret = credentials(environ)
        symbols = settings.alpaca.symbols or settings.symbols
        return cls(settings.alpaca, symbols, api_key=key, secret_key=secret, **kwargs)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._runner is not None:
            return
        stream = _BarStream(self, api_key=self._key, secret_key=self._secret, feed=self.feed,
                            url_override=self.endpoints.data_stream_url, websocket_params=websocket_params())
        stream._reconnect_min_backoff = self._reconnect_min_s
        stream.subscribe_bars(self._on_bar, *self.symbols)
        if self._quotes_wanted:
            stream.subscribe_quotes(self._on_quote, *self.symbols)
        self._runner = StreamRunner(stream, "alpaca-bars")
        self._runner.start()

    async def _on_bar(self, bar: Any) -> None:
        converted = wire.bar_from_alpaca(bar)
        with self._lock:
            self._bars.append(converted)

    async def _on_quote(self, quote: Any) -> None:
        ts = quote.timestamp if quote.timestamp.tzinfo else quote.timestamp.replace(tzinfo=UTC)
        with self._lock:
            self._quotes[quote.symbol] = (float(quote.bid_price), float(quote.ask_price), ts.astimezone(UTC))

    def drain(self) -> list[Bar]:
        with self._lock:
            bars = list(self._bars)
            self._bars.clear()
        return bars

    def latest_quotes(self) -> dict[str, tuple[float, float, datetime]]:
        with self._lock:
            return dict(self._quotes)

    def history(self, symbols: Sequence[str], end: datetime, count: int) -> list[Bar]:
        """The last ``count`` 1-minute bars of each symbol that start before ``end``, oldest first.
        Raises a :class:`~steadyhand.brokers.base.BrokerError` when Alpaca cannot be reached."""
        if count <= 0:
            return []
        out: list[Bar] = []
        for symbol in symbols:
            # One symbol per request: Alpaca's limit counts bars across all symbols of a request.
            request = StockBarsRequest(symbol_or_symbols=symbol, timeframe=TimeFrame.Minute, end=end,
                                       limit=count, sort="desc", feed=self.feed)
            try:
                barset = self._client.get_stock_bars(request)
            except Exception as exc:  # noqa: BLE001 - classified for the caller
                raise translate(exc) from exc
            bars = [wire.bar_from_alpaca(b) for b in barset.data.get(symbol, [])]
            out.extend(b for b in bars if b.ts < end)
        out.sort(key=lambda b: (b.ts, b.symbol))
        return out

    def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None
        self._client._session.close()
