"""Helpers shared by the PostgreSQL adapter: URL parsing, identifier quoting, telling a
lost connection from a bad statement; called by the connector, queue, sink, state store."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg

_EXPECTED = "expected postgresql://user:pass@host:5432/db"
_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")

# SQLSTATE classes that mean the connection (or the server) went away rather than that
# the statement was wrong: 08 connection exception, 57P01-57P03 admin shutdown, crash
# shutdown, cannot connect now (the server is starting or stopping).
_LOST_STATES = ("57P01", "57P02", "57P03")


class Target:
    """What a PostgreSQL URL names: host, port, user, database and libpq options; the
    password is kept apart (`password`) and out of every repr and message."""

    __slots__ = ("database", "host", "options", "password", "port", "user")

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        options: dict[str, str],
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.options = options

    def connect_kwargs(self, connect_timeout_s: float) -> dict[str, Any]:
        """The keyword arguments of psycopg.connect for this target."""
        kwargs: dict[str, Any] = dict(self.options)
        kwargs.update(host=self.host, port=self.port, user=self.user, dbname=self.database)
        if self.password:
            kwargs["password"] = self.password
        kwargs.setdefault("connect_timeout", max(1, round(connect_timeout_s)))
        kwargs.setdefault("application_name", "onestep")
        return kwargs

    def mask(self, text: str) -> str:
        """`text` with the password replaced by ***."""
        return text.replace(self.password, "***") if self.password else text


def parse_url(url: Any) -> Target:
    """The Target of a `postgresql://` (or `postgresql+psycopg://`) URL, or ValueError
    saying which part is missing or wrong (never repeating the password). Query
    parameters (`?sslmode=require`) are passed to libpq as they are."""
    if not isinstance(url, str) or not url:
        raise ValueError(
            f"url must be a string like postgresql://user:pass@host:5432/db, got {url!r}"
        )
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"url must start with postgresql:// or postgresql+psycopg://, got scheme "
            f"{parts.scheme!r} ({_EXPECTED})"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError(f"url has an invalid port ({_EXPECTED})") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"url names no host ({_EXPECTED})")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"url names no database ({_EXPECTED})")
    user = unquote(parts.username or "")
    if not user:
        raise ValueError(f"url names no user ({_EXPECTED})")
    password = unquote(parts.password or "")
    options = dict(parse_qsl(parts.query))
    password = options.pop("password", password)
    for reserved in ("host", "port", "user", "dbname"):
        if reserved in options:
            raise ValueError(f"url sets {reserved} twice (in the URL and as ?{reserved}=)")
    return Target(host, port, user, password, database, options)


def quote_ident(name: Any, what: str = "table") -> str:
    """Quote a table or column name with double quotes (one inside is doubled).

    Names are case-sensitive once quoted: `Jobs` and `jobs` are two tables. `%` is
    doubled, as every statement goes through psycopg's `%s` placeholders."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name.encode()) > 63:
        raise ValueError(
            f"{what} must be a non-empty name of at most 63 bytes (PostgreSQL's limit), "
            f"got {name!r}"
        )
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def unquoted(sql: str) -> str:
    """SQL built for psycopg (with `%%`) as a user would type it."""
    return sql.replace("%%", "%")


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the connection is gone (worth reconnecting), not a bad
    statement."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state in _LOST_STATES
    return False


def close_quietly(conn: Any) -> None:
    """Close `conn` (if any), ignoring errors: it may already be dead."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        conn.close()
