"""The table behind a TableQueue: its column names, the CREATE TABLE of a managed table
(with its partial indexes and the NOTIFY trigger), the columns added to a managed table
made by an older onestep, and the check of an existing table; called on whichever
thread opens the queue or first puts to it."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ._connection import quote_ident, unquoted

logger = logging.getLogger("onestep.postgres")

# One advisory lock serialises onestep's schema changes (CREATE TABLE IF NOT EXISTS and
# CREATE FUNCTION race with themselves in PostgreSQL: two at once can fail on a unique
# index of the catalog). Any fixed number would do; this is "onestep" in ASCII.
_SCHEMA_LOCK = 0x6F6E6573746570

#: The trigger function every managed table shares: one NOTIFY per INSERT statement
#: on the channel the trigger names (identical notifications in one transaction are
#: folded into one by PostgreSQL, so a batch of puts wakes the listeners once).
NOTIFY_FUNCTION = "onestep_notify"
NOTIFY_TRIGGER = "onestep_notify"


def channel_for(table: str) -> str:
    """The LISTEN/NOTIFY channel of a table: `onestep:<table>`, or a digest of the name
    when that is longer than PostgreSQL's 63-byte identifiers."""
    channel = f"onestep:{table}"
    if len(channel.encode()) > 63:
        channel = "onestep:" + hashlib.sha256(table.encode()).hexdigest()[:40]
    return channel


class QueueColumns:
    """The column names a TableQueue uses, already validated and quoted.

    `names` maps each option (`status_column`, ...) to the raw column name; `meta` and
    `lease_token` are None when the table has no such column (no meta, no fencing)."""

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
        }
        given.update({option: name for option, name in optional.items() if name is not None})
        quoted = {option: quote_ident(value, option) for option, value in given.items()}
        if len(set(given.values())) != len(given):
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


# The columns a newer onestep may add to a managed table: option -> column type.
_ADDED_COLUMNS = {
    "meta_column": "jsonb NULL",
    "lease_token_column": "text NULL",
    "last_error_column": "text NULL",
}

# What a missing optional column costs, for the error of an existing table.
_OPT_OUT = {
    "meta_column": "meta_column=None (messages then carry no meta)",
    "lease_token_column": (
        "lease_token_column=None (no fencing: a worker paused past its lease can then "
        "settle a row another worker holds)"
    ),
    "last_error_column": "last_error_column=None",
}


class QueueSchema:
    """Creates, upgrades or checks the table of one TableQueue."""

    def __init__(
        self,
        table: str,
        quoted_table: str,
        columns: QueueColumns,
        *,
        auto_create: bool,
        notify: bool,
    ) -> None:
        self.table = table
        self.quoted_table = quoted_table
        self.columns = columns
        self.auto_create = auto_create
        self.notify = notify
        self.channel = channel_for(table)
        #: Whether the last ensure() found the NOTIFY trigger on the table.
        self.has_trigger = False

    def create_table_sql(self) -> str:
        """The statements that make the managed table (with these column names): the
        table, its two partial indexes, and (with notify) the trigger that sends a
        NOTIFY for every INSERT, from onestep or from any other program."""
        c, t = self.columns, self.quoted_table
        optional = ""
        if c.meta is not None:
            optional += f"    {c.meta} jsonb NULL,\n"
        if c.lease_token is not None:
            optional += f"    {c.lease_token} text NULL,\n"
        if c.last_error is not None:
            optional += f"    {c.last_error} text NULL,\n"
        index = quote_ident(self.table[:48] + "_onestep_claim", "index")
        lease_index = quote_ident(self.table[:48] + "_onestep_lease", "index")
        sql = (
            f"CREATE TABLE IF NOT EXISTS {t} (\n"
            f"    {c.id} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n"
            f"    {c.payload} text NOT NULL,\n"
            f"    {c.status} text NOT NULL DEFAULT 'pending',\n"
            f"    {c.attempts} integer NOT NULL DEFAULT 0,\n"
            f"    {c.available_at} timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
            f"    {c.leased_until} timestamptz NULL,\n"
            f"{optional}"
            "    created_at timestamptz NOT NULL DEFAULT clock_timestamp()\n"
            ");\n"
            f"CREATE INDEX IF NOT EXISTS {index} ON {t} ({c.available_at}, {c.id}) "
            f"WHERE {c.status} = 'pending';\n"
            f"CREATE INDEX IF NOT EXISTS {lease_index} ON {t} ({c.leased_until}) "
            f"WHERE {c.status} = 'leased';\n"
        )
        if self.notify:
            sql += self.trigger_sql()
        return unquoted(sql)

    def trigger_sql(self) -> str:
        """The NOTIFY function (shared by every managed table) and this table's trigger."""
        channel = self.channel.replace("'", "''").replace("%", "%%")
        return (
            f"CREATE OR REPLACE FUNCTION {NOTIFY_FUNCTION}() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $$;\n"
            f"DROP TRIGGER IF EXISTS {NOTIFY_TRIGGER} ON {self.quoted_table};\n"
            f"CREATE TRIGGER {NOTIFY_TRIGGER} AFTER INSERT ON {self.quoted_table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {NOTIFY_FUNCTION}('{channel}');\n"
        )

    def ensure(self, conn: Any) -> None:
        """Make the table ready, on the calling thread's connection (autocommit): with
        `auto_create`, create it if missing, add the columns an older onestep did not
        make and install the NOTIFY trigger; then check that every named column exists
        (ValueError naming the missing ones and the ALTER TABLE that adds them)."""
        existing = self._existing_columns(conn)
        missing = [] if existing is None else self._missing(existing)
        self.has_trigger = existing is not None and self._trigger_exists(conn)
        wanted_trigger = self.notify and not self.has_trigger
        if self.auto_create and (existing is None or missing or wanted_trigger):
            self._create(conn, [option for option in missing if option in _ADDED_COLUMNS])
            existing = self._existing_columns(conn)
            self.has_trigger = self._trigger_exists(conn)
        if existing is None:
            raise ValueError(
                f"table {self.table!r} does not exist (auto_create=False): create it "
                "(TableQueue.create_table_sql() gives the statements) or pass "
                "auto_create=True"
            )
        missing = self._missing(existing)
        if missing:
            raise ValueError(self._missing_message(missing))
        if self.notify and not self.has_trigger:
            logger.warning(
                "table %r has no NOTIFY trigger (auto_create=False): idle sources find new "
                "rows by polling only; TableQueue.create_table_sql() ends with the trigger",
                self.table,
            )

    def _create(self, conn: Any, added: list[str]) -> None:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            # no arguments: psycopg sends these as they are (a `%` stays single)
            for statement in self.create_table_sql().split(";\n"):
                if statement.strip():
                    cursor.execute(statement)
            for option in added:
                quoted = quote_ident(self.columns.names[option], option)
                cursor.execute(
                    unquoted(
                        f"ALTER TABLE {self.quoted_table} ADD COLUMN IF NOT EXISTS {quoted} "
                        f"{_ADDED_COLUMNS[option]}"
                    )
                )
                logger.warning(
                    "table %r: added column %s %s (%s), which this onestep version uses",
                    self.table,
                    unquoted(quoted),
                    _ADDED_COLUMNS[option],
                    option,
                )

    def _existing_columns(self, conn: Any) -> set[str] | None:
        """The column names of the table, or None if it does not exist."""
        rows = conn.execute(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped",
            (unquoted(self.quoted_table),),
        ).fetchall()
        if not rows:
            exists = conn.execute("SELECT to_regclass(%s)", (unquoted(self.quoted_table),))
            if exists.fetchone()[0] is None:
                return None
        return {str(row[0]) for row in rows}

    def _trigger_exists(self, conn: Any) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
            (unquoted(self.quoted_table), NOTIFY_TRIGGER),
        ).fetchone()
        return row is not None

    def _missing(self, existing: set[str]) -> list[str]:
        return [option for option, name in self.columns.names.items() if name not in existing]

    def _missing_message(self, missing: list[str]) -> str:
        names = self.columns.names
        listed = ", ".join(f'"{names[option]}" ({option})' for option in missing)
        parts = [f"table {self.table!r} (auto_create={self.auto_create}) lacks column(s) {listed}"]
        addable = [option for option in missing if option in _ADDED_COLUMNS]
        if addable:
            additions = ", ".join(
                f"ADD COLUMN {unquoted(quote_ident(names[option]))} {_ADDED_COLUMNS[option]}"
                for option in addable
            )
            parts.append(f"add them with: ALTER TABLE {unquoted(self.quoted_table)} {additions}")
        parts.append(
            "if the table names them differently, pass "
            + ", ".join(f"{option}='<its column>'" for option in missing)
        )
        optional = [option for option in missing if option in _OPT_OUT]
        if optional:
            parts.append("or do without: " + ", ".join(_OPT_OUT[option] for option in optional))
        return "; ".join(parts)
