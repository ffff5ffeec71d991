"""Upstream onestep-redis's `RedisConnector(url, options=None)` and its `stream(...)`
keywords and defaults (a new group starts at `$`), on onestep's Redis connector with
upstream's wire format by default; built by a migrant's code on the importing thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.exceptions

from adapters.redis import RedisConnector as _RedisConnector
from adapters.redis import RedisStream

from ._closing import CLOSED, Closed
from ._options import refuse

#: redis-py options that have a onestep equivalent: theirs -> ours
_OPTIONS = {"socket_connect_timeout": "connect_timeout_s", "socket_timeout": "socket_timeout_s"}


class UpstreamStream(RedisStream):
    """A RedisStream whose `publish` upstream code may await (`await
    stream.publish(body, meta=..., attempts=...)`): it adds the entry at once and
    returns an awaitable that is already done. As upstream's, the first publish makes
    the group first (at `start_id`, `$` by default), so what a startup hook publishes
    is not skipped by a group made later at `$`."""

    _group_made = False

    def publish(  # type: ignore[override]
        self, body: Any, meta: dict[str, Any] | None = None, *, attempts: int = 0
    ) -> Closed:
        if not self._group_made:
            with self.connector.errors(f"open Redis stream {self.name!r}"):
                try:
                    self.client.xgroup_create(
                        self.name, self.group, id=self.start_id, mkstream=True
                    )
                except redis.exceptions.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            self._group_made = True
        self.put(body, meta, attempts=attempts)
        return CLOSED


class RedisConnector(_RedisConnector):
    """`onestep_redis.RedisConnector` for migrants: the same constructor and `stream()`
    keywords and defaults, streams that read and write onestep-redis's entries
    (`wire_format="upstream"`) unless told otherwise, a `close()` that may be awaited."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        extra = dict(options or {})
        for theirs, ours in _OPTIONS.items():
            if theirs in extra:
                kwargs.setdefault(ours, extra.pop(theirs))
        refuse("RedisConnector", "options", extra, "onestep configures its own client")
        super().__init__(url, **kwargs)

    def stream(
        self,
        name: str,
        *,
        group: str = "onestep",
        consumer: str | None = None,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
        block_ms: int | None = None,
        start_id: str = "$",
        create_group: bool = True,
        maxlen: int | None = None,
        approximate_trim: bool = True,
        claim_idle_s: float = 60.0,
        wire_format: str = "upstream",
    ) -> UpstreamStream:
        """A stream with upstream's keywords: `block_ms` (a read blocks for at most
        `poll_interval_s` here) and `approximate_trim` (trimming is always approximate)
        are accepted and unused; `create_group=False` is refused (the group is made
        when the stream opens)."""
        refuse(
            "RedisConnector.stream",
            "option",
            {"create_group": create_group} if create_group is not True else {},
            "the group is made when the stream opens",
        )
        return UpstreamStream(
            self,
            name,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            maxlen=maxlen,
            claim_idle_s=claim_idle_s,
            start_id=start_id,
            wire_format=wire_format,
        )

    def close(self) -> Closed:  # type: ignore[override]
        """Close the pooled connections; `await` it or not."""
        super().close()
        return CLOSED
