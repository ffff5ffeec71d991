"""The connection-level settings of a standalone webhook server (connection limit, idle and
read timeouts, threads): checked when a WebhookSource is built, merged for the sources
that share a server, and checked against the process's file limit when one opens."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from onestep.kit import check_delay, check_int

if TYPE_CHECKING:
    from ._source import WebhookSource

# Defaults, for a server whose sources leave a setting at None. 500 connections keep
# normal clients served while hundreds of slow ones hold theirs (waitress's 100 does not),
# and fit the common `ulimit -n` of 1024 with FD_RESERVE to spare.
DEFAULT_CONNECTION_LIMIT = 500
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_THREADS = 8
# A respond="result" request holds a thread until its result comes; see max_result_waiters.
DEFAULT_RESULT_THREADS = 32
#: File descriptors left for the rest of the process (broker and database connections,
#: log files, pipes) when the connection limits are checked against `ulimit -n`.
FD_RESERVE = 100


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What one source asks of its server; None leaves the setting to the other sources
    on the server, or the default."""

    connection_limit: int | None = None
    idle_timeout_s: float | None = None
    read_timeout_s: float | None = None
    server_threads: int | None = None

    @classmethod
    def checked(
        cls,
        connection_limit: Any,
        idle_timeout_s: Any,
        read_timeout_s: Any,
        server_threads: Any,
    ) -> ServerSettings:
        """Validate WebhookSource's arguments; ValueError names the parameter."""
        return cls(
            connection_limit=None
            if connection_limit is None
            else check_int("connection_limit", connection_limit, minimum=1),
            idle_timeout_s=None
            if idle_timeout_s is None
            else check_delay("idle_timeout_s", idle_timeout_s, exclusive=True),
            read_timeout_s=None
            if read_timeout_s is None
            else check_delay("read_timeout_s", read_timeout_s, exclusive=True),
            server_threads=None
            if server_threads is None
            else check_int("server_threads", server_threads, minimum=2),
        )


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """What a server runs with."""

    connection_limit: int
    idle_timeout_s: float
    read_timeout_s: float
    threads: int
    #: The largest max_body_bytes of the server's sources.
    max_body_bytes: int

    @property
    def max_result_waiters(self) -> int:
        """How many respond="result" requests may wait for their result at once: all
        threads but a quarter (at least one), which stay free for every other request.
        A result request over that is answered 503 at once."""
        return self.threads - max(1, self.threads // 4)


def merge(sources: Sequence[WebhookSource], where: str) -> EffectiveSettings:
    """The settings of the server at `where` ("host:port") for `sources`: the value some
    source gives, else the default. ValueError, naming both sources, when two give
    different values."""
    chosen: dict[str, Any] = {}
    for field in fields(ServerSettings):
        given: tuple[Any, WebhookSource] | None = None
        for source in sources:
            value = getattr(source.server_settings, field.name)
            if value is None:
                continue
            if given is not None and given[0] != value:
                raise ValueError(
                    f"{field.name}={value!r} of {source.name!r} conflicts with "
                    f"{field.name}={given[0]!r} of {given[1].name!r}: sources on {where} share "
                    f"one server; give both the same value or use another port"
                )
            given = (value, source)
        chosen[field.name] = None if given is None else given[0]
    threads = chosen["server_threads"]
    if threads is None:
        result_mode = any(source.respond == "result" for source in sources)
        threads = DEFAULT_RESULT_THREADS if result_mode else DEFAULT_THREADS
    return EffectiveSettings(
        connection_limit=chosen["connection_limit"] or DEFAULT_CONNECTION_LIMIT,
        idle_timeout_s=chosen["idle_timeout_s"] or DEFAULT_IDLE_TIMEOUT_S,
        read_timeout_s=chosen["read_timeout_s"] or DEFAULT_READ_TIMEOUT_S,
        threads=threads,
        max_body_bytes=max(source.max_body_bytes for source in sources),
    )


def check_file_limit(connection_limit: int, others: int, where: str) -> None:
    """ValueError when `connection_limit` connections on the server at `where`, plus
    `others` allowed on this process's other webhook servers, plus FD_RESERVE, exceed the
    soft RLIMIT_NOFILE (`ulimit -n`): past it accept() fails and waitress spins."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connection_limit + others + FD_RESERVE
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    raise ValueError(
        f"connection_limit={connection_limit} on {where} needs {needed} file descriptors "
        f"({others} for other webhook servers, {FD_RESERVE} for the rest of the process) but "
        f"`ulimit -n` is {soft}: raise the limit or pass a smaller connection_limit"
    )
