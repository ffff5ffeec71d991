"""Upstream onestep-sql's (and onestep-mysql's) `MySQLConnector(dsn, **engine_options)` and
`PostgresConnector(dsn, **engine_options)` with their keyword-only methods and defaults,
on onestep's MySQL and PostgreSQL connectors; built on the importing thread."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._closing import CLOSED, Closed
from ._options import refuse

#: SQLAlchemy engine options with no meaning here (onestep keeps its own pool): accepted
#: so that upstream code runs, and unused.
_IGNORED_ENGINE_OPTIONS = frozenset(
    {"pool_pre_ping", "pool_recycle", "echo", "echo_pool", "max_overflow", "pool_timeout"}
)
#: upstream's column-name options of state and cursor stores, with their defaults
_STORE_COLUMNS = {
    "key_column": "state_key",
    "value_column": "state_value",
    "updated_at_column": "updated_at",
}


def connector_options(dsn: str, engine_options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(onestep URL, onestep keywords) for an upstream DSN and engine options: the async
    driver named in the scheme (`mysql+aiomysql`, `postgresql+asyncpg`) is dropped,
    `pool_size` and `connect_timeout_s`/`name` kept, SQLAlchemy-only options ignored or
    refused (ValueError naming them)."""
    url = re.sub(r"^(mysql|mariadb)\+\w+://", "mysql://", dsn) if isinstance(dsn, str) else dsn
    if isinstance(url, str):
        url = re.sub(r"^(postgresql|postgres)\+\w+://", "postgresql://", url)
    kwargs: dict[str, Any] = {
        key: engine_options.pop(key)
        for key in ("pool_size", "connect_timeout_s", "name")
        if key in engine_options
    }
    for key in _IGNORED_ENGINE_OPTIONS & engine_options.keys():
        engine_options.pop(key)
    return url, kwargs


class SqlCompat:
    """Upstream's SQL connector methods (keyword-only, upstream's defaults), mixed into
    onestep's MySQLConnector and PostgresConnector below."""

    KIND = "SQL"

    def _compat_init(self, dsn: str, engine_options: dict[str, Any]) -> None:
        url, kwargs = connector_options(dsn, engine_options)
        refuse(
            f"{type(self).__name__}",
            "engine option",
            engine_options,
            "onestep uses its own driver and pool, not SQLAlchemy",
        )
        super().__init__(url, **kwargs)  # type: ignore[call-arg]
        self.dsn = dsn

    def _base(self, method: str) -> Any:
        """onestep's own `method` of this connector; NotImplementedError when this
        database has no such method yet."""
        found = getattr(super(), method, None)
        if found is None:
            raise NotImplementedError(
                f"{type(self).__name__}.{method}() is not available for {self.KIND} in this "
                "version of onestep; see docs/migrating/upstream.md"
            )
        return found

    def state_store(
        self, *, table: str = "onestep_state", auto_create: bool = True, **columns: Any
    ) -> Any:
        """The database's StateStore in `table`; upstream's column-name options are
        accepted at their defaults only (onestep's table has its own columns)."""
        _check_store(type(self).__name__ + ".state_store", columns, auto_create)
        return self._base("state_store")(table)

    def cursor_store(
        self, *, table: str = "onestep_cursor", auto_create: bool = True, **columns: Any
    ) -> Any:
        """A state store for an incremental source's position (upstream's cursor store,
        same default table name)."""
        _check_store(type(self).__name__ + ".cursor_store", columns, auto_create)
        return self._base("state_store")(table)

    def table_queue(
        self,
        *,
        table: str,
        key: str,
        where: str,
        claim: Mapping[str, Any],
        ack: Mapping[str, Any],
        nack: Mapping[str, Any] | None = None,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
    ) -> Any:
        """Upstream's business-table queue (every keyword as upstream's); onestep
        refuses `claim` without `nack` (a failed row would stay claimed for ever)."""
        base = self._base("table_queue")
        if "where" not in inspect.signature(base).parameters:
            raise NotImplementedError(
                f"{type(self).__name__}.table_queue(where=..., claim=...): business tables "
                f"are not available for {self.KIND} in this version of onestep"
            )
        return base(
            table,
            key=key,
            where=where,
            claim=claim,
            ack=ack,
            nack=nack,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
        )

    def incremental(
        self,
        *,
        table: str,
        key: str,
        cursor: Sequence[str],
        where: str | None = None,
        batch_size: int = 1000,
        prefetch: bool = False,
        poll_interval_s: float = 1.0,
        state: Any = None,
        state_key: str | None = None,
    ) -> Any:
        """Upstream's incremental source; `prefetch` is accepted and unused (the source
        reads the next batch when the task has room)."""
        return self._base("incremental")(
            table,
            key=key,
            cursor=cursor,
            where=where,
            batch_size=batch_size,
            poll_interval_s=poll_interval_s,
            state=state,
            state_key=state_key,
        )

    def table_sink(
        self,
        *,
        table: str,
        mode: str = "insert",
        keys: Sequence[str] = (),
        update_columns: Sequence[Any] | None = None,
        update_expr: Mapping[str, str] | None = None,
        serialize_json: str = "auto",
        batch_size: int = 1000,
    ) -> Any:
        """Upstream's table sink: `insert` or `upsert` on `keys` (dicts and lists are
        stored as JSON, as upstream's `serialize_json="auto"`); `update_columns` and
        `update_expr` are refused (an upsert here updates every column it was given)."""
        given: dict[str, Any] = {}
        if update_columns is not None:
            given["update_columns"] = update_columns
        if update_expr is not None:
            given["update_expr"] = update_expr
        if serialize_json != "auto":
            given["serialize_json"] = serialize_json
        refuse(
            f"{type(self).__name__}.table_sink",
            "option",
            given,
            "an upsert updates every column of the returned dict",
        )
        return self._base("table_sink")(table, mode=mode, keys=keys, batch_size=batch_size)

    def binlog(self, **_: Any) -> Any:
        """Not supported: onestep reads no binlog (use `incremental` on an updated-at
        column, or keep that task on upstream)."""
        raise NotImplementedError(
            "MySQL binlog sources are not supported by onestep: use "
            "incremental(table=..., key=..., cursor=['updated_at']) instead, or keep that "
            "task on upstream; see docs/migrating/upstream.md"
        )

    def close(self) -> Closed:
        """Close the pooled connections; `await` it or not."""
        self._base("close")()
        return CLOSED


def _check_store(where: str, columns: dict[str, Any], auto_create: bool) -> None:
    unknown = {key: value for key, value in columns.items() if key not in _STORE_COLUMNS}
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword(s) {sorted(unknown)}")
    refuse(
        where,
        "option",
        {
            **{k: v for k, v in columns.items() if v != _STORE_COLUMNS[k]},
            **({"auto_create": auto_create} if auto_create is not True else {}),
        },
        "onestep's state table has its own columns and is created when missing",
    )
