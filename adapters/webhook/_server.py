"""The standalone waitress servers, one per host and port, shared by the open sources;
joined and left by WebhookSource.open/close on the source actor's thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import falcon
import waitress
from waitress import wasyncore

from ._resource import WebhookResource

if TYPE_CHECKING:
    from ._source import WebhookSource

logger = logging.getLogger("onestep.webhook")

#: waitress worker threads of a standalone server (benchmarks/webhook.py uses the same).
SERVER_THREADS = 8
# How long close() waits for in-flight requests before it stops the server anyway.
_DRAIN_TIMEOUT_S = 10.0


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
