"""`ctx.state`: the same counter from sync and async handlers (the parity rule), keys
scoped to "<app>:<task>:", and the in-memory store."""

from __future__ import annotations

import inspect
import queue
import threading
from typing import Any

import pytest

from onestep import InMemoryStateStore, MemoryQueue, OneStepApp, StateStore
from tests.helpers import running

TIMEOUT = 5.0


def test_a_counter_from_sync_and_async_handlers_with_scoped_keys():
    sync_in, async_in = MemoryQueue("sync-in"), MemoryQueue("async-in")
    store = InMemoryStateStore()
    app = OneStepApp("counter-app", state=store, shutdown_timeout_s=1.0)
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()

    @app.task(source=sync_in)
    def sync_counter(ctx, item):
        count = ctx.state.get("count", 0)
        assert not inspect.isawaitable(count)
        ctx.state.set("count", count + 1)
        seen.put(("sync", count + 1))

    @app.task(source=async_in)
    async def async_counter(ctx, item):
        pending = ctx.state.get("count", 0)
        assert inspect.isawaitable(pending)
        count = await pending
        await ctx.state.set("count", count + 1)
        seen.put(("async", count + 1))

    with running(app):
        for i in range(5):
            sync_in.put(i)
        for i in range(3):
            async_in.put(i)
        results = [seen.get(timeout=TIMEOUT) for _ in range(8)]
    assert [n for kind, n in results if kind == "sync"] == [1, 2, 3, 4, 5]
    assert [n for kind, n in results if kind == "async"] == [1, 2, 3]
    assert store.keys() == ["counter-app:async_counter:count", "counter-app:sync_counter:count"]
    assert store.get("counter-app:sync_counter:count") == 5
    assert store.get("counter-app:async_counter:count") == 3
    # the app-level store sees the same values
    assert app.state is store


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_state_incr_delete_and_default(kind):
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    seen: queue.Queue[Any] = queue.Queue()

    if kind == "sync":

        @app.task(source=incoming, name="t")
        def handler(ctx, item):
            first = ctx.state.incr("hits")
            second = ctx.state.incr("hits", 5)
            ctx.state.delete("hits")
            seen.put((first, second, ctx.state.get("hits"), ctx.state.get("hits", "gone")))

    else:

        @app.task(source=incoming, name="t")
        async def handler(ctx, item):
            first = await ctx.state.incr("hits")
            second = await ctx.state.incr("hits", 5)
            await ctx.state.delete("hits")
            seen.put(
                (first, second, await ctx.state.get("hits"), await ctx.state.get("hits", "gone"))
            )

    with running(app):
        incoming.put(1)
        assert seen.get(timeout=TIMEOUT) == (1, 6, None, "gone")
    assert app.state.keys() == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_non_string_key_raises_the_same_error_in_both(kind):
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    errors: queue.Queue[BaseException] = queue.Queue()

    if kind == "sync":

        @app.task(source=incoming)
        def handler(ctx, item):
            try:
                ctx.state.get(42)
            except TypeError as exc:
                errors.put(exc)

    else:

        @app.task(source=incoming)
        async def handler(ctx, item):
            try:
                await ctx.state.get(42)
            except TypeError as exc:
                errors.put(exc)

    with running(app):
        incoming.put(1)
        error = errors.get(timeout=TIMEOUT)
    assert "state key must be a str" in str(error)


class BlockingStore(StateStore):
    """A store that claims to do blocking I/O; records which thread calls it."""

    blocking = True

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        self.threads.add(threading.current_thread().name)
        with self.lock:
            return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.data[key] = value

    def delete(self, key: str) -> None:
        with self.lock:
            self.data.pop(key, None)


def test_a_blocking_store_is_called_off_the_event_loop_from_async_handlers():
    incoming = MemoryQueue("in")
    store = BlockingStore()
    app = OneStepApp("app", state=store, shutdown_timeout_s=1.0)
    done: queue.Queue[str] = queue.Queue()

    @app.task(source=incoming)
    async def counter(ctx, item):
        count = await ctx.state.get("n", 0)
        await ctx.state.set("n", count + 1)
        done.put(threading.current_thread().name)

    with running(app):
        for i in range(3):
            incoming.put(i)
        loop_threads = {done.get(timeout=TIMEOUT) for _ in range(3)}
    assert store.data == {"app:counter:n": 3}
    assert store.threads.isdisjoint(loop_threads)
    # the default `incr` of StateStore works on top of get/set
    assert store.incr("x", 2) == 2


def test_in_memory_store_copies_values_in_and_out():
    store = InMemoryStateStore()
    value = {"items": [1]}
    store.set("k", value)
    value["items"].append(2)
    assert store.get("k") == {"items": [1]}
    got = store.get("k")
    got["items"].append(3)
    assert store.get("k") == {"items": [1]}


def test_in_memory_store_basics():
    store = InMemoryStateStore()
    assert store.get("missing") is None
    assert store.get("missing", 7) == 7
    store.set("a:x", 1)
    store.set("b:y", None)
    assert store.get("b:y", "default") is None  # a stored None is not "missing"
    assert store.incr("a:n") == 1
    assert store.incr("a:n", 4) == 5
    assert store.keys() == ["a:n", "a:x", "b:y"]
    assert store.keys("a:") == ["a:n", "a:x"]
    store.delete("a:x")
    store.delete("never-there")
    assert store.keys("a:") == ["a:n"]


def test_in_memory_store_incr_is_atomic():
    store = InMemoryStateStore()

    def hammer() -> None:
        for _ in range(1000):
            store.incr("n")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert store.get("n") == 8000


def test_concurrent_sync_handlers_incr_without_losing_updates():
    incoming = MemoryQueue("in")
    app = OneStepApp("app", shutdown_timeout_s=1.0)
    done: queue.Queue[int] = queue.Queue()

    @app.task(source=incoming, concurrency=4)
    def counter(ctx, item):
        done.put(ctx.state.incr("n"))

    with running(app):
        for i in range(100):
            incoming.put(i)
        results = sorted(done.get(timeout=TIMEOUT) for _ in range(100))
    assert results == list(range(1, 101))
    assert app.state.get("app:counter:n") == 100
