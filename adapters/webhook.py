"""WebhookSource: HTTP requests become a task's messages, served by falcon on waitress.

Users create one per webhook path; the runtime opens it (starting a shared waitress
server in the background), or a host WSGI app embeds it with `mount` / `wsgi_middleware`.

The queue behind a webhook is a bounded MemoryQueue held in this process: a request
answered 202 is kept across an app restart (unfinished deliveries are released back to
it at shutdown), but whatever is queued when the process dies is lost. For durability,
keep the webhook task small and emit each request to a durable queue (RabbitMQ, MySQL).
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from hashlib import sha256
from typing import Any
from urllib.parse import parse_qs

import falcon
import waitress
from waitress import wasyncore

from onestep import Delivery, MemoryQueue, OneStepApp, SourceContext
from onestep._checks import check_int, check_number

__all__ = [
    "BearerToken",
    "HmacSignature",
    "WebhookMiddleware",
    "WebhookResource",
    "WebhookSource",
    "mount",
    "webhook_sources",
    "wsgi_middleware",
]

logger = logging.getLogger("onestep.webhook")

#: waitress worker threads of a standalone server (benchmarks/webhook.py uses the same).
SERVER_THREADS = 8
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_RESPOND_MODES = ("accepted", "result")
# Seconds a client is told to wait: a full queue drains fast, a restart takes longer.
_RETRY_AFTER_FULL_S = 1
_RETRY_AFTER_STOPPED_S = 5
# How long close() waits for in-flight requests before it stops the server anyway.
_DRAIN_TIMEOUT_S = 10.0
# Request ids: a per-process random prefix and a counter; uuid4 per request costs a
# urandom syscall and is not needed for uniqueness.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


# -- authentication -------------------------------------------------------------------------


class BearerToken:
    """`Authorization: Bearer <token>`, compared in constant time."""

    needs_body = False

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"token must be a non-empty string, got {token!r}")
        self._expected = f"Bearer {token}".encode()
        self.challenge = 'Bearer realm="onestep"'

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def check(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True when the request carries the token; runs on a server thread."""
        given = headers.get("AUTHORIZATION", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)


class HmacSignature:
    """An HMAC-SHA256 of the raw body in a header, hex encoded, optionally prefixed
    (GitHub sends `X-Hub-Signature-256: sha256=<hex>`)."""

    needs_body = True

    def __init__(
        self, secret: str | bytes, *, header: str = "X-Signature", prefix: str = "sha256="
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("secret must be a non-empty str or bytes")
        if not isinstance(header, str) or not header:
            raise ValueError(f"header must be a non-empty string, got {header!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        self._secret = secret
        self.header = header
        self.prefix = prefix
        self.challenge = f'HMAC-SHA256 header="{header}"'

    def __repr__(self) -> str:
        return f"HmacSignature(***, header={self.header!r})"

    def sign(self, body: bytes) -> str:
        """The header value a sender puts on `body`."""
        return self.prefix + hmac.new(self._secret, body, sha256).hexdigest()

    def check(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get(self.header.upper(), "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self.sign(body).encode())


# -- the source -----------------------------------------------------------------------------


class _Reply:
    """Where respond="result" waits: the runtime calls it once, from a worker thread,
    the event-loop thread or a sink actor's thread."""

    __slots__ = ("abandoned", "done", "failure", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.failure: Any = None
        self.abandoned = False

    def __call__(self, result: Any, failure: Any) -> None:
        self.result = result
        self.failure = failure
        self.done.set()


class WebhookSource(MemoryQueue):
    """A bounded in-memory queue that HTTP requests to `path` are put on.

    `respond="accepted"` answers 202 once the request is queued; `respond="result"`
    waits up to `reply_timeout_s` for the handler and answers 200 with its return value.
    Sources with the same `host` and `port` share one server (`port=0`: a free port,
    shared by the port-0 sources open at the same time); `url` is set once open.
    """

    def __init__(
        self,
        path: str,
        *,
        methods: Iterable[str] = ("POST",),
        host: str = "127.0.0.1",
        port: int = 8080,
        auth: BearerToken | HmacSignature | None = None,
        max_body_bytes: int = 1_048_576,
        queue_maxsize: int = 1000,
        respond: str = "accepted",
        reply_timeout_s: float = 30.0,
        name: str | None = None,
        serve: bool = True,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a string starting with '/', got {path!r}")
        if isinstance(methods, str):
            raise ValueError(f"methods must be a sequence of HTTP methods, got {methods!r}")
        checked = tuple(dict.fromkeys(str(m).upper() for m in methods))
        if not checked or not set(checked) <= _HTTP_METHODS:
            raise ValueError(f"methods must be some of {sorted(_HTTP_METHODS)}, got {methods!r}")
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        if auth is not None and not callable(getattr(auth, "check", None)):
            raise ValueError(f"auth must be BearerToken, HmacSignature or None, got {auth!r}")
        check_int("max_body_bytes", max_body_bytes, minimum=1)
        check_int("queue_maxsize", queue_maxsize, minimum=1)
        if respond not in _RESPOND_MODES:
            raise ValueError(f"respond must be 'accepted' or 'result', got {respond!r}")
        reply_timeout = check_number("reply_timeout_s", reply_timeout_s, exclusive=True)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        if not isinstance(serve, bool):
            raise ValueError(f"serve must be a bool, got {serve!r}")
        super().__init__(name or f"webhook:{path}", maxsize=queue_maxsize)
        self.path = path
        self.methods = checked
        self.host = host
        self.port = port
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.respond = respond
        self.reply_timeout_s = reply_timeout
        #: False once mounted in a host app (`falcon_resource`, `mount`, the middleware):
        #: open() then starts no server of its own.
        self.serve = serve
        #: `http://host:port/path` while a standalone server serves this source.
        self.url: str | None = None
        self._app: OneStepApp | None = None
        self._accepting = False
        self._server: _SharedServer | None = None
        self._waiting: dict[int, _Reply] = {}
        self._waiting_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WebhookSource({self.path!r}, methods={self.methods!r}, respond={self.respond!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "type": "WebhookSource",
            "name": self.name,
            "path": self.path,
            "methods": list(self.methods),
            "address": f"{self.host}:{self.port}" if self.serve else "embedded",
            "respond": self.respond,
            "queue_maxsize": self.maxsize,
        }

    def falcon_resource(self) -> WebhookResource:
        """A falcon resource for `falcon_app.add_route(source.path, ...)`; the source
        then starts no server of its own. Call it before the onestep app starts."""
        self.serve = False
        return WebhookResource([self])

    # -- lifecycle: the source actor's thread --------------------------------------------

    def attach(self, context: SourceContext) -> None:
        """Called by the app at start: requests are refused once it is shutting down."""
        self._app = context.app

    def open(self) -> None:
        """Start accepting; a standalone source joins (or starts) its server."""
        if self.serve:
            self._server = _acquire_server(self)
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{self._server.port}{self.path}"
        self._accepting = True

    def close(self) -> None:
        """Stop accepting and leave the server (the last source stops it once in-flight
        requests are answered). Queued requests stay queued for the next start, except
        respond="result" ones: their clients are answered 503 now."""
        self._accepting = False
        self._abandon_waiting()
        server, self._server = self._server, None
        if server is not None:
            _release_server(self, server)
        self.url = None

    def _abandon_waiting(self) -> None:
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        self.remove_if(lambda delivery: id(delivery.reply) in waiting)
        for reply in waiting.values():
            reply.abandoned = True
            reply.done.set()

    # -- requests: a server thread (waitress, or the host app's) --------------------------

    def handle(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer one request; the falcon responder for each of `methods`."""
        self._check_accepting()
        auth = self.auth
        if auth is not None and not auth.needs_body:
            self._authenticate(auth, req, b"")
        body = self._read_body(req)
        if auth is not None and auth.needs_body:
            self._authenticate(auth, req, body)
        payload = {
            "body": _parse_body(req.content_type, body),
            "headers": req.headers_lower,
            "query": dict(req.params),
            "method": req.method,
            "path": req.path,
            "client": req.remote_addr,
            "received_at": time.time(),
        }
        request_id = f"{_ID_PREFIX}-{next(_ids)}"
        if self.respond == "accepted":
            if not self.offer(payload, {"webhook_id": request_id}):
                raise _queue_full(self)
            resp.status = falcon.HTTP_202
            resp.content_type = falcon.MEDIA_JSON
            resp.text = f'{{"accepted": true, "id": "{request_id}"}}'
            return
        self._respond_with_result(payload, request_id, resp)

    def _check_accepting(self) -> None:
        app = self._app
        if not self._accepting or (app is not None and app.wait_for_shutdown_request(0)):
            raise falcon.HTTPServiceUnavailable(
                title="Not accepting requests",
                description=f"{self.path} is not running or is shutting down",
                retry_after=_RETRY_AFTER_STOPPED_S,
            )

    def _authenticate(
        self, auth: BearerToken | HmacSignature, req: falcon.Request, body: bytes
    ) -> None:
        if not auth.check(req.headers, body):
            raise falcon.HTTPUnauthorized(
                title="Unauthorized",
                description="missing or invalid credentials",
                challenges=[auth.challenge],
            )

    def _read_body(self, req: falcon.Request) -> bytes:
        limit = self.max_body_bytes
        length = req.content_length
        if length is not None and length > limit:
            raise _too_large(limit)
        # Without a length (a chunked body) read the raw stream: bounded_stream would
        # read nothing. Either way at most limit + 1 bytes are read.
        stream = req.stream if length is None else req.bounded_stream
        body: bytes = stream.read(limit + 1)
        if len(body) > limit:
            raise _too_large(limit)
        return body

    def _respond_with_result(self, payload: Any, request_id: str, resp: falcon.Response) -> None:
        reply = _Reply()
        delivery = Delivery(payload, meta={"webhook_id": request_id})
        delivery.reply = reply
        with self._waiting_lock:
            self._waiting[id(reply)] = reply
        try:
            if not self.offer_delivery(delivery):
                raise _queue_full(self)
            if not reply.done.wait(self.reply_timeout_s):
                raise falcon.HTTPGatewayTimeout(
                    title="Handler timed out",
                    description=f"no result within {self.reply_timeout_s:g} s; "
                    f"request {request_id} is still queued or running",
                )
        finally:
            with self._waiting_lock:
                self._waiting.pop(id(reply), None)
        if reply.abandoned:
            raise falcon.HTTPServiceUnavailable(
                title="Shutting down",
                description="the app stopped before the request was handled",
                retry_after=_RETRY_AFTER_STOPPED_S,
            )
        if reply.failure is not None:
            raise _handler_failed(self, request_id, reply.failure.as_dict())
        try:
            text = json.dumps(reply.result)
        except (TypeError, ValueError) as exc:
            failure = {"kind": "error", "exception_type": type(exc).__name__, "message": str(exc)}
            raise _handler_failed(self, request_id, failure) from None
        resp.status = falcon.HTTP_200
        resp.content_type = falcon.MEDIA_JSON
        resp.text = text


def _queue_full(source: WebhookSource) -> falcon.HTTPError:
    return falcon.HTTPServiceUnavailable(
        title="Queue full",
        description=f"{source.path} has {source.maxsize} requests waiting; retry later",
        retry_after=_RETRY_AFTER_FULL_S,
    )


def _too_large(limit: int) -> falcon.HTTPError:
    error: falcon.HTTPError = falcon.HTTPContentTooLarge(
        title="Payload too large", description=f"the body must be at most {limit} bytes"
    )
    return error


def _handler_failed(
    source: WebhookSource, request_id: str, failure: dict[str, str]
) -> falcon.HTTPError:
    error_id = uuid.uuid4().hex[:8]
    logger.error(
        "webhook %s request %s failed (error id %s): %s: %s",
        source.path,
        request_id,
        error_id,
        failure.get("exception_type"),
        failure.get("message"),
        extra={"error_id": error_id, "failure": failure},
    )
    return falcon.HTTPInternalServerError(
        title="Handler failed", description=f"error id {error_id}"
    )


@lru_cache(maxsize=64)
def _body_kind(content_type: str | None) -> tuple[str, str]:
    """('json' | 'form' | 'text' | 'bytes', charset) for a Content-Type header."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    if media == "application/json" or media.endswith("+json"):
        return "json", charset
    if media == "application/x-www-form-urlencoded":
        return "form", charset
    if media.startswith("text/"):
        return "text", charset
    return "bytes", charset


def _parse_body(content_type: str | None, body: bytes) -> Any:
    kind, charset = _body_kind(content_type)
    try:
        if kind == "json":
            return json.loads(body) if body else None
        if kind == "form":
            fields = parse_qs(body.decode(charset), keep_blank_values=True)
            return {
                key: values[0] if len(values) == 1 else values for key, values in fields.items()
            }
        if kind == "text":
            return body.decode(charset)
    except (ValueError, LookupError) as exc:  # JSONDecodeError and UnicodeError included
        raise falcon.HTTPBadRequest(
            title=f"Malformed {kind} body", description=f"{type(exc).__name__}: {exc}"
        ) from None
    return body


# -- falcon resources and embedding ----------------------------------------------------------


class WebhookResource:
    """The falcon resource of one path: `on_<method>` for each method of its sources
    (falcon answers 405 with `Allow` for the others). Responders run on a server thread."""

    def __init__(self, sources: Sequence[WebhookSource]) -> None:
        self.path = sources[0].path
        self.sources: dict[str, WebhookSource] = {}
        for source in sources:
            if source.path != self.path:
                raise ValueError(f"path {source.path!r} differs from {self.path!r}")
            for method in source.methods:
                if method in self.sources:
                    raise ValueError(
                        f"{method} {self.path} is served by both {self.sources[method].name!r} "
                        f"and {source.name!r}"
                    )
                self.sources[method] = source
                setattr(self, f"on_{method.lower()}", source.handle)

    @property
    def allowed_methods(self) -> list[str]:
        return sorted(self.sources)


def webhook_sources(onestep_app: OneStepApp) -> list[WebhookSource]:
    """The WebhookSources feeding `onestep_app`'s tasks."""
    return [
        spec.source for spec in onestep_app.tasks.values() if isinstance(spec.source, WebhookSource)
    ]


def mount(falcon_app: falcon.App[Any, Any], onestep_app: OneStepApp) -> list[WebhookSource]:
    """Add a route to `falcon_app` for every WebhookSource of `onestep_app` (sources of
    one path share a route) and return them. Call before `onestep_app.start()`."""
    sources = webhook_sources(onestep_app)
    if not sources:
        raise ValueError(f"onestep_app {onestep_app.name!r} has no task fed by a WebhookSource")
    by_path: dict[str, list[WebhookSource]] = {}
    for source in sources:
        source.serve = False
        by_path.setdefault(source.path, []).append(source)
    for path, group in by_path.items():
        falcon_app.add_route(path, WebhookResource(group))
    return sources


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WebhookMiddleware:
    """A WSGI app: requests to a webhook path go to onestep, all others to `wsgi_app`."""

    def __init__(self, wsgi_app: WSGIApp, onestep_app: OneStepApp) -> None:
        if not callable(wsgi_app):
            raise ValueError(f"wsgi_app must be a WSGI callable, got {wsgi_app!r}")
        self.wsgi_app = wsgi_app
        self.webhooks = falcon.App()
        self.paths = frozenset(source.path for source in mount(self.webhooks, onestep_app))

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in self.paths:
            return self.webhooks(environ, start_response)
        return self.wsgi_app(environ, start_response)


def wsgi_middleware(wsgi_app: WSGIApp, onestep_app: OneStepApp) -> WebhookMiddleware:
    """Wrap any WSGI app so that `onestep_app`'s webhook paths are served by onestep."""
    return WebhookMiddleware(wsgi_app, onestep_app)


# -- the standalone server -------------------------------------------------------------------


class _SharedServer:
    """One waitress server (on an "onestep-webhook-..." thread) for every open source
    with the same host and port, routed by path and method."""

    def __init__(self, host: str, port: int) -> None:
        self.routes: dict[str, WebhookResource] = {}
        self.sources: list[WebhookSource] = []
        self.falcon_app = falcon.App()
        self.falcon_app.add_sink(self._dispatch, prefix="/")
        self._inflight = 0
        self._idle = threading.Condition()
        self.server = waitress.create_server(
            self._wsgi, host=host, port=port, threads=SERVER_THREADS, ident="onestep"
        )
        self.port: int = self.server.effective_port
        self.thread = threading.Thread(
            target=self.server.run, name=f"onestep-webhook-{host}:{self.port}", daemon=True
        )
        self.thread.start()

    def add(self, source: WebhookSource) -> None:
        sources = [*self.sources, source]
        self.routes = _build_routes(sources)  # raises on a path and method served twice
        self.sources = sources

    def remove(self, source: WebhookSource) -> None:
        self.sources = [s for s in self.sources if s is not source]
        if self.sources:  # the last source keeps its route: it answers 503 while stopping
            self.routes = _build_routes(self.sources)

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Runs on a waitress worker thread; counts requests in flight for stop()."""
        with self._idle:
            self._inflight += 1
        try:
            return self.falcon_app(environ, start_response)
        finally:
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

    def _dispatch(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        resource = self.routes.get(req.path)
        if resource is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no webhook at {req.path}")
        source = resource.sources.get(req.method)
        if source is None:
            raise falcon.HTTPMethodNotAllowed(
                resource.allowed_methods,
                title="Method not allowed",
                description=f"{req.path} accepts {', '.join(resource.allowed_methods)}",
            )
        source.handle(req, resp)

    def stop(self) -> None:
        """Stop listening, let in-flight requests finish (they are answered 503 once
        no source is open), then stop waitress and join its threads."""
        server = self.server
        dispatcher = server.task_dispatcher
        # wasyncore is single-threaded: socket changes run on the server thread.
        server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        with self._idle:
            while (self._inflight or dispatcher.queue) and time.monotonic() < deadline:
                self._idle.wait(0.05)
        dispatcher.shutdown(cancel_pending=True, timeout=_DRAIN_TIMEOUT_S)
        server.trigger.pull_trigger(lambda: _close_channels(server))
        self.thread.join(_DRAIN_TIMEOUT_S)
        if self.thread.is_alive():
            logger.warning("webhook server on port %d did not stop in time", self.port)


def _close_channels(server: Any) -> None:
    """Runs on the server thread: close idle connections, the others once flushed; the
    server loop ends when none is left."""
    for channel in list(server._map.values()):
        if channel is server.trigger:
            continue
        if getattr(channel, "total_outbufs_len", 0):
            channel.close_when_flushed = True
        else:
            channel.close()
    server.trigger.close()


def _build_routes(sources: Sequence[WebhookSource]) -> dict[str, WebhookResource]:
    by_path: dict[str, list[WebhookSource]] = {}
    for source in sources:
        by_path.setdefault(source.path, []).append(source)
    return {path: WebhookResource(group) for path, group in by_path.items()}


_servers: dict[tuple[str, int], _SharedServer] = {}
_servers_lock = threading.Lock()


def _acquire_server(source: WebhookSource) -> _SharedServer:
    key = (source.host, source.port)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            server = _SharedServer(source.host, source.port)
            _servers[key] = server
        try:
            server.add(source)
        except ValueError:
            if not server.sources:
                del _servers[key]
                server.stop()
            raise
        return server


def _release_server(source: WebhookSource, server: _SharedServer) -> None:
    key = (source.host, source.port)
    with _servers_lock:  # held while stopping, so a restart can bind the port again
        server.remove(source)
        if server.sources:
            return
        if _servers.get(key) is server:
            del _servers[key]
        server.stop()
