"""WebhookSource: HTTP requests become a task's messages, served by falcon on waitress;
users create one per path, the runtime serves it or a host app embeds it (`mount`).

The queue behind a webhook is a bounded MemoryQueue held in this process: a request
answered 202 is kept across an app restart (unfinished deliveries are released back to
it at shutdown), but whatever is queued when the process dies is lost. For durability,
keep the webhook task small and emit each request to a durable queue (RabbitMQ, MySQL).
"""

from ._auth import BearerToken, HmacSignature
from ._embedding import WebhookMiddleware, mount, webhook_sources, wsgi_middleware
from ._resource import WebhookResource
from ._response import WebhookResponse
from ._server import SERVER_THREADS
from ._source import WebhookSource

#: Upstream onestep's name for BearerToken (`BearerAuth(token)`).
BearerAuth = BearerToken

__all__ = [
    "SERVER_THREADS",
    "BearerAuth",
    "BearerToken",
    "HmacSignature",
    "WebhookMiddleware",
    "WebhookResource",
    "WebhookResponse",
    "WebhookSource",
    "mount",
    "webhook_sources",
    "wsgi_middleware",
]
