"""Flow control kept in a shared SQLite state store: the token bucket, per-key slots and
dedup keys hold across two store objects on one file (as across two processes)."""

from __future__ import annotations

from pathlib import Path

from onestep import InMemoryStateStore, SQLiteStateStore
from tests.flow_support import check_shared_bucket, check_shared_dedup, check_shared_slots


def _two(path: Path) -> list[SQLiteStateStore]:
    return [SQLiteStateStore(path), SQLiteStateStore(path)]


def test_sqlite_bucket_is_shared(tmp_path: Path) -> None:
    check_shared_bucket(_two(tmp_path / "state.db"), "flow:rate")


def test_sqlite_slots_are_shared(tmp_path: Path) -> None:
    check_shared_slots(_two(tmp_path / "state.db"), "flow:slot:")


def test_sqlite_dedup_keys_are_shared(tmp_path: Path) -> None:
    check_shared_dedup(_two(tmp_path / "state.db"), "flow:dedup:")


def test_take_tokens_fallback_refills_at_the_rate() -> None:
    """The StateStore fallback (on `update`): a new bucket is full, then empty, then says
    how long until the next token."""
    store = InMemoryStateStore()
    assert store.take_tokens("b", 5, 10.0, 3.0) == (3, 0.0)
    taken, wait_s = store.take_tokens("b", 1, 10.0, 3.0)
    assert taken == 0
    assert 0.0 < wait_s <= 0.1
