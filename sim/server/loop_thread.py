"""One event-loop thread runner for the local exchange's servers (the Alpaca face's
``ExchangeServer``, the TWS face's ``TwsServer``): tests and tools run a server in a thread of their
own process, ``start()`` returning once it is bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar


class AsyncServer(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


S = TypeVar("S", bound=AsyncServer)


class LoopThread(Generic[S]):
    """Run ``server`` on its own event loop thread until :meth:`stop`."""

    what = "server"  # for the errors: which server did not start or stop

    def __init__(self, server: S, name: str = "server") -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=name, daemon=True)

    def start(self, timeout_s: float = 30.0) -> LoopThread[S]:
        if self._thread.is_alive() or self._ready.is_set():
            return self  # already running (``with start_exchange(...)`` after a start)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"{self.what} did not start")
        if self._error is not None:
            raise RuntimeError(f"{self.what} failed to start") from self._error
        return self

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
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
            raise TimeoutError(f"{self.what} thread did not stop")

    def __enter__(self) -> LoopThread[S]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
