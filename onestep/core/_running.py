"""The two ways an app runs until shutdown is requested: blocking the calling thread
(`app.run()`, with signal handlers on the main thread) or inside an asyncio program
(`await app.serve()`). Called by AppCore only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._hooks import install_signal_handlers

if TYPE_CHECKING:
    from ._app import AppCore


def run_blocking(app: AppCore, on_started: Callable[[], None] | None = None) -> None:
    """Start `app`, call `on_started()` (on the calling thread), wait for a shutdown
    request (SIGINT/SIGTERM/SIGHUP on the main thread make one), stop, and raise the
    app's failure if an actor failed past its restart limit."""
    restore = install_signal_handlers(_requested(app), app.request_shutdown)
    try:
        app.start()
        try:
            if on_started is not None:
                on_started()
            app.wait_for_shutdown_request()
        finally:
            app.stop()
    finally:
        restore()
    _raise_failure(app)


async def serve_in_asyncio(app: AppCore) -> None:
    """`app.run()` for an asyncio program: start and stop run in threads so the caller's
    loop is never blocked; cancelling the awaiting task stops the app."""
    loop = asyncio.get_running_loop()
    requested = loop.create_future()

    def wake() -> None:
        loop.call_soon_threadsafe(_resolve, requested)

    starting = loop.run_in_executor(None, app.start)
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        # start() goes on in its thread: let it finish, then undo it
        with contextlib.suppress(Exception):
            await starting
        if app.running:
            await asyncio.to_thread(app.stop)
        raise
    app.internals.add_shutdown_callback(wake)
    try:
        if _requested(app)():
            wake()
        await requested
    finally:
        app.internals.remove_shutdown_callback(wake)
        await asyncio.to_thread(app.stop)
    _raise_failure(app)


def _requested(app: AppCore) -> Callable[[], bool]:
    """Whether a shutdown was requested, asked without waiting."""
    return lambda: app.wait_for_shutdown_request(0)


def _raise_failure(app: AppCore) -> None:
    if app.failure is not None:
        raise app.failure


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
