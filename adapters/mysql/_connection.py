"""Helpers shared by the MySQL adapter: URL parsing, quoting, JSON encoding, telling a lost
connection, transactions; called by the connector, pool, queue, sink and state store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql.err

# pymysql error codes that mean the connection is gone (the server went away, the
# connection was lost or refused) rather than that the statement was wrong.
_CONNECTION_LOST = {2003, 2006, 2013, 2055}


def parse_url(url: Any) -> tuple[str, int, str, str, str]:
    """(host, port, user, password, database) of a `mysql://` URL, or ValueError saying
    which part is missing or wrong (never repeating the password)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a string like mysql://user:pass@host:3306/db, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
        raise ValueError(
            f"url must start with mysql://, got scheme {parts.scheme!r} "
            "(expected mysql://user:pass@host:3306/db)"
        )
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError(
            "url has an invalid port (expected mysql://user:pass@host:3306/db)"
        ) from None
    host = parts.hostname
    if not host:
        raise ValueError("url names no host (expected mysql://user:pass@host:3306/db)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError("url names no database (expected mysql://user:pass@host:3306/db)")
    user = unquote(parts.username or "")
    if not user:
        raise ValueError("url names no user (expected mysql://user:pass@host:3306/db)")
    password = unquote(parts.password or "")
    return host, port, user, password, database


def quote_ident(name: str, what: str = "table") -> str:
    """Quote a table or column name with backticks (a backtick inside is doubled).

    `%` is doubled too, because every statement goes through pymysql's `%` formatting
    (we always pass an argument tuple, even an empty one, so it is undone there)."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 64:
        raise ValueError(f"{what} must be a non-empty name of at most 64 characters, got {name!r}")
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def placeholders(count: int) -> str:
    """`%s, %s, ...`: `count` argument placeholders, e.g. for an `IN (...)` list."""
    return ", ".join(["%s"] * count)


def encode_json(value: Any, what: str) -> str:
    """Compact JSON text of `value`; TypeError naming `what` if it is not serialisable."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from exc


def error_code(exc: BaseException) -> int | None:
    """The server's (or pymysql's) error number of a pymysql error, else None."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def error_text(exc: BaseException) -> str:
    """The message of a pymysql error without its number."""
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1:
        return str(exc.args[1])
    return str(exc)


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the connection is gone (worth reconnecting), not a bad statement."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _CONNECTION_LOST
    return False


def close_quietly(conn: Any) -> None:
    """Close `conn` (if any), ignoring errors: it may already be dead."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        conn.close()


@contextlib.contextmanager
def transaction(conn: Any, *, begin: bool = True) -> Iterator[None]:
    """Commit what the block did; if it (or the commit) raises, roll back quietly (the
    block's error is the one worth seeing) and re-raise. `begin=False` on a connection
    without autocommit, where the first statement opens the transaction."""
    try:
        if begin:
            conn.begin()
        yield
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
