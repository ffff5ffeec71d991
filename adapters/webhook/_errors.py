"""The falcon errors a webhook answers with when a request cannot be queued or handled
(503 queue full or too many waiting, 413, 400, 500); raised by WebhookSource on a server
thread."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import falcon

if TYPE_CHECKING:
    from ._source import WebhookSource

logger = logging.getLogger("onestep.webhook")

# Seconds a client is told to wait: a full queue drains fast, a restart takes longer.
_RETRY_AFTER_FULL_S = 1
_RETRY_AFTER_STOPPED_S = 5


def _queue_full(source: WebhookSource) -> falcon.HTTPError:
    return falcon.HTTPServiceUnavailable(
        title="Queue full",
        description=f"{source.path} has {source.maxsize} requests waiting; retry later",
        retry_after=_RETRY_AFTER_FULL_S,
    )


def _too_many_waiting(source: WebhookSource, limit: int) -> falcon.HTTPError:
    return falcon.HTTPServiceUnavailable(
        title="Too many requests waiting",
        description=f"{limit} requests on this server are waiting for their results; retry later",
        retry_after=_RETRY_AFTER_FULL_S,
    )


def _body_unavailable(source: WebhookSource) -> falcon.HTTPError:
    """The server refused this request's body unread (the route or its source changed
    between the headers and now): the client can send it again."""
    return falcon.HTTPServiceUnavailable(
        title="Not accepting requests",
        description=f"{source.path} was not ready for this request's body; retry",
        retry_after=_RETRY_AFTER_FULL_S,
    )


def _incomplete_body(length: int, received: int) -> falcon.HTTPError:
    return falcon.HTTPBadRequest(
        title="Incomplete body",
        description=f"Content-Length is {length} but the body ended after {received} bytes",
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
