"""Reading a Redis stream without consuming it, deleting chosen entries, and counting
what waits; RedisStream.browse, remove and depth call these on the calling thread (the
dead-letter tooling, `onestep dlq`, `onestep.testing.run_until_idle`).

What "waits" is defined by the stream's group: entries it has not read yet (after its
last-delivered id) and entries read but not acked (pending). Entries the group acked
stay in the stream until trimmed; they are history, not messages, and are not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from onestep.kit import DeadLetterEntry

from ._codec import decode_entry, decode_upstream

if TYPE_CHECKING:
    from ._stream import RedisStream

#: Entries per XRANGE (and ids per XPENDING) round trip.
_PAGE = 500


def _group_info(stream: RedisStream) -> dict[str, Any] | None:
    """The XINFO GROUPS record of the stream's group; None when the stream or the group
    does not exist."""
    client = stream.client
    if not client.exists(stream.name):
        return None
    for info in client.xinfo_groups(stream.name):
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == stream.group:
            return dict(info)
    return None


def _id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


def _pending_ids(stream: RedisStream) -> set[bytes]:
    """Every entry id pending in the group, page by page."""
    found: set[bytes] = set()
    start: Any = "-"
    while True:
        page = stream.client.xpending_range(stream.name, stream.group, start, "+", _PAGE)
        found.update(item["message_id"] for item in page)
        if len(page) < _PAGE:
            return found
        start = b"(" + page[-1]["message_id"]


def _waiting(stream: RedisStream) -> Iterable[tuple[bytes, dict[bytes, bytes]]]:
    """The entries that wait for the group, oldest first."""
    info = _group_info(stream)
    last = _id(info["last-delivered-id"]) if info is not None else (-1, -1)
    pending = _pending_ids(stream) if info is not None and info.get("pending") else set()
    start: Any = "-"
    while True:
        page = stream.client.xrange(stream.name, start, "+", count=_PAGE)
        for entry_id, fields in page:
            if entry_id in pending or _id(entry_id) > last:
                yield entry_id, fields
        if len(page) < _PAGE:
            return
        start = b"(" + page[-1][0]


def browse(
    stream: RedisStream, limit: int | None, match: Callable[[DeadLetterEntry], bool] | None
) -> list[DeadLetterEntry]:
    found: list[DeadLetterEntry] = []
    if limit == 0:
        return found
    decode = decode_upstream if stream.wire_format == "upstream" else decode_entry
    for entry_id, fields in _waiting(stream):
        delivery = decode(entry_id, fields)
        entry = DeadLetterEntry(entry_id.decode(), delivery.payload, delivery.meta)
        if match is None or match(entry):
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
    return found


def remove(stream: RedisStream, ids: Iterable[Hashable]) -> int:
    """XDEL the entries (each id once) and XACK them in the group, in one transaction."""
    wanted = sorted({str(i.decode() if isinstance(i, bytes) else i) for i in ids})
    if not wanted:
        return 0
    removed = 0
    has_group = _group_info(stream) is not None
    for start in range(0, len(wanted), _PAGE):
        chunk = wanted[start : start + _PAGE]
        pipe = stream.client.pipeline(transaction=True)
        if has_group:
            pipe.xack(stream.name, stream.group, *chunk)
        pipe.xdel(stream.name, *chunk)
        removed += int(pipe.execute()[-1])
    return removed


def depth(stream: RedisStream) -> int:
    """Not yet read + pending + delayed (a few round trips); the stream's length when
    the group does not exist."""
    client = stream.client
    delayed = int(client.zcard(stream.delay_key))
    info = _group_info(stream)
    if info is None:
        return delayed + int(client.xlen(stream.name))
    lag = info.get("lag")
    if lag is None:
        # the server cannot tell (entries were deleted after the group's position):
        # count the entries after it
        last = _id(info["last-delivered-id"])
        lag = 0
        start: Any = b"(%d-%d" % last
        while True:
            page = client.xrange(stream.name, start, "+", count=_PAGE)
            lag += len(page)
            if len(page) < _PAGE:
                break
            start = b"(" + page[-1][0]
    return delayed + int(info.get("pending") or 0) + int(lag)
