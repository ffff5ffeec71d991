"""Checking that an app can reach what it uses: `check_connections(app)` opens and
closes every source and sink as a run would, and says for each whether it worked;
`onestep check TARGET --connect` prints it. Runs on the calling thread.

It uses the app's own Source and Sink objects (DESIGN §7), with their own `open()` and
`close()`: a RabbitMQ queue connects and declares its queue (and exchange), a MySQL
table queue checks the server and creates or checks its table, a table sink connects,
a standalone webhook binds its port (so the check fails while something else, the app
itself included, holds that port). Each endpoint is opened and closed on this one
thread, as its actor would open and close it on its own; a queue that is one task's
source and another's sink is opened once per role, as in a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core import AppCore

logger = logging.getLogger("onestep.check")

# `scheme://user:password@host` in an error message: the password is masked.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?P<at>@)", re.I)


@dataclass(frozen=True)
class EndpointCheck:
    """What opening one endpoint in one role did: `error` is None when it opened and
    closed cleanly, else the error's type and message (no password)."""

    role: str
    name: str
    kind: str
    uses: tuple[str, ...]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `onestep check --connect --json` lists under `connections`."""
        return {
            "role": self.role,
            "name": self.name,
            "type": self.kind,
            "uses": list(self.uses),
            "ok": self.ok,
            "error": self.error,
        }

    def line(self) -> str:
        """`source 'jobs' (RabbitMQQueue; task 'work'): ok` or `...: error: <why>`."""
        where = "; ".join((self.kind, *self.uses))
        outcome = "ok" if self.error is None else f"error: {self.error}"
        return f"{self.role} {self.name!r} ({where}): {outcome}"


def check_connections(app: AppCore) -> list[EndpointCheck]:
    """Open and close every source and sink of `app`'s tasks, in task order (sources
    first within a task, then emit and dead-letter sinks); one EndpointCheck each.
    Afterwards the connectors' pooled connections are closed."""
    endpoints = _endpoints(app)
    runner = _AsyncRunner()
    try:
        checks = [
            EndpointCheck(role, _name(obj), _kind(obj), tuple(uses), _open_and_close(obj, runner))
            for role, obj, uses in endpoints
        ]
    finally:
        runner.close()
    _close_connectors(obj for _, obj, _ in endpoints)
    return checks


def _endpoints(app: AppCore) -> list[tuple[str, Any, list[str]]]:
    """(role, endpoint, what uses it) for every distinct endpoint per role."""
    found: dict[tuple[str, int], tuple[str, Any, list[str]]] = {}

    def add(role: str, obj: Any, use: str) -> None:
        key = (role, id(obj))
        if key not in found:
            found[key] = (role, obj, [])
        found[key][2].append(use)

    for spec in app.tasks.values():
        if spec.source is not None:
            add("source", spec.source, f"task {spec.name!r}")
        for sink in spec.emit:
            add("sink", sink, f"emit of {spec.name!r}")
        for sink in spec.dead_letter:
            add("sink", sink, f"dead letter of {spec.name!r}")
    return list(found.values())


def _open_and_close(endpoint: Any, runner: _AsyncRunner) -> str | None:
    """None if `endpoint` opened and closed, else why not (no password)."""
    try:
        runner.call(getattr(endpoint, "open", None))
    except Exception as exc:
        with contextlib.suppress(Exception):  # undo what a half-done open made
            runner.call(getattr(endpoint, "close", None))
        return _describe(endpoint, exc)
    try:
        runner.call(getattr(endpoint, "close", None))
    except Exception as exc:
        return "opened, but closing failed: " + _describe(endpoint, exc)
    return None


class _AsyncRunner:
    """Runs an endpoint's `async def` open/close on one private event loop (made on
    first need), so that what an async open makes is closed on the same loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(self, method: Callable[[], Any] | None) -> None:
        if method is None:
            return
        result = method()
        if inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(result)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


def _describe(endpoint: Any, exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)
    # The connectors keep their password out of their messages; this is the second
    # line of defence for an error some library phrased with it.
    secret = getattr(getattr(endpoint, "connector", None), "_password", None)
    if isinstance(secret, str) and secret:
        text = text.replace(secret, "***")
    return text


def _name(endpoint: Any) -> str:
    return str(getattr(endpoint, "name", "") or type(endpoint).__name__)


def _kind(endpoint: Any) -> str:
    describe = getattr(endpoint, "describe", None)
    info: Any = None
    if callable(describe):
        with contextlib.suppress(Exception):
            info = describe()
    kind = str(info.get("type")) if isinstance(info, dict) and info.get("type") else ""
    kind = kind or type(endpoint).__name__
    table = info.get("table") if isinstance(info, dict) else None
    return f"{kind}, table {table!r}" if table else kind


def _close_connectors(endpoints: Any) -> None:
    """Close the pooled connections the checks left (a table queue opens through its
    connector's pool); the next use connects again."""
    seen: set[int] = set()
    for endpoint in endpoints:
        connector = getattr(endpoint, "connector", None)
        close = getattr(connector, "close", None)
        if connector is None or id(connector) in seen or not callable(close):
            continue
        seen.add(id(connector))
        try:
            close()
        except Exception as exc:
            logger.debug("closing %r after the connection check: %s", connector, exc)
