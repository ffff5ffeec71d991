"""Listener: wakes an idle TableQueue source when a row is inserted (LISTEN/NOTIFY), when
a delayed row falls due, or after `poll_interval_s` (the fallback when no notification
comes). Its own daemon thread owns one dedicated connection, never a pooled one: a
notification reaches only a connection that is listening when the insert commits.

The source actor's thread calls `before_fetch()` and `idle(due_in_s)` around its
fetches; the listener thread calls the actor's `wakeup()`; `start()`/`stop()` run on the
source actor's thread (subscribe, close).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._connection import close_quietly, quote_ident

if TYPE_CHECKING:
    from ._connector import PostgresConnector

logger = logging.getLogger("onestep.postgres")

# Waits between attempts to connect the listening connection again (seconds).
_RECONNECT_MIN_S, _RECONNECT_MAX_S = 0.2, 5.0


class Listener:
    """Arms itself after an empty fetch and fires `wakeup()` once, at the first of: a
    NOTIFY on `channel`, the due time of the earliest delayed row, `poll_interval_s`.
    A notification that arrives while a fetch runs is remembered, so an insert that
    commits just after the fetch looked is not missed."""

    def __init__(
        self,
        connector: PostgresConnector,
        channel: str,
        *,
        name: str,
        poll_interval_s: float,
        listen: bool,
    ) -> None:
        self._connector = connector
        self._channel = channel
        self._name = name
        self._poll_interval_s = poll_interval_s
        self._listen = listen
        self._lock = threading.Lock()
        self._wakeup: Callable[[], None] | None = None
        self._armed = False
        self._noticed = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pipe: tuple[int, int] | None = None
        #: Set once the listening connection is listening (tests and benchmarks wait on it).
        self.listening = threading.Event()

    # -- the source actor's thread ------------------------------------------------------

    def start(self, wakeup: Callable[[], None]) -> None:
        """Start the thread (again after stop()); later calls only replace `wakeup`."""
        with self._lock:
            self._wakeup = wakeup
        if self._thread is not None and self._thread.is_alive() and not self._stopping.is_set():
            return
        self._stopping = threading.Event()
        self.listening.clear()
        self._pipe = os.pipe()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._stopping, self._pipe),
            name=f"onestep-listen-{self._name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread without waiting long for it: it closes its connection itself
        (a connection attempt in progress ends within connect_timeout_s)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._poke()
        self._pipe = None  # the thread closes it: no later write may reach a reused fd
        thread.join(timeout=0.5)

    def before_fetch(self) -> None:
        """A fetch starts: what was noticed until now, it will see."""
        with self._lock:
            self._noticed = False
            self._armed = False

    def idle(self, due_in_s: float | None) -> None:
        """The fetch found nothing due: wake the source at the first notification, when
        the earliest delayed row is due (`due_in_s`), or after poll_interval_s."""
        wait_s = self._poll_interval_s if due_in_s is None else min(due_in_s, self._poll_interval_s)
        with self._lock:
            wakeup = self._wakeup if self._noticed else None
            if wakeup is None:
                self._armed = True
                self._deadline = time.monotonic() + max(wait_s, 0.0)
        if wakeup is not None:
            wakeup()  # an insert committed while the fetch ran
            return
        thread = self._thread
        if thread is not None and not thread.is_alive() and self._wakeup is not None:
            self.start(self._wakeup)  # it failed (logged): nothing else would wake us
        self._poke()

    # -- the listener thread -------------------------------------------------------------

    def _poke(self) -> None:
        """Make the listener thread look at its deadline again."""
        pipe = self._pipe
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.write(pipe[1], b"x")

    def _notice(self) -> None:
        with self._lock:
            self._noticed = True
            wakeup = self._wakeup if self._armed else None
            self._armed = False
        if wakeup is not None:
            wakeup()

    def _due(self, now: float) -> Callable[[], None] | None:
        with self._lock:
            if self._armed and self._deadline <= now:
                self._armed = False
                return self._wakeup
        return None

    def _timeout(self, now: float, retry_at: float | None) -> float | None:
        with self._lock:
            timeout = max(self._deadline - now, 0.0) if self._armed else None
        if retry_at is not None:
            wait = max(retry_at - now, 0.0)
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _run(self, stopping: threading.Event, pipe: tuple[int, int]) -> None:
        conn: Any = None
        retry_at: float | None = 0.0 if self._listen else None
        backoff = _RECONNECT_MIN_S
        try:
            while not stopping.is_set():
                now = time.monotonic()
                if conn is None and retry_at is not None and now >= retry_at:
                    try:
                        conn = self._connect()
                    except Exception as exc:
                        # said once per outage, not at every attempt
                        level = logging.WARNING if backoff == _RECONNECT_MIN_S else logging.DEBUG
                        logger.log(
                            level, "%s: cannot LISTEN (polling meanwhile): %s", self._name, exc
                        )
                        retry_at, backoff = now + backoff, min(backoff * 2, _RECONNECT_MAX_S)
                    else:
                        retry_at, backoff = None, _RECONNECT_MIN_S
                        self.listening.set()
                        self._notice()  # an insert may have come while not listening
                fds = [pipe[0]] if conn is None else [pipe[0], conn.fileno()]
                readable, _, _ = select.select(fds, [], [], self._timeout(now, retry_at))
                if pipe[0] in readable:
                    os.read(pipe[0], 4096)
                talked = conn is not None and len(readable) > (pipe[0] in readable)
                if talked and not self._drain(conn):
                    close_quietly(conn)
                    conn, retry_at = None, time.monotonic()
                    self.listening.clear()
                    self._notice()  # notifications may have been lost with it
                wakeup = self._due(time.monotonic())
                if wakeup is not None:
                    wakeup()
        except Exception:  # idle() starts a new thread
            logger.exception("%s: the listener thread failed", self._name)
        finally:
            close_quietly(conn)
            for fd in pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _connect(self) -> Any:
        conn = self._connector.connect(autocommit=True)
        try:
            conn.execute(f"LISTEN {quote_ident(self._channel, 'channel')}")
        except BaseException:
            close_quietly(conn)
            raise
        return conn

    def _drain(self, conn: Any) -> bool:
        """Read what the server sent; notice any notification. False if the connection
        is gone (the server restarted or closed it)."""
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except Exception as exc:
            logger.warning("%s: the listening connection was lost: %s", self._name, exc)
            return False
        got = False
        while pgconn.notifies() is not None:
            got = True
        if got:
            self._notice()
        return True
