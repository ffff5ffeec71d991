"""The PostgreSQL state store against a real PostgreSQL: the store contract shared with
the SQLite store, 1,000 increments from 4 threads, claims that hold once until their TTL
by the server's clock, one winner across processes, and the store as an app's state.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from postgres_support import TIMEOUT, URL, connector, postgres_url, query, quote, tables

import adapters.postgres._state
from onestep import MemoryQueue, OneStepApp, PostgresConnector, StateStore
from onestep.kit import EncodeError

pytestmark = pytest.mark.integration
__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name

_contract_path = Path(__file__).resolve().parents[1] / "unit" / "test_sqlite_state.py"
_spec = importlib.util.spec_from_file_location("_state_contract", _contract_path)
assert _spec is not None and _spec.loader is not None
_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_contract)

# The store-agnostic contract tests of the SQLite store, run against this store (the
# ones on a fake clock are replaced below by tests on the server's own clock).
test_set_then_get_gives_the_value_back = _contract.test_set_then_get_gives_the_value_back
test_get_of_a_missing_key_gives_the_default = _contract.test_get_of_a_missing_key_gives_the_default
test_set_overwrites_and_delete_removes = _contract.test_set_overwrites_and_delete_removes
test_values_are_copies_not_aliases = _contract.test_values_are_copies_not_aliases
test_incr_counts_from_zero = _contract.test_incr_counts_from_zero_and_returns_the_new_value
test_keys_do_not_collide = _contract.test_keys_do_not_collide
test_claim_sets_a_key_only_if_absent = _contract.test_claim_sets_a_key_only_if_it_is_absent
test_claim_of_a_key_that_was_set_fails = _contract.test_claim_of_a_key_that_was_set_fails
test_delete_releases_a_claim = _contract.test_delete_releases_a_claim
test_claim_refuses_a_bad_ttl = _contract.test_claim_refuses_a_bad_ttl
test_many_threads_claim_one_winner = _contract.test_many_threads_claiming_one_key_have_one_winner


@pytest.fixture
def store(connector, tables) -> Any:
    return connector.state_store(tables("state"))


def test_1000_increments_from_4_threads_are_all_counted(store):
    start = threading.Barrier(4)

    def count() -> None:
        start.wait(TIMEOUT)
        for _ in range(250):
            store.incr("hits")

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.get("hits") == 1000


def test_a_claim_holds_once_until_its_ttl_then_another_wins(store):
    assert store.claim("tick", 1.0) is True
    claimed_at = time.monotonic()
    assert store.claim("tick", 1.0) is False
    assert store.claim("tick", 1.0, value="other") is False
    pause = threading.Event()
    while not store.claim("tick", 30, value="second"):
        assert time.monotonic() - claimed_at < 10, "the claim never expired"
        pause.wait(0.05)
    assert time.monotonic() - claimed_at >= 0.9
    assert store.get("tick") == "second"
    assert store.claim("tick", 30) is False


def test_claims_expire_by_the_database_clock_not_the_hosts(store, monkeypatch):
    """A host whose clock is a day off claims as if it were right: the expiry is the
    server's clock plus the ttl."""
    real_time = time.time
    skewed = SimpleNamespace(time=lambda: real_time() + 86_400.0, monotonic=time.monotonic)
    monkeypatch.setattr(adapters.postgres._state, "time", skewed)
    [(before,)] = query("SELECT clock_timestamp()")
    assert store.claim("tick", 30)
    [(after,)] = query("SELECT clock_timestamp()")
    [(expires_at,)] = query(f"SELECT expires_at FROM {quote(store.table)} WHERE key = 'tick'")
    assert (expires_at - before).total_seconds() >= 30
    assert (expires_at - after).total_seconds() <= 30
    assert store.claim("tick", 30) is False
    # expired by the server's clock: another claim wins
    query(f"UPDATE {quote(store.table)} SET expires_at = clock_timestamp() - interval '1 ms'")
    assert store.get("tick", "gone") == "gone"
    assert store.claim("tick", 30) is True
    assert store.purge_expired() == 0


def test_the_store_is_a_blocking_state_store(store):
    assert isinstance(store, StateStore)
    assert store.blocking is True


def test_update_and_pop_are_atomic_read_modify_writes(store):
    assert store.update("list", lambda v: [*v, 1], default=[]) == [1]
    assert store.update("list", lambda v: [*v, 2], default=[]) == [1, 2]
    assert store.pop("list") == [1, 2]
    assert store.pop("list", "gone") == "gone"
    with pytest.raises(ZeroDivisionError):
        store.update("broken", lambda v: 1 / 0)
    assert store.get("broken", "absent") == "absent"
    store.set("a:1", 1)
    store.set("a:2", 2)
    store.set("b:1", 3)
    assert store.keys("a:") == ["a:1", "a:2"]


def test_a_value_that_is_not_json_raises_naming_the_key(store):
    with pytest.raises(EncodeError, match="'my-key' is not valid JSON"):
        store.set("my-key", object())
    assert store.get("my-key", "absent") == "absent"


def test_ctx_state_in_a_handler_and_a_schedule_across_replicas(connector, tables):
    store = connector.state_store(tables("state"))
    source = MemoryQueue("in")
    for n in range(5):
        source.put(n)
    app = OneStepApp("stateful", state=store)
    done = threading.Event()

    @app.task(source=source)
    def count(ctx: Any, item: Any) -> None:
        if ctx.state.incr("seen") == 5:
            done.set()

    app.start()
    try:
        assert done.wait(TIMEOUT)
    finally:
        app.stop()
    assert store.get("stateful:count:seen") == 5


def _claim_in_process(table: str, start: Any, results: Any) -> None:
    store = PostgresConnector(URL).state_store(table)
    start.wait(TIMEOUT)
    results.put([store.claim(f"tick:{tick}", 60) for tick in range(40)])


def test_claim_has_one_winner_across_processes(tables, connector):
    table = tables("state")
    connector.state_store(table)  # create the table once
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(table, start, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(TIMEOUT)
    for tick in range(40):
        assert sum(outcome[tick] for outcome in outcomes) == 1, f"tick {tick}"
