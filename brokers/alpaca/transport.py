"""Alpaca's transport, shared by the broker and the feed: endpoints and credentials, the HTTP
client's tuning (timeouts, our rate limiter, no alpaca-py retries), the error classification every
call goes through (DESIGN §5: classified by what the caller must do), and the runner of alpaca-py's
websocket streams. The keys come only from the environment and are never logged.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from steadyhand.brokers.base import (
    BrokerError,
    DuplicateClientOrderId,
    OrderNotFound,
    OrderRejected,
    TransientBrokerError,
    UnknownOutcome,
)
from steadyhand.config import AlpacaSettings
from steadyhand.runtime.logs import module_logger

log = module_logger("steadyhand.brokers.alpaca")  # looked up per call: see logs.module_logger

KEY_ENV, SECRET_ENV = "ALPACA_API_KEY", "ALPACA_SECRET_KEY"
PAPER_TRADING_URL, LIVE_TRADING_URL = "https://paper-api.alpaca.markets", "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"
PAPER_STREAM_URL, LIVE_STREAM_URL = "wss://paper-api.alpaca.markets/stream", "wss://api.alpaca.markets/stream"
DATA_STREAM_URL = "wss://stream.data.alpaca.markets/v2/{feed}"

# ---------------------------------------------------------------------------------------------
# Configuration, credentials, HTTP plumbing (shared with feed.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    paper: bool
    trading_url: str
    data_url: str
    trading_stream_url: str
    data_stream_url: str


def endpoints(settings: AlpacaSettings) -> Endpoints:
    """Where to connect; refuses live trading unless the config explicitly allows it."""
    if not settings.paper and not settings.allow_live:
        raise BrokerError("alpaca.paper is false but alpaca.allow_live is not set: live trading refused")
    paper = settings.paper
    return Endpoints(
        paper=paper,
        trading_url=(settings.trading_url or (PAPER_TRADING_URL if paper else LIVE_TRADING_URL)).rstrip("/"),
        data_url=(settings.data_url or DATA_URL).rstrip("/"),
        trading_stream_url=settings.trading_stream_url or (PAPER_STREAM_URL if paper else LIVE_STREAM_URL),
        data_stream_url=settings.data_stream_url or DATA_STREAM_URL.format(feed=settings.feed),
    )


def credentials(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    key, secret = env.get(KEY_ENV, ""), env.get(SECRET_ENV, "")
    missing = [name for name, value in ((KEY_ENV, key), (SECRET_ENV, secret)) if not value]
    if missing:
        raise BrokerError(f"alpaca needs the environment variable(s) {', '.join(missing)}")
    return key, secret


class RateLimiter:
    """A token bucket: at most ``per_minute`` requests in any minute, bursts up to ``burst``.
    ``acquire`` blocks until a token is free (shared by every thread of the process)."""

    def __init__(self, per_minute: int, burst: int = 10) -> None:
        self.rate = max(per_minute, 1) / 60.0
        self.capacity = float(max(1, min(burst, per_minute)))
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take a token; returns how long it waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                need = (1.0 - self._tokens) / self.rate
            time.sleep(need)  # rate limiting itself, not synchronisation
            waited += need

    def try_acquire(self) -> bool:
        """Take a token if one is free now; never waits."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def tune_rest_client(client: Any, timeout_s: float, limiter: RateLimiter | None) -> None:
    """Turn off alpaca-py's own 429/504 retries (fixed 3 s sleeps) and give every request a
    timeout and a rate-limiter token (None: the caller takes its tokens), so our own retry policy is the only one."""
    client._retry = 0
    client._retry_codes = []
    session: requests.Session = client._session
    send = session.request

    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        if limiter is not None:
            limiter.acquire()
        kwargs.setdefault("timeout", (min(timeout_s, 5.0), timeout_s))
        return send(method, url, **kwargs)

    session.request = request  # type: ignore[method-assign]


def _message(exc: APIError) -> str:
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        return str(exc)[:200]


def translate(exc: Exception, *, submit: bool = False) -> BrokerError:
    """An alpaca-py / requests exception as the BrokerError the OMS acts on."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, APIError):
        status, message = exc.status_code or 0, _message(exc)
        if status == 422 and "client_order_id must be unique" in message:
            return DuplicateClientOrderId(message)
        if status == 403 or (submit and status in (400, 422)):
            return OrderRejected(message)
        if status == 404:
            return OrderNotFound(message)
        if status == 429 or status >= 500:
            return TransientBrokerError(f"HTTP {status}: {message}")
        if status == 401:
            return BrokerError(f"HTTP 401: not authorized (check {KEY_ENV} / {SECRET_ENV})")
        return BrokerError(f"HTTP {status}: {message}")
    if isinstance(exc, requests.ConnectTimeout):
        return TransientBrokerError(f"connect timeout: {exc.__class__.__name__}")
    if isinstance(exc, requests.Timeout):
        # The request went out; whether it was processed is unknown.
        return UnknownOutcome(f"timeout: {exc.__class__.__name__}") if submit else TransientBrokerError("timeout")
    if isinstance(exc, requests.ConnectionError):
        refused = "refused" in str(exc).lower() or "NewConnectionError" in str(exc)
        if submit and not refused:
            return UnknownOutcome(f"connection lost: {exc.__class__.__name__}")
        return TransientBrokerError(f"connection error: {exc.__class__.__name__}")
    if isinstance(exc, ValueError):  # alpaca-py's own validation (e.g. an order id that is no UUID)
        return OrderNotFound(str(exc)) if not submit else OrderRejected(str(exc))
    return BrokerError(f"{exc.__class__.__name__}: {exc}")


class StreamRunner:
    """Runs one alpaca-py stream (``TradingStream`` / ``StockDataStream``) in a daemon thread and
    stops it promptly: alpaca-py's own ``stop`` waits for a 5 s receive timeout, and a stop sent
    before its loop is ready is silently dropped."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream = stream
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.stream.run()
        except Exception:  # noqa: BLE001 - the broker falls back to REST; say why
            log.exception("%s stopped with an error", self.thread.name)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.thread.is_alive():
            return
        deadline = time.monotonic() + timeout_s
        # Wait until the loop has reset its stop event (a stop before that would be forgotten).
        while self.thread.is_alive() and self.stream._stop_stream_event is None and time.monotonic() < deadline:
            time.sleep(0.01)
        loop = self.stream._loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - stopping anyway; the join below is the check
                pass
        self.thread.join(max(0.1, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.warning("%s did not stop within %.0f s", self.thread.name, timeout_s)

    async def _shutdown(self) -> None:
        await self.stream.stop_ws()
        await self.stream.close()  # wakes a pending receive instead of waiting out its timeout


def websocket_params() -> dict[str, Any]:
    return {"ping_interval": 10, "ping_timeout": 20, "max_queue": 1024, "open_timeout": 10, "close_timeout": 2}
