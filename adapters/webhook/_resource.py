"""WebhookResource: the falcon resource that routes one path's methods to its sources;
made by WebhookSource.falcon_resource, mount and the shared server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._source import WebhookSource


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
