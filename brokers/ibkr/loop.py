"""One dedicated thread that owns an asyncio event loop, and with it an ib_async ``IB`` object.

ib_async is single-threaded asyncio: every touch of the ``IB`` object happens on its loop. The OMS
(a synchronous actor) calls in with :meth:`IbLoop.run`, i.e. ``run_coroutine_threadsafe`` and a
timeout; nothing ever blocks that loop (no ``time.sleep`` on it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class IbLoop:
    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{name}: event loop thread did not start")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self, make: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """Run ``make()`` on the loop and wait at most ``timeout_s``; on timeout the coroutine is
        cancelled and :class:`concurrent.futures.TimeoutError` raised (the caller classifies it)."""
        assert self.loop is not None
        if threading.current_thread() is self._thread:
            raise RuntimeError("IbLoop.run called from its own loop thread (would deadlock)")

        async def wrapped() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
