"""WebhookSource: the bounded in-memory queue that a webhook path's requests are put on;
built by users, opened and closed by the runtime, its requests handled on server threads."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import falcon

from onestep import Delivery, MemoryQueue, OneStepApp, SourceContext
from onestep.kit import BODY_REFUSED, check_delay, check_int

from ._auth import BearerToken, HmacSignature
from ._body import PARSERS, _parse_body
from ._errors import (
    _RETRY_AFTER_STOPPED_S,
    _body_unavailable,
    _handler_failed,
    _incomplete_body,
    _queue_full,
    _too_large,
    _too_many_waiting,
)
from ._headers import dropped_headers, forwarded_headers
from ._limits import ServerSettings
from ._reply import _Reply
from ._resource import WebhookResource
from ._response import WebhookResponse
from ._server import _acquire_server, _release_server, _SharedServer

logger = logging.getLogger("onestep.webhook")

_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_RESPOND_MODES = ("accepted", "result")
# Request ids: a per-process random prefix and a counter; uuid4 per request costs a
# urandom syscall and is not needed for uniqueness.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


class WebhookSource(MemoryQueue):
    """A bounded in-memory queue that HTTP requests to `path` are put on.

    `respond="accepted"` answers 202 once the request is queued; `respond="result"`
    waits up to `reply_timeout_s` for the handler and answers 200 with its return value.
    Sources with the same `host` and `port` share one server (`port=0`: a free port,
    shared by the port-0 sources open at the same time); `url` is set once open.

    The server settings (`connection_limit`, `idle_timeout_s`, `read_timeout_s`,
    `server_threads`) belong to that shared server: None takes the value another source
    on it gives, or the default; two different values on one server are an error at open.
    `response` (a WebhookResponse) replaces the 202 answer of respond="accepted";
    `parser` ("auto", "json", "form", "text", "raw") parses every body as one kind
    instead of by Content-Type. `forward_headers` names credential headers to keep in
    `item["headers"]` (by default Authorization, Cookie, Proxy-Authorization and the HMAC
    signature header are left out). JSON bodies nested deeper than `max_json_depth` are
    refused (400). A request's meta is `{"webhook_id": ...}` plus its `traceparent` and
    `tracestate` headers.
    """

    messaging_system = "webhook"

    def message_id(self, delivery: Delivery) -> Any:
        """The request's id (for tracing's `messaging.message.id`)."""
        return delivery.meta.get("webhook_id")

    #: keepalive() runs this often on the source actor's thread.
    keepalive_interval_s = 1.0

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
        forward_headers: Iterable[str] = (),
        max_json_depth: int = 64,
        connection_limit: int | None = None,
        idle_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        server_threads: int | None = None,
        response: WebhookResponse | None = None,
        parser: str = "auto",
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
        if response is not None and not isinstance(response, WebhookResponse):
            raise ValueError(f"response must be a WebhookResponse or None, got {response!r}")
        if response is not None and respond != "accepted":
            raise ValueError("response= is the answer of respond='accepted'; drop one of them")
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
        reply_timeout = check_delay("reply_timeout_s", reply_timeout_s, exclusive=True)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        if not isinstance(serve, bool):
            raise ValueError(f"serve must be a bool, got {serve!r}")
        dropped = dropped_headers(auth, forward_headers)
        check_int("max_json_depth", max_json_depth, minimum=1)
        #: What this source asks of its standalone server (None: the server's choice).
        self.server_settings = ServerSettings.checked(
            connection_limit, idle_timeout_s, read_timeout_s, server_threads
        )
        super().__init__(name or f"webhook:{path}", maxsize=queue_maxsize)
        self.path = path
        self.methods = checked
        self.host = host
        self.port = port
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.respond = respond
        self.reply_timeout_s = reply_timeout
        self.max_json_depth = max_json_depth
        #: The answer to a queued request (respond="accepted"); None: 202 with its id.
        self.response = response
        #: How bodies are parsed: "auto" (by Content-Type) or one kind for all.
        self.parser = parser
        #: Lower-case header names left out of `item["headers"]`.
        self.dropped_headers = dropped
        #: False once mounted in a host app (`falcon_resource`, `mount`, the middleware):
        #: open() then starts no server of its own.
        self.serve = serve
        #: `http://host:port/path` while a standalone server serves this source.
        self.url: str | None = None
        self._app: OneStepApp | None = None
        self._accepting = False
        #: Set while the source accepts requests (from open() to close()).
        self.ready = threading.Event()
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

    @property
    def listen_address(self) -> tuple[str, int] | None:
        """`(host, port)` of the standalone server this source opens (port 0 included),
        None once mounted in a host app. `onestep run --processes N` binds each such
        address once in its parent and every worker serves that socket."""
        return (self.host, self.port) if self.serve else None

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
        self.ready.set()

    def close(self) -> None:
        """Stop accepting and leave the server (the last source stops it once in-flight
        requests are answered). Queued requests stay queued for the next start, except
        respond="result" ones: their clients are answered 503 now."""
        self._accepting = False
        self.ready.clear()
        self._abandon_waiting()
        server, self._server = self._server, None
        if server is not None:
            _release_server(self, server)
        self.url = None

    def keepalive(self) -> None:
        """Runs on the source actor's thread every `keepalive_interval_s`: raise when the
        standalone server's loop has died, so that the supervisor restarts this source
        (close, then open, which starts a new server)."""
        server = self._server
        if server is not None and not server.alive:
            crash = server.crash
            reason = "" if crash is None else f": {type(crash).__name__}: {crash}"
            raise RuntimeError(f"the webhook server for {self.path} on {server.where} died{reason}")

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

    def refuses_before_body(self, headers: Mapping[str, str], content_length: int | None) -> bool:
        """True when handle() will answer this request without reading its body (not
        accepting, too large, failed bearer auth). Runs on the standalone server's loop
        thread once the headers are in, so that such a body is never read; `headers`
        has waitress's keys (`AUTHORIZATION`)."""
        app = self._app
        if not self._accepting or (app is not None and app.wait_for_shutdown_request(0)):
            return True
        if content_length is not None and content_length > self.max_body_bytes:
            return True
        auth = self.auth
        return auth is not None and not auth.needs_body and not auth.check(headers, b"")

    def handle(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer one request; the falcon responder for each of `methods`."""
        self._check_accepting()
        auth = self.auth
        if auth is not None and not auth.needs_body:
            self._authenticate(auth, req, b"")
        body = self._read_body(req)
        if auth is not None and auth.needs_body:
            self._authenticate(auth, req, body)
        try:
            parsed = _parse_body(req.content_type, body, self.max_json_depth, self.parser)
        except falcon.HTTPBadRequest as error:
            logger.info(
                "webhook %s: 400 for a body from %s: %s",
                self.path,
                req.remote_addr,
                error.description,
            )
            raise
        payload = {
            "body": parsed,
            "headers": forwarded_headers(req.headers_lower, self.dropped_headers),
            "query": dict(req.params),
            "method": req.method,
            "path": req.path,
            "client": req.remote_addr,
            "received_at": time.time(),
        }
        request_id = f"{_ID_PREFIX}-{next(_ids)}"
        meta = _meta_of(request_id, req.headers_lower)
        if self.respond == "accepted":
            if not self.offer(payload, meta):
                raise _queue_full(self)
            if self.response is not None:
                _answer(resp, self.response)
                return
            resp.status = falcon.HTTP_202
            resp.content_type = falcon.MEDIA_JSON
            resp.text = f'{{"accepted": true, "id": "{request_id}"}}'
            return
        self._respond_with_result(payload, meta, resp)

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
        if req.env.get(BODY_REFUSED):
            raise _body_unavailable(self)
        # Without a length (a chunked body) read the raw stream: bounded_stream would
        # read nothing. Either way at most limit + 1 bytes are read.
        stream = req.stream if length is None else req.bounded_stream
        body: bytes = stream.read(limit + 1)
        if len(body) > limit:
            raise _too_large(limit)
        if length is not None and len(body) < length:
            raise _incomplete_body(length, len(body))  # the client went away mid-body
        return body

    def _respond_with_result(
        self, payload: Any, meta: dict[str, Any], resp: falcon.Response
    ) -> None:
        # A waiting request holds its server thread: keep some free for the others.
        server = self._server
        if server is not None and not server.start_waiting():
            raise _too_many_waiting(self, server.settings.max_result_waiters)
        try:
            self._wait_for_result(payload, meta, resp)
        finally:
            if server is not None:
                server.stop_waiting()

    def _wait_for_result(self, payload: Any, meta: dict[str, Any], resp: falcon.Response) -> None:
        reply = _Reply()
        request_id = meta["webhook_id"]
        delivery = Delivery(payload, meta=meta)
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
        if reply.text is None:  # the runtime calls encode() before it reports success
            failure = {"kind": "encode", "exception_type": "", "message": "result not encoded"}
            raise _handler_failed(self, request_id, failure)
        resp.status = falcon.HTTP_200
        resp.content_type = falcon.MEDIA_JSON
        resp.text = reply.text


#: The W3C trace-context headers a request's meta keeps, so that a traced app's span for
#: the request continues the caller's trace (`OneStepApp(tracing=True)`).
TRACE_HEADERS = ("traceparent", "tracestate")


def _meta_of(request_id: str, headers: Mapping[str, str]) -> dict[str, Any]:
    """A request's meta: its id, and the caller's trace context if it sent one."""
    meta: dict[str, Any] = {"webhook_id": request_id}
    for name in TRACE_HEADERS:
        value = headers.get(name)
        if value:
            meta[name] = value
    return meta


def _answer(resp: falcon.Response, response: WebhookResponse) -> None:
    """Send a WebhookResponse (rendered at its construction); a server thread."""
    resp.status = response.status_code
    for key, value in response.headers.items():
        resp.set_header(key, value)
    if response.content_type is not None:
        resp.content_type = response.content_type
    resp.data = response.content
