"""The operations endpoints: `GET /metrics` (Prometheus), `/healthz`, `/readyz` and a
status page at `/`, as falcon resources and as a waitress server in a thread.

`onestep run --http` and `app.serve_http()` start an `HttpServer`; an app that already
runs falcon mounts the same resources with `add_routes(falcon_app, app)`. The endpoints
read a monitor (onestep.ops._metrics) and add nothing to the per-message path but counting.

The server is the webhook's guarded waitress server (onestep.ops._serving): slow or idle
clients are cut off (read and idle timeouts), hundreds of them fit under the connection
limit, and no request body is ever read (none of these endpoints takes one), so a
liveness probe is answered while clients trickle bytes or hold idle connections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress import wasyncore

from ._values import check_delay, check_int
from .ops._collector import OnestepCollector
from .ops._metrics import AppMonitor, Monitor
from .ops._serving import GuardedServer, guarded_adjustments
from .ops._status_page import render_status_page

if TYPE_CHECKING:
    from ._onestep_app import OneStepApp

__all__ = ["HttpServer", "add_routes", "parse_address", "serve_http"]

logger = logging.getLogger("onestep.http")

_STOP_TIMEOUT_S = 5.0

#: Connections the endpoint keeps open at most: many more than the probes and scrapers
#: that use it, so that slow or idle clients (cut off after the timeouts below) do not
#: lock them out; with a webhook server's 500 it fits the common `ulimit -n` of 1024.
CONNECTION_LIMIT = 300
#: Seconds a request may take to arrive from its first byte before it is cut off.
READ_TIMEOUT_S = 10.0
#: Seconds a connection may stay idle between requests.
IDLE_TIMEOUT_S = 30.0
#: Threads answering requests. A slow client holds none (the server's loop reads the
#: request and writes the answer); a thread only renders a page, so a few keep the
#: probes answered while the status page is being rendered for someone else.
THREADS = 4


class MetricsResource:
    """`GET /metrics`: the Prometheus text format."""

    def __init__(self, monitor: Monitor) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OnestepCollector(monitor))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self.registry)
        resp.content_type = CONTENT_TYPE_LATEST


class HealthResource:
    """`GET /healthz` (liveness): 200 while the runtime runs (`ok` or `degraded`), 503
    once it stopped or failed."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        health = self.monitor.snapshot()["health"]
        resp.media = health
        if health["status"] not in ("ok", "degraded"):
            resp.status = falcon.HTTP_503


class ReadyResource:
    """`GET /readyz` (readiness): 200 when every source is open and no actor is being
    restarted, else 503 naming the problems."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot = self.monitor.snapshot()
        health = snapshot["health"]
        problems = dict(health["problems"])
        if not snapshot["running"]:
            problems.setdefault("app", health["status"])
        for name, source in snapshot["sources"].items():
            if not source["up"]:
                problems.setdefault(f"source {name!r}", "not open")
        ready = snapshot["ready"] and not problems
        resp.media = {"ready": ready, "status": health["status"], "problems": problems}
        if not ready:
            resp.status = falcon.HTTP_503


class StatusPageResource:
    """`GET /`: the HTML status page (onestep.ops._status_page)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page = render_status_page(
            self.monitor.snapshot(),
            self.monitor.describe(),
            self.monitor.rates(),
            self.monitor.history,
        )
        resp.text = page
        resp.content_type = falcon.MEDIA_HTML
        resp.cache_control = ["no-store"]


def add_routes(
    falcon_app: falcon.App[Any, Any], app: OneStepApp | Monitor, prefix: str = ""
) -> Monitor:
    """Mount `/metrics`, `/healthz`, `/readyz` and the status page (at `prefix` or `/`)
    on `falcon_app`, for `app` (a OneStepApp, whose counters this turns on: call it
    before the app starts). Returns the monitor the resources read; call its `start()`
    for queue depths and rates on the page, `stop()` when done."""
    monitor = app if isinstance(app, Monitor) else AppMonitor(app)
    prefix = prefix.rstrip("/")
    falcon_app.add_route(f"{prefix}/metrics", MetricsResource(monitor))
    falcon_app.add_route(f"{prefix}/healthz", HealthResource(monitor))
    falcon_app.add_route(f"{prefix}/readyz", ReadyResource(monitor))
    falcon_app.add_route(prefix or "/", StatusPageResource(monitor))
    return monitor


class _NoBodies:
    """The endpoint's BodyRouter: none of its routes takes a body, so a request that
    announces one (or sends it chunked) is answered without reading it."""

    def body_limit(
        self, method: str, path: str, headers: Mapping[str, str], content_length: int | None
    ) -> int | None:
        """Runs on the server's loop thread once a request's headers are in."""
        return 0 if content_length == 0 else None


class HttpServer:
    """The endpoints on a guarded waitress server (onestep.ops._serving) in a thread
    ("onestep-http-PORT"); `stop()` (or leaving a `with` block) closes it. `url` is where
    it listens, with a trailing `/`. Raises OSError when `host` cannot be resolved or
    `port` bound, ValueError (naming the parameter) for a bad setting."""

    def __init__(
        self,
        monitor: Monitor,
        host: str,
        port: int,
        *,
        connection_limit: int = CONNECTION_LIMIT,
        read_timeout_s: float = READ_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        threads: int = THREADS,
    ) -> None:
        self.monitor = monitor
        self.falcon_app = falcon.App()
        add_routes(self.falcon_app, monitor)
        adj = guarded_adjustments(
            host,
            port,
            threads=check_int("threads", threads, minimum=2),
            connection_limit=check_int("connection_limit", connection_limit, minimum=1),
            max_request_body_size=0,
        )
        self._server = GuardedServer(
            self.falcon_app,
            adj,
            _NoBodies(),
            read_timeout_s=check_delay("read_timeout_s", read_timeout_s, exclusive=True),
            idle_timeout_s=check_delay("idle_timeout_s", idle_timeout_s, exclusive=True),
            label="operations endpoint",
        )
        self.host = host
        self.port: int = self._server.effective_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._stopped = False
        monitor.start()
        monitor.app.internals.set_http_url(self.url)
        self._thread = threading.Thread(
            target=self._serve, name=f"onestep-http-{self.port}", daemon=True
        )
        self._thread.start()
        logger.info("serving /metrics, /healthz, /readyz and the status page at %s", self.url)

    def _serve(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # the loop ended on its own: say so, keep the app
            if not self._stopped:
                logger.error("the HTTP server at %s stopped: %r", self.url, exc)

    def stop(self) -> None:
        """Stop listening and join the server's threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        if self._thread.is_alive():
            # wasyncore is single-threaded: the sockets are closed on the server thread
            server.trigger.pull_trigger(lambda: _close_all(server))
            self._thread.join(_STOP_TIMEOUT_S)
        else:
            wasyncore.close_all(server._map, ignore_all=True)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=_STOP_TIMEOUT_S)
        self.monitor.app.internals.clear_http_url(self.url)
        self.monitor.stop()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _close_all(server: Any) -> None:
    """Runs on the server thread: the loop ends when no socket is left in its map."""
    for channel in list(server._map.values()):
        if channel is not server.trigger:
            channel.close()
    server.trigger.close()


def serve_http(
    app: OneStepApp | Monitor, host: str = "127.0.0.1", port: int = 9100, **settings: Any
) -> HttpServer:
    """Serve the endpoints for `app` at `host:port` (port 0: any free port) in a thread
    of this process, and return the running HttpServer. Turns the app's counters on, so
    call it before the app starts (RuntimeError otherwise). `settings` are HttpServer's
    `connection_limit`, `read_timeout_s`, `idle_timeout_s` and `threads`."""
    monitor = app if isinstance(app, Monitor) else AppMonitor(app)
    return HttpServer(monitor, host, port, **settings)


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `PORT` (host 127.0.0.1) -> (host, port); ValueError
    naming the problem."""
    text = value.strip()
    host, port_text = "127.0.0.1", text
    if ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT or PORT (a port from 0 to 65535)")
    return host, int(port_text)
