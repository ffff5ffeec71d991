"""The standalone waitress servers, one per host and port, shared by the open sources;
joined and left by WebhookSource.open/close on the source actor's thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import falcon
from waitress import wasyncore

from onestep.kit import GuardedServer, guarded_adjustments, inherited_socket

from ._limits import DEFAULT_THREADS, EffectiveSettings, check_file_limit, merge
from ._resource import WebhookResource

if TYPE_CHECKING:
    from ._source import WebhookSource

logger = logging.getLogger("onestep.webhook")

#: waitress worker threads of a standalone server without respond="result" sources
#: (benchmarks/webhook.py gives its raw baseline the same).
SERVER_THREADS = DEFAULT_THREADS
# How long close() waits for in-flight requests before it stops the server anyway.
_DRAIN_TIMEOUT_S = 10.0
# Bytes over the largest max_body_bytes that waitress's own body limit allows: room for
# chunk framing, so that the per-source checks in the guarded server always answer first.
_WAITRESS_BODY_SLACK = 65_536


class _SharedServer:
    """One waitress server (on an "onestep-webhook-..." thread) for every open source
    with the same host and port, routed by path and method."""

    def __init__(self, host: str, port: int, settings: EffectiveSettings) -> None:
        self.routes: dict[str, WebhookResource] = {}
        self.sources: list[WebhookSource] = []
        self.settings = settings
        self.falcon_app = falcon.App()
        self.falcon_app.add_sink(self._dispatch, prefix="/")
        self._inflight = 0
        self._idle = threading.Condition()
        self._result_waiters = 0
        self._stopped = False
        #: The exception that ended the server loop, if one did.
        self.crash: BaseException | None = None
        adj = guarded_adjustments(
            host,
            port,
            threads=settings.threads,
            connection_limit=settings.connection_limit,
            max_request_body_size=settings.max_body_bytes + _WAITRESS_BODY_SLACK,
        )
        self.server = GuardedServer(
            self._wsgi,
            adj,
            self,
            read_timeout_s=settings.read_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            # Under `onestep run --processes N` the parent bound (host, port) once and
            # every worker's server accepts on that socket: one port for all workers.
            sock=inherited_socket(host, port),
            label="webhook server",
        )
        self.port: int = self.server.effective_port
        self.where = f"{host}:{self.port}"
        self.thread = threading.Thread(
            target=self._serve, name=f"onestep-webhook-{host}:{self.port}", daemon=True
        )
        self.thread.start()

    @property
    def alive(self) -> bool:
        """False once the server loop ended without stop()."""
        return self._stopped or self.thread.is_alive()

    def _serve(self) -> None:
        """The server thread: waitress's loop. An exception that ends it is logged and
        kept; the sources' keepalive() then reports it, and their restart opens a new
        server."""
        try:
            self.server.run()
        except BaseException as exc:
            self.crash = exc
            logger.error(
                "webhook server on %s stopped: %s: %s",
                self.where,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    # -- sources: the source actor's thread (under _servers_lock) ---------------------------

    def add(self, source: WebhookSource) -> None:
        sources = [*self.sources, source]
        routes = _build_routes(sources)  # raises on a path and method served twice
        self._apply(merge(sources, self.where))  # raises on conflicting settings
        self.routes = routes
        self.sources = sources

    def remove(self, source: WebhookSource) -> None:
        self.sources = [s for s in self.sources if s is not source]
        if self.sources:  # the last source keeps its route: it answers 503 while stopping
            self.routes = _build_routes(self.sources)
            self._apply(merge(self.sources, self.where))

    def _apply(self, settings: EffectiveSettings) -> None:
        """Waitress reads these on every pass of its loop, so they change in place."""
        server = self.server
        server.adj.connection_limit = settings.connection_limit
        server.adj.max_request_body_size = settings.max_body_bytes + _WAITRESS_BODY_SLACK
        server.read_timeout_s = settings.read_timeout_s
        server.idle_timeout_s = settings.idle_timeout_s
        if settings.threads != self.settings.threads:
            server.task_dispatcher.set_thread_count(settings.threads)
        self.settings = settings

    # -- requests ------------------------------------------------------------------------

    def body_limit(
        self, method: str, path: str, headers: Mapping[str, str], content_length: int | None
    ) -> int | None:
        """Runs on the server's loop thread once a request's headers are in: the source's
        max_body_bytes, or None when the request will be answered without its body (no
        such route, not accepting, too large, failed bearer auth)."""
        resource = self.routes.get(path)
        source = None if resource is None else resource.sources.get(method)
        if source is None or source.refuses_before_body(headers, content_length):
            return None
        return source.max_body_bytes

    def start_waiting(self) -> bool:
        """Runs on a waitress thread: take one of the threads that respond="result"
        requests may hold while they wait; False when all of them are taken."""
        with self._idle:
            if self._result_waiters >= self.settings.max_result_waiters:
                return False
            self._result_waiters += 1
            return True

    def stop_waiting(self) -> None:
        with self._idle:
            self._result_waiters -= 1

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

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop listening, let in-flight requests finish (they are answered 503 once
        no source is open), then stop waitress and join its threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        server = self.server
        dispatcher = server.task_dispatcher
        if not self.thread.is_alive():
            # The loop died: nothing else touches its sockets, so close them here (the
            # port is then free for the server that replaces this one).
            dispatcher.shutdown(cancel_pending=True, timeout=_DRAIN_TIMEOUT_S)
            wasyncore.close_all(server._map, ignore_all=True)
            return
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
            logger.warning("webhook server on %s did not stop in time", self.where)


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
    where = f"{source.host}:{source.port}"
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and not server.alive:
            # Its loop died: the sources still on it notice through keepalive() and
            # restart onto the new server; closing its socket frees the port now.
            del _servers[key]
            server.stop()
            server = None
        sources = [source] if server is None else [*server.sources, source]
        settings = merge(sources, where if server is None else server.where)
        others = sum(s.settings.connection_limit for s in _servers.values() if s is not server)
        check_file_limit(settings.connection_limit, others, where)
        if server is None:
            server = _SharedServer(source.host, source.port, settings)
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
