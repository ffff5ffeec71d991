"""The operations endpoints: `GET /metrics` (Prometheus), `/healthz`, `/readyz` and a
status page at `/`, as falcon resources and as a waitress server in a thread.

`onestep run --http` and `app.serve_http()` start an `HttpServer`; an app that already
runs falcon mounts the same resources with `add_routes(falcon_app, app)`. The endpoints
read a monitor (onestep._metrics) and add nothing to the per-message path but counting.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress import wasyncore
from waitress.server import create_server

from ._collector import OnestepCollector
from ._metrics import AppMonitor, Monitor
from ._status_page import render_status_page

if TYPE_CHECKING:
    from ._app import OneStepApp

__all__ = ["HttpServer", "add_routes", "parse_address", "serve_http"]

logger = logging.getLogger("onestep.http")

_STOP_TIMEOUT_S = 5.0


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
    """`GET /`: the HTML status page (onestep._status_page)."""

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


class HttpServer:
    """The endpoints on a waitress server in a thread ("onestep-http"); `stop()` (or
    leaving a `with` block) closes it. `url` is where it listens, with a trailing `/`."""

    def __init__(self, monitor: Monitor, host: str, port: int) -> None:
        self.monitor = monitor
        self.falcon_app = falcon.App()
        add_routes(self.falcon_app, monitor)
        self._server: Any = create_server(
            self.falcon_app, host=host, port=port, threads=2, ident="onestep", map={}
        )
        self.host = host
        self.port: int = self._server.effective_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._stopped = False
        monitor.start()
        monitor.app._http_url = self.url
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
        if self.monitor.app._http_url == self.url:
            self.monitor.app._http_url = None
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


def serve_http(app: OneStepApp | Monitor, host: str = "127.0.0.1", port: int = 9100) -> HttpServer:
    """Serve the endpoints for `app` at `host:port` (port 0: any free port) in a thread
    of this process, and return the running HttpServer. Turns the app's counters on, so
    call it before the app starts (RuntimeError otherwise)."""
    monitor = app if isinstance(app, Monitor) else AppMonitor(app)
    return HttpServer(monitor, host, port)


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
