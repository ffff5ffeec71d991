"""The one event-loop thread shared by every async handler and async Source/Sink method.

The actor system starts it first and stops it last; actors call `call` to run a
sync-or-async method and wait for its result from their own thread.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """Owns an asyncio loop running forever on a daemon thread."""

    def __init__(self, name: str = "onestep-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self._cancel_leftovers()
            self.loop.close()

    def _cancel_leftovers(self) -> None:
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            gathered = asyncio.gather(*pending, return_exceptions=True)
            self.loop.run_until_complete(gathered)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule `coro` on the loop; callable from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread soon; callable from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def wait(self, awaitable: Any, timeout: float | None = None) -> Any:
        """Block the calling thread until `awaitable` finishes on the loop."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot wait for the event loop from the event-loop thread")
        return self.submit(_await(awaitable)).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a sync or async callable and return its result, waiting if needed."""
        result = fn(*args)
        if inspect.isawaitable(result):
            return self.wait(result)
        return result

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)


async def _await(awaitable: Any) -> Any:
    return await awaitable
