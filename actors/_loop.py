"""The one event-loop thread shared by every async handler and async Source/Sink method.

The actor system starts it first and stops it last; actors call `call` to run a
sync-or-async method and wait for its result from their own thread. If the loop ends
without `stop()` (user code calling `loop.stop()`, a `SystemExit` escaping a coroutine),
`on_death` tells the ActorSystem, which stops the app with AppFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from ._timer import DeathCallback

T = TypeVar("T")

logger = logging.getLogger("onestep.actors.loop")


class EventLoopThread:
    """Owns an asyncio loop running forever on a daemon thread."""

    label = "event loop"

    def __init__(self, name: str = "onestep-loop", on_death: DeathCallback | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.on_death = on_death
        self._ready = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        try:
            self._thread.start()
        except BaseException:
            self.loop.close()  # its selector holds file descriptors
            raise
        self._ready.wait()
        if self.loop.is_closed():
            raise RuntimeError("the event loop thread ended as it started")

    def _run(self) -> None:
        """The loop thread's body; reports an end that `stop()` did not ask for."""
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        error: BaseException | None = None
        try:
            self.loop.run_forever()
        except BaseException as exc:  # SystemExit from a coroutine ends run_forever
            error = exc
        finally:
            try:
                self._cancel_leftovers()
            except BaseException:
                logger.exception("cancelling the event loop's leftover tasks failed")
            self.loop.close()
            self._ready.set()
        if self._stopping:
            return
        if error is None:
            error = RuntimeError("the event loop was stopped by something other than onestep")
        logger.critical("the event loop thread died", exc_info=error)
        if self.on_death is not None:
            self.on_death(self.label, error)

    def _cancel_leftovers(self) -> None:
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            gathered = asyncio.gather(*pending, return_exceptions=True)
            self.loop.run_until_complete(gathered)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule `coro` on the loop; callable from any thread. Raises RuntimeError
        once the loop has stopped."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()  # never awaited: close it instead of leaving a warning behind
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread soon; callable from any thread. Once the
        loop has closed (stopped, or died: the app is failing then) the call is dropped
        instead of raising into the caller (a ledger waking pullers at shutdown)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            if not self.loop.is_closed():
                raise
            logger.debug("dropped %r: the event loop has stopped", fn)

    def wait(self, awaitable: Any, timeout: float | None = None) -> Any:
        """Block the calling thread until `awaitable` finishes on the loop."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot wait for the event loop from the event-loop thread")
        try:
            future = self.submit(_await(awaitable))
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        return future.result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a sync or async callable and return its result, waiting if needed."""
        result = fn(*args)
        if inspect.isawaitable(result):
            return self.wait(result)
        return result

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # closed since: it died meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        elif not self.loop.is_closed():
            self.loop.close()  # never started


async def _await(awaitable: Any) -> Any:
    return await awaitable
