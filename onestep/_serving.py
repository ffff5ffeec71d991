"""The guarded waitress server under onestep's HTTP servers, with what waitress lacks: a
decision when a request's headers have arrived, so a body that would be refused is never
read, and a deadline for a whole request, so slow clients are cut off. Built by the
webhook adapter's standalone servers (through `onestep.kit`) and by the operations
endpoint (`onestep.http`).

Waitress reads a request in full (spooling a large body to a temporary file) before it
calls the WSGI app, and it only closes connections that send nothing for its
`channel_timeout`, so a client trickling a byte a second holds a connection for ever.
Four small subclasses fix that; their hooks run on the server's loop thread (`_Task`'s
on the waitress thread answering the request):

- `_Parser.parse_header` asks the router (the server's owner) what to do once the headers
  are in: read the body up to a limit, or refuse it. A refused body is not read: the
  request goes to the WSGI app at once with an empty body, `BODY_REFUSED` in its environ
  and `Connection: close` (the unread bytes make the connection unusable), and the app
  answers it (413, 401, 404...) without reading. `Expect: 100-continue` then gets no 100.
  A chunked body is cut off once it exceeds the limit: the app then sees a Content-Length
  over the limit and answers 413.
- `_Task` puts `BODY_REFUSED` in the environ (the app answers 503 "retry" should it
  reach the body anyway: the route changed between the headers and the app).
- `_Channel` starts each request with a `_Parser` and answers it with a `_Task`.
- `GuardedServer.maintenance` closes connections whose request has not fully arrived
  `read_timeout_s` after its first byte, and those idle for `idle_timeout_s`.

These hooks use waitress internals (`HTTPRequestParser.parse_header`/`received` and
their attributes, `HTTPChannel.parser_class`/`task_class`, `WSGITask.get_environment`,
`BaseWSGIServer.channel_class`/`maintenance`/`active_channels`), read from waitress
3.0.2; setup.cfg pins `waitress>=3.0.1,<3.1` and tests/unit/test_webhook_limits.py
checks each hook on the installed version (tests/unit/test_http_limits.py the same for
the operations endpoint).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import WSGITask

logger = logging.getLogger("onestep.serving")

#: WSGI environ key, True on a request whose body the server refused without reading.
BODY_REFUSED = "onestep.webhook.body_refused"
#: How often (seconds) GuardedServer.maintenance applies the timeouts.
MAINTENANCE_INTERVAL_S = 1


class BodyRouter(Protocol):
    """What the server asks once a request's headers are in (on its loop thread)."""

    def body_limit(
        self, method: str, path: str, headers: Mapping[str, str], content_length: int | None
    ) -> int | None:
        """The most body bytes to read for this request, or None to refuse the body
        unread. `headers` has waitress's keys (`AUTHORIZATION`, `X_SIGNATURE`);
        `content_length` is None for a chunked body."""
        ...


def wsgi_path(path: str) -> str:
    """The path a WSGI app on waitress sees as `req.path` for a request-line path, so the
    router matches what falcon will route: waitress collapses leading slashes, falcon
    decodes a non-ASCII path as UTF-8."""
    if path.startswith("/"):
        path = "/" + path.lstrip("/")
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
    return path or "/"


class _Parser(HTTPRequestParser):  # type: ignore[misc]
    """One request being received; `started_at` (monotonic) is when its first bytes came."""

    # waitress's attributes used here (annotations only, for mypy)
    body_rcv: Any
    completed: bool
    body_refused = False
    body_limit: int | None = None

    def __init__(self, adj: Adjustments, router: BodyRouter) -> None:
        super().__init__(adj)
        self.router = router
        self.started_at = time.monotonic()

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)  # a malformed request raises: waitress answers 400
        length = None if self.chunked else self.content_length
        limit = self.router.body_limit(self.command, wsgi_path(self.path), self.headers, length)
        if limit is None:
            self._refuse_body()
        else:
            self.body_limit = limit

    def received(self, data: bytes) -> int:
        consumed: int = super().received(data)
        body = self.body_rcv
        if (
            body is not None
            and self.chunked
            and not self.completed
            and self.body_limit is not None
            and len(body) > self.body_limit
        ):
            # The app answers 413 from this Content-Length, without reading anything.
            self.headers["CONTENT_LENGTH"] = str(len(body))
            self._refuse_body()
            self.completed = True
        if self.body_refused:
            return len(data)  # the rest of this read is the refused body: drop it
        return consumed

    def _refuse_body(self) -> None:
        """Complete the request now, without its body, and close after answering."""
        if self.body_rcv is not None:
            self.body_rcv.getbuf().close()
        self.body_rcv = None  # waitress then completes the request with an empty body
        self.content_length = 0  # and skips its own size check
        self.expect_continue = False  # never invite a body that will not be read
        self.headers["CONNECTION"] = "close"
        self.body_refused = True


class _Task(WSGITask):  # type: ignore[misc]
    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        if getattr(self.request, "body_refused", False):
            environ[BODY_REFUSED] = True
        return environ


class _Channel(HTTPChannel):  # type: ignore[misc]
    """One client connection. Nothing more is read from it once a refused request is
    queued: waitress reads no further while a request is being answered, and closes the
    connection after answering (`Connection: close`)."""

    task_class = _Task

    def parser_class(self, adj: Adjustments) -> _Parser:  # waitress calls it to start a request
        return _Parser(adj, self.server.router)


def guarded_adjustments(
    host: str,
    port: int,
    *,
    threads: int,
    connection_limit: int,
    max_request_body_size: int,
) -> Adjustments:
    """waitress's settings for a GuardedServer (its timeouts are GuardedServer's own).
    Raises OSError (socket.gaierror) naming the problem when `host` cannot be resolved:
    waitress would only say "Invalid host/port specified"."""
    socket.getaddrinfo(
        None if host == "*" else host,
        port,
        socket.AF_UNSPEC,
        socket.SOCK_STREAM,
        socket.IPPROTO_TCP,
    )
    return Adjustments(
        host=host,
        port=port,
        threads=threads,
        connection_limit=connection_limit,
        max_request_body_size=max_request_body_size,
        # poll(), not select(): select() fails on descriptors over 1023, which a process
        # with hundreds of connections reaches.
        asyncore_use_poll=True,
        cleanup_interval=MAINTENANCE_INTERVAL_S,
        ident="onestep",
    )


class GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    """A waitress TCP server with the guarded channels and the read and idle timeouts
    (both changeable while it runs, like `adj.connection_limit`). `label` names it in
    the log ("webhook server", "operations endpoint")."""

    channel_class = _Channel

    def __init__(
        self,
        application: Callable[..., Any],
        adj: Adjustments,
        router: BodyRouter,
        *,
        read_timeout_s: float,
        idle_timeout_s: float,
        sock: socket.socket | None = None,
        label: str = "server",
    ) -> None:
        """`sock`, when given, is a listening socket bound elsewhere (by the parent of
        `onestep run --processes N`): it is served as it is, never bound again. Raises
        OSError when the address cannot be resolved or bound."""
        self.router = router
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.label = label
        if sock is not None:
            sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
            super().__init__(application, adj=adj, _sock=sock, bind_socket=False, sockinfo=sockinfo)
            return
        # A host name resolving to several addresses is served on the first one.
        super().__init__(application, adj=adj, sockinfo=adj.listen[0])

    def maintenance(self, now: float) -> None:
        """Runs on the loop thread every `adj.cleanup_interval` seconds (it replaces
        waitress's idle check): close connections between requests idle for
        `idle_timeout_s`, and those whose request has not fully arrived `read_timeout_s`
        after its first byte. Connections with a request being answered are left alone."""
        idle_cutoff = now - self.idle_timeout_s  # waitress keeps last_activity in time.time()
        read_cutoff = time.monotonic() - self.read_timeout_s
        slow = 0
        for channel in list(self.active_channels.values()):
            if channel.requests or channel.will_close:
                continue
            started_at = getattr(channel.request, "started_at", None)
            if started_at is not None and started_at < read_cutoff:
                channel.will_close = True  # the loop closes it on its next pass
                slow += 1
            elif channel.last_activity < idle_cutoff:
                channel.will_close = True
        if slow:
            logger.info(
                "%s on port %s closed %d connection(s) whose request did not "
                "arrive within read_timeout_s=%g",
                self.label,
                self.effective_port,
                slow,
                self.read_timeout_s,
            )
