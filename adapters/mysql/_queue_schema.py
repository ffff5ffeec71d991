"""The table behind a TableQueue: its column names, the CREATE TABLE of a managed table,
the columns added to a managed table made by an older onestep, and the check of an
existing table; called on whichever thread opens the queue or first puts to it."""

from __future__ import annotations

import logging
import re
from typing import Any

import pymysql.err

from ._connection import error_code, error_text, is_connection_error, quote_ident

logger = logging.getLogger("onestep.mysql")

# MariaDB/MySQL error numbers: no such table, unknown column, duplicate column name,
# duplicate key name.
NO_SUCH_TABLE = 1146
UNKNOWN_COLUMN = 1054
_DUPLICATE_COLUMN = 1060
_DUPLICATE_KEY = 1061


class QueueColumns:
    """The column names a TableQueue uses, already validated and quoted.

    `names` maps each option (`status_column`, ...) to the raw column name; `meta` and
    `lease_token` are None when the table has no such column (no meta, no fencing), and
    `priority` when priorities are off (`priority_column=None`)."""

    __slots__ = (
        "attempts",
        "available_at",
        "id",
        "last_error",
        "lease_token",
        "leased_until",
        "meta",
        "names",
        "payload",
        "priority",
        "status",
    )

    def __init__(
        self,
        *,
        id: str,
        payload: str,
        status: str,
        attempts: str,
        available_at: str,
        leased_until: str,
        last_error: str | None,
        meta: str | None = "meta",
        lease_token: str | None = "lease_token",
        priority: str | None = "priority",
    ) -> None:
        given = {
            "id_column": id,
            "payload_column": payload,
            "status_column": status,
            "attempts_column": attempts,
            "available_at_column": available_at,
            "leased_until_column": leased_until,
        }
        optional = {
            "last_error_column": last_error,
            "meta_column": meta,
            "lease_token_column": lease_token,
            "priority_column": priority,
        }
        given.update({option: name for option, name in optional.items() if name is not None})
        quoted = {option: quote_ident(value, option) for option, value in given.items()}
        if len({name.lower() for name in given.values()}) != len(given):
            raise ValueError(f"the column options must name distinct columns, got {given}")
        self.names = given
        self.id = quoted["id_column"]
        self.payload = quoted["payload_column"]
        self.status = quoted["status_column"]
        self.attempts = quoted["attempts_column"]
        self.available_at = quoted["available_at_column"]
        self.leased_until = quoted["leased_until_column"]
        self.last_error = quoted.get("last_error_column")
        self.meta = quoted.get("meta_column")
        self.lease_token = quoted.get("lease_token_column")
        self.priority = quoted.get("priority_column")


# The columns a newer onestep added to the managed table: option -> column type. A
# managed table made before them gets them on open (nullable or with a default, at the
# end: an instant ALTER on MariaDB 10.3+ and MySQL 8.0.12+, whatever the table's size;
# the priority column's index is built online, in time proportional to the table).
_ADDED_COLUMNS = {
    "meta_column": "LONGTEXT NULL",
    "lease_token_column": "VARCHAR(64) NULL",
    "priority_column": "INT NOT NULL DEFAULT 0",
}

#: The one column a queue can do without even when it is named: a table that lacks it
#: (auto_create=False) runs as before, and only a put with a priority is refused.
PRIORITY = "priority_column"

# Every column's definition, for the ALTER TABLE that the error of an existing table
# gives (the same as create_table_sql's); ADD COLUMN fills existing rows with the default.
_COLUMN_DEFINITIONS = {
    "id_column": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY",
    "payload_column": "LONGTEXT NOT NULL",
    "status_column": "VARCHAR(16) NOT NULL DEFAULT 'pending'",
    "attempts_column": "INT UNSIGNED NOT NULL DEFAULT 0",
    "available_at_column": "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
    "leased_until_column": "DATETIME(6) NULL",
    "last_error_column": "TEXT NULL",
    **_ADDED_COLUMNS,
}

# The managed table's indexes: added with their columns when all of them are missing
# (the priority index with the priority column). Claims of a table with priorities go
# by `onestep_priority`, in its order: priority DESC, then available_at (EXPLAIN: "ref"
# on the index, no filesort; MariaDB 10.8+ and MySQL 8.0 keep the DESC).
_INDEXES = {
    "onestep_claim": ("status_column", "available_at_column"),
    "onestep_lease": ("status_column", "leased_until_column"),
    "onestep_priority": ("status_column", "priority_column", "available_at_column"),
}
_INDEX_ADDED_WITH = {"onestep_priority": PRIORITY}

# What a missing optional column costs, for the error of an existing table.
_OPT_OUT = {
    "meta_column": "meta_column=None (messages then carry no meta)",
    "lease_token_column": (
        "lease_token_column=None (no fencing: a worker paused past its lease can then "
        "settle a row another worker holds)"
    ),
    "last_error_column": "last_error_column=None",
    PRIORITY: "priority_column=None (or leave it missing: only a put with a priority needs it)",
}


def _unquoted(quoted: str) -> str:
    """A quoted identifier as the user typed it in SQL (`%%` was doubled for pymysql)."""
    return quoted.replace("%%", "%")


class QueueSchema:
    """Creates, upgrades or checks the table of one TableQueue."""

    def __init__(
        self, table: str, quoted_table: str, columns: QueueColumns, *, auto_create: bool
    ) -> None:
        self.table = table
        self.quoted_table = quoted_table
        self.columns = columns
        self.auto_create = auto_create
        #: Whether the table has the priority column, once ensure() looked (None before).
        self.has_priority: bool | None = None if columns.priority is not None else False

    def create_table_sql(self) -> str:
        """The CREATE TABLE statement of the managed table (with these column names)."""
        c, t = self.columns, self.quoted_table
        optional = ""
        if c.meta is not None:
            optional += f"    {c.meta} LONGTEXT NULL,\n"
        if c.lease_token is not None:
            optional += f"    {c.lease_token} VARCHAR(64) NULL,\n"
        if c.last_error is not None:
            optional += f"    {c.last_error} TEXT NULL,\n"
        keys = ""
        if c.priority is not None:
            optional += f"    {c.priority} INT NOT NULL DEFAULT 0,\n"
            keys = (
                f",\n    KEY `onestep_priority` ({c.status}, {c.priority} DESC, {c.available_at})"
            )
        sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (\n"
            f"    {c.id} BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
            f"    {c.payload} LONGTEXT NOT NULL,\n"
            f"    {c.status} VARCHAR(16) NOT NULL DEFAULT 'pending',\n"
            f"    {c.attempts} INT UNSIGNED NOT NULL DEFAULT 0,\n"
            f"    {c.available_at} DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n"
            f"    {c.leased_until} DATETIME(6) NULL,\n"
            f"{optional}"
            "    `created_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n"
            "    `updated_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)\n"
            "        ON UPDATE CURRENT_TIMESTAMP(6),\n"
            f"    KEY `onestep_claim` ({c.status}, {c.available_at}),\n"
            f"    KEY `onestep_lease` ({c.status}, {c.leased_until}){keys}\n"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        return _unquoted(sql)

    def ensure(self, conn: Any) -> None:
        """Make the table ready, on the calling thread's connection: with `auto_create`,
        create it if missing and add the columns an older onestep did not make; then
        check that every named column exists (ValueError naming the missing ones and
        the ALTER TABLE that adds them)."""
        with conn.cursor() as cursor:
            if self.auto_create:
                cursor.execute(self.create_table_sql().replace("%", "%%"), ())
            existing = self._existing_columns(cursor)
            if existing is None:
                raise ValueError(
                    f"table {self.table!r} does not exist (auto_create=False): create it "
                    "(TableQueue.create_table_sql() gives the statement) or pass "
                    "auto_create=True"
                )
            missing = self._missing(existing)
            if missing and self.auto_create:
                self._add_columns(cursor, [o for o in missing if o in _ADDED_COLUMNS])
                missing = [option for option in missing if option not in _ADDED_COLUMNS]
            if [option for option in missing if option != PRIORITY]:
                raise ValueError(self._missing_message(missing))
            if self.columns.priority is not None:
                self.has_priority = PRIORITY not in missing

    def priority_refused(self) -> ValueError:
        """The error of a put with a priority into a table without a priority column."""
        if self.columns.priority is None:
            return ValueError(
                f"priority given, but table queue {self.table!r} has priorities off "
                "(priority_column=None)"
            )
        column = _unquoted(quote_ident(self.columns.names[PRIORITY]))
        return ValueError(
            f"priority given, but table {self.table!r} (auto_create={self.auto_create}) "
            f"lacks column {column} (priority_column); add it with:\n"
            f"    ALTER TABLE {_unquoted(self.quoted_table)} ADD COLUMN {column} "
            f"{_COLUMN_DEFINITIONS[PRIORITY]}, ADD KEY `onestep_priority` "
            f"({_unquoted(self._index_columns('onestep_priority'))})\n"
            "(a put without a priority needs no such column)"
        )

    def _existing_columns(self, cursor: Any) -> set[str] | None:
        """The lower-cased column names of the table, or None if it does not exist."""
        try:
            cursor.execute(f"SHOW COLUMNS FROM {self.quoted_table}", ())
        except pymysql.err.MySQLError as exc:
            if error_code(exc) == NO_SUCH_TABLE:
                return None
            raise
        return {str(row[0]).lower() for row in cursor.fetchall()}

    def _missing(self, existing: set[str]) -> list[str]:
        return [
            option for option, name in self.columns.names.items() if name.lower() not in existing
        ]

    def _add_columns(self, cursor: Any, options: list[str]) -> None:
        """Add onestep's newer columns to a managed table made by an older version."""
        for option in options:
            quoted = quote_ident(self.columns.names[option], option)
            try:
                cursor.execute(
                    f"ALTER TABLE {self.quoted_table} ADD COLUMN {quoted} {_ADDED_COLUMNS[option]}",
                    (),
                )
            except pymysql.err.MySQLError as exc:
                if error_code(exc) == _DUPLICATE_COLUMN:
                    continue  # another worker added it at the same moment
                if is_connection_error(exc):
                    raise
                raise ValueError(
                    f"table {self.table!r} lacks column {_unquoted(quoted)} ({option}) and "
                    f"adding it failed: {error_text(exc)}"
                ) from None
            if option == PRIORITY:
                self._add_index(cursor, "onestep_priority")
            logger.warning(
                "table %r: added column %s %s (%s), which this onestep version uses",
                self.table,
                _unquoted(quoted),
                _ADDED_COLUMNS[option],
                option,
            )

    def _add_index(self, cursor: Any, index: str) -> None:
        """Add one of the managed table's indexes (after adding its column)."""
        try:
            cursor.execute(
                f"ALTER TABLE {self.quoted_table} ADD KEY `{index}` ({self._index_columns(index)})",
                (),
            )
        except pymysql.err.MySQLError as exc:
            if error_code(exc) != _DUPLICATE_KEY:  # another worker added it meanwhile
                raise

    def _index_columns(self, index: str) -> str:
        names = self.columns.names
        return ", ".join(
            quote_ident(names[option]) + (" DESC" if option == PRIORITY else "")
            for option in _INDEXES[index]
        )

    def _missing_message(self, missing: list[str]) -> str:
        names = self.columns.names
        listed = ", ".join(f"`{names[option]}` ({option})" for option in missing)
        parts = [f"table {self.table!r} (auto_create={self.auto_create}) lacks column(s) {listed}"]
        additions = [
            f"ADD COLUMN {_unquoted(quote_ident(names[option]))} {_COLUMN_DEFINITIONS[option]}"
            for option in missing
        ]
        for index, options in _INDEXES.items():
            if all(option in missing for option in options) or (
                _INDEX_ADDED_WITH.get(index) in missing
            ):
                additions.append(f"ADD KEY `{index}` ({_unquoted(self._index_columns(index))})")
        parts.append(
            # the statement on a line of its own, so that it can be copied and run as is
            f"add them with:\n    ALTER TABLE {_unquoted(self.quoted_table)} "
            f"{', '.join(additions)}\n(existing rows become pending jobs; to run the rows of "
            "a table your application already has, use business-table mode instead: "
            "table_queue(table, where=..., claim=..., ack=..., nack=...))"
        )
        parts.append(
            "if the table names them differently, pass "
            + ", ".join(f"{option}='<its column>'" for option in missing)
        )
        optional = [option for option in missing if option in _OPT_OUT]
        if optional:
            parts.append("or do without: " + ", ".join(_OPT_OUT[option] for option in optional))
        return "; ".join(parts)


def check_server_supports_skip_locked(conn: Any, target: str) -> None:
    """ConnectionError unless the server has `SELECT ... FOR UPDATE SKIP LOCKED`."""
    version = str(conn.get_server_info())
    if version.startswith("5.5.5-"):  # how MariaDB 10+ announces itself to old clients
        version = version[len("5.5.5-") :]
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return
    numbers = tuple(int(part) for part in match.groups())
    needed = (10, 6, 0) if "mariadb" in version.lower() else (8, 0, 1)
    if numbers < needed:
        raise ConnectionError(
            f"{target} runs {version}; the table queue needs SELECT ... FOR UPDATE SKIP "
            f"LOCKED (MariaDB 10.6+ or MySQL 8.0.1+)"
        )
