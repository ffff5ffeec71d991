"""Embedding webhooks in a host WSGI app: mount on a falcon app, or wsgi_middleware
around any WSGI app; called by users before the onestep app starts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon

from onestep import OneStepApp

from ._resource import WebhookResource
from ._source import WebhookSource


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
