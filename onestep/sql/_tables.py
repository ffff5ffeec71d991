"""What the SQL connectors' business-table queues and incremental sources share, whatever
the dialect: option checks, a row as a JSON-able dict, cursor values in a state store,
and the cursor-progress tracker. Re-exported by onestep.kit; called at construction and on
the source actor's thread."""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._values import check_delay

# The values a claim, ack or nack may write: scalars the drivers send as parameters.
_SCALARS = (str, int, float, bool, decimal.Decimal, datetime.date, datetime.time, type(None))


def check_column(name: Any, param: str, *, max_length: int = 64) -> str:
    """`name` if it is a usable column (or table) name: a non-empty string of at most
    `max_length` characters (64 on MySQL, 63 on PostgreSQL) without a NUL; ValueError
    naming `param` otherwise. Quoting is the dialect's (backticks, double quotes)."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > max_length:
        raise ValueError(
            f"{param} must be a non-empty column name of at most {max_length} characters, "
            f"got {name!r}"
        )
    return name


def _check_values(param: str, values: Any, required: bool, *, max_length: int) -> dict[str, Any]:
    """A claim/ack/nack mapping: column -> scalar, at least one column."""
    if values is None:
        if required:
            raise ValueError(f"{param} is required in business-table mode, e.g. {{'status': 1}}")
        return {}
    if not isinstance(values, Mapping) or not values:
        raise ValueError(
            f"{param} must be a non-empty dict of column -> value, e.g. {{'status': 1}}, "
            f"got {values!r}"
        )
    checked = {}
    for column, value in values.items():
        check_column(column, f"{param} column", max_length=max_length)
        if not isinstance(value, _SCALARS):
            raise ValueError(
                f"{param}[{column!r}] must be a str, number, bool, date/time or None, "
                f"got {type(value).__name__}"
            )
        checked[column] = value
    return checked


@dataclass(frozen=True)
class BusinessTableSpec:
    """The checked options of a business-table queue: a table the application already
    has, where `where` picks the rows to run, `claim` marks a row taken, and `ack` / `nack`
    mark it done / given up. Only these columns (plus the optional `lease_column` and
    `attempts_column`) are ever written. Build it with `BusinessTableSpec.build`."""

    key: str
    where: str
    claim: dict[str, Any]
    ack: dict[str, Any]
    nack: dict[str, Any]
    lease_column: str | None = None
    lease_s: float = 60.0
    attempts_column: str | None = None

    @classmethod
    def build(
        cls,
        *,
        key: Any = "id",
        where: Any = None,
        claim: Any = None,
        ack: Any = None,
        nack: Any = None,
        lease_column: Any = None,
        lease_s: Any = 60.0,
        attempts_column: Any = None,
        max_length: int = 64,
    ) -> BusinessTableSpec:
        """Check the options (ValueError naming the one at fault) and return the spec.

        `claim` without `nack` is refused: a row whose handler failed for good would
        stay claimed for ever (no fetch matches it again, nothing marks it failed)."""
        check_column(key, "key", max_length=max_length)
        if not isinstance(where, str) or not where.strip():
            raise ValueError(
                "where must be a non-empty SQL condition that picks the rows to run, e.g. "
                f"'status = 0', got {where!r}"
            )
        if claim is not None and nack is None:
            raise ValueError(
                "nack is required with claim: without it a row whose handler failed for "
                "good would stay claimed for ever; pass nack={...}, the values a failed "
                "row gets, e.g. nack={'status': 2}"
            )
        claimed = _check_values("claim", claim, True, max_length=max_length)
        acked = _check_values("ack", ack, True, max_length=max_length)
        nacked = _check_values("nack", nack, True, max_length=max_length)
        extra = {}
        if lease_column is not None:
            extra["lease_column"] = check_column(
                lease_column, "lease_column", max_length=max_length
            )
        if attempts_column is not None:
            extra["attempts_column"] = check_column(
                attempts_column, "attempts_column", max_length=max_length
            )
        for option, column in (("key", key), *extra.items()):
            for param, values in (("claim", claimed), ("ack", acked), ("nack", nacked)):
                if column in values:
                    raise ValueError(f"{param} must not write the {option} column {column!r}")
        if len({key, *extra.values()}) != 1 + len(extra):
            raise ValueError(
                f"key, lease_column and attempts_column must be distinct, got {key!r}, {extra}"
            )
        return cls(
            key=key,
            where=where,
            claim=claimed,
            ack=acked,
            nack=nacked,
            lease_column=extra.get("lease_column"),
            lease_s=check_delay("lease_s", lease_s, exclusive=True),
            attempts_column=extra.get("attempts_column"),
        )


def is_business_mode(**options: Any) -> bool:
    """True when any of `where`, `claim`, `ack`, `nack` is given: a connector's
    `table_queue` then works on the application's own table (BusinessTableSpec)."""
    return any(options.get(name) is not None for name in ("where", "claim", "ack", "nack"))


@dataclass(frozen=True)
class IncrementalSpec:
    """The checked options of an incremental source: rows in the order of `order`
    (the `cursor` columns, then `key` unless the cursor already ends with it), read after
    the last stored position."""

    key: str
    cursor: tuple[str, ...]
    where: str | None

    @property
    def order(self) -> tuple[str, ...]:
        """The columns rows are read in: ties on the cursor broken by the key."""
        return self.cursor if self.cursor[-1] == self.key else (*self.cursor, self.key)

    @classmethod
    def build(
        cls,
        *,
        key: Any = "id",
        cursor: Any = ("updated_at", "id"),
        where: Any = None,
        max_length: int = 64,
    ) -> IncrementalSpec:
        check_column(key, "key", max_length=max_length)
        columns = (cursor,) if isinstance(cursor, str) else cursor
        if not isinstance(columns, Sequence) or not columns:
            raise ValueError(
                f"cursor must name one or more columns, e.g. ('updated_at', 'id'), got {cursor!r}"
            )
        for column in columns:
            check_column(column, "cursor column", max_length=max_length)
        if len(set(columns)) != len(columns):
            raise ValueError(f"cursor must name distinct columns, got {cursor!r}")
        if key in columns and columns[-1] != key:
            raise ValueError(f"cursor must end with the key {key!r} if it names it, got {cursor!r}")
        if where is not None and (not isinstance(where, str) or not where.strip()):
            raise ValueError(f"where must be None or a non-empty SQL condition, got {where!r}")
        return cls(key=key, cursor=tuple(columns), where=where)


def json_value(value: Any) -> Any:
    """A column value as JSON can hold it: Decimal as its exact string, dates and times
    in ISO 8601, a TIME interval as seconds, bytes as UTF-8 text (base64 when they are
    not UTF-8), a set as a sorted list, a decoded JSON column unchanged, anything else
    (a UUID, an IP address) as its text."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict | list):
        return value  # a JSON column the driver decoded
    # anything else a driver returns (a UUID, an IP address, a range) as its text
    return str(value)


def column_index(columns: Sequence[str], name: str) -> int:
    """Where column `name` is in a result's columns: exactly, else ignoring case (MySQL
    column names are not case sensitive, PostgreSQL folds unquoted ones)."""
    try:
        return list(columns).index(name)
    except ValueError:
        lowered = name.lower()
        return next(i for i, column in enumerate(columns) if column.lower() == lowered)


def row_dict(columns: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """One row as the dict a handler receives: column -> JSON-able value (json_value)."""
    return {column: json_value(value) for column, value in zip(columns, values, strict=True)}


Position = tuple[Any, ...]
"""A cursor position: one row's values of the cursor columns, in order."""


# Cursor positions go to a StateStore as JSON: the types JSON has not are tagged.
def encode_position(position: Sequence[Any]) -> list[Any]:
    """A cursor position (a row's cursor values) as JSON for a StateStore."""
    encoded: list[Any] = []
    for value in position:
        if value is None or type(value) in (str, int, float, bool):
            encoded.append(value)
        elif isinstance(value, datetime.datetime):
            encoded.append({"datetime": value.isoformat()})
        elif isinstance(value, datetime.date):
            encoded.append({"date": value.isoformat()})
        elif isinstance(value, decimal.Decimal):
            encoded.append({"decimal": str(value)})
        elif isinstance(value, datetime.timedelta):
            encoded.append({"seconds": value.total_seconds()})
        elif isinstance(value, bytes):
            encoded.append({"bytes": base64.b64encode(value).decode("ascii")})
        elif isinstance(value, uuid.UUID):
            encoded.append({"uuid": str(value)})
        else:
            raise TypeError(f"a cursor column holds {type(value).__name__}, which cannot be stored")
    return encoded


def decode_position(encoded: Iterable[Any]) -> Position:
    """The cursor position stored by encode_position, with its original types."""
    decoded: list[Any] = []
    for value in encoded:
        if isinstance(value, dict) and len(value) == 1:
            ((tag, text),) = value.items()
            if tag == "datetime":
                value = datetime.datetime.fromisoformat(text)
            elif tag == "date":
                value = datetime.date.fromisoformat(text)
            elif tag == "decimal":
                value = decimal.Decimal(text)
            elif tag == "seconds":
                value = datetime.timedelta(seconds=text)
            elif tag == "bytes":
                value = base64.b64decode(text)
            elif tag == "uuid":
                value = uuid.UUID(text)
        decoded.append(value)
    return tuple(decoded)


class CursorProgress:
    """How far an incremental source has got, and what it may store.

    Rows are handed out in cursor order (`dispatch`) and finish in any order (`finish`:
    succeeded or dead-lettered). `committed` is the position of the last row whose every
    predecessor finished too; reading resumes after it on a restart, so no row is ever
    skipped. The rows beyond it that finished already are remembered too (at most
    `MAX_REMEMBERED`), so that a restart repeats only the rows that had not finished:
    `snapshot()` is the JSON to store, `CursorProgress.restore(value)` reads it back.
    `last` is the position reading goes on from (the last row handed out). Runs on the
    source actor's thread.
    """

    #: Finished rows beyond `committed` kept in a snapshot; more (a failed row holding
    #: the cursor back for long) are repeated after a restart instead of skipped.
    MAX_REMEMBERED = 1000

    def __init__(self, start: Position | None = None, finished: Iterable[Position] = ()) -> None:
        #: the position every row up to which finished (None: none yet)
        self.committed: Position | None = start
        #: the position reading goes on from
        self.last: Position | None = start
        #: True when a snapshot would differ from the one last taken
        self.changed = False
        self._order: deque[Position] = deque()
        self._done: dict[Position, bool] = {}
        self._finished_before = set(finished)

    @classmethod
    def restore(cls, value: Any) -> CursorProgress:
        """The progress a `snapshot()` stored (None: from the first row)."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"not a stored cursor: {value!r}")
        position = value.get("position")
        return cls(
            None if position is None else decode_position(position),
            [decode_position(p) for p in value.get("finished", ())],
        )

    def snapshot(self) -> dict[str, Any]:
        """The JSON to store: `committed` and the finished rows beyond it."""
        self.changed = False
        beyond = [p for p in self._order if self._done[p]][: self.MAX_REMEMBERED]
        return {
            "position": None if self.committed is None else encode_position(self.committed),
            "finished": [encode_position(p) for p in beyond],
        }

    def __len__(self) -> int:
        """Rows handed out and not yet behind `committed`."""
        return len(self._order)

    def dispatch(self, position: Position) -> bool:
        """The row at `position` was read (positions come in increasing order); False if
        it had finished before the restart (do not hand it out again)."""
        if position in self._done:
            raise ValueError(f"position {position!r} was handed out twice")
        self._order.append(position)
        self._done[position] = False
        self.last = position
        if self._finished_before and position in self._finished_before:
            self._finished_before.discard(position)
            self.finish(position)
            return False
        return True

    def finish(self, position: Position) -> bool:
        """The row at `position` succeeded or was dead-lettered; True if `committed`
        moved."""
        if self._done.get(position) is not False:
            return False  # already finished, behind committed, or never ours
        self._done[position] = True
        self.changed = True
        moved = False
        order, done = self._order, self._done
        while order and done[order[0]]:
            self.committed = order.popleft()
            del done[self.committed]
            moved = True
        return moved

    def unfinished(self) -> list[Position]:
        """The positions handed out and not finished, in cursor order."""
        return [position for position in self._order if not self._done[position]]
