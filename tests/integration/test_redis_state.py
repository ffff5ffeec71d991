"""RedisStateStore against a real Redis: atomic increments from four threads, a claim
that holds once until its TTL expires, update/pop/delete, JSON values, and the store as
an app's `state=`."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from onestep import EncodeError, MemoryQueue, OneStepApp, RedisConnector
from tests.helpers import running
from tests.integration.redis_support import (  # noqa: F401
    Keys,
    keys_fixture,
    redis_connector_fixture,
    wait_until,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def test_four_threads_count_a_thousand_increments(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    store = redis_connector.state_store(keys.prefix("state"))
    start = threading.Event()

    def count() -> None:
        start.wait(TIMEOUT)
        for _ in range(250):
            store.incr("hits")

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert store.get("hits") == 1000
    assert store.incr("hits", -1000) == 0


def test_a_claim_holds_once_until_its_ttl_expires(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    prefix = keys.prefix("claim")
    first = redis_connector.state_store(prefix)
    second = RedisConnector(redis_connector.url).state_store(prefix)
    assert first.claim("tick:1", 0.5, {"by": "first"}) is True
    assert second.claim("tick:1", 0.5) is False
    assert first.claim("tick:1", 0.5) is False
    assert second.get("tick:1") == {"by": "first"}
    pttl = keys.client.pttl(prefix + "tick:1")
    assert 0 < pttl <= 500
    wait_until(lambda: second.get("tick:1") is None, timeout=5)
    assert second.claim("tick:1", 60) is True
    assert first.claim("tick:1", 60) is False


def test_get_set_update_pop_delete_and_keys(keys: Keys, redis_connector: RedisConnector) -> None:
    prefix = keys.prefix("ops")
    store = redis_connector.state_store(prefix)
    assert store.get("missing", "dflt") == "dflt"
    store.set("doc", {"a": [1, 2], "s": "é"})
    assert store.get("doc") == {"a": [1, 2], "s": "é"}
    assert keys.client.get(prefix + "doc") == '{"a":[1,2],"s":"é"}'.encode()
    assert store.update("list", lambda v: [*v, 1], default=[]) == [1]
    assert store.update("list", lambda v: [*v, 2], default=[]) == [1, 2]
    assert store.keys() == ["doc", "list"]
    assert store.pop("list") == [1, 2]
    assert store.pop("list", "gone") == "gone"
    store.delete("doc")
    assert store.get("doc") is None
    store.set("text", "x")
    with pytest.raises(TypeError, match="'text' is not an integer"):
        store.incr("text")
    with pytest.raises(EncodeError, match="not JSON"):
        store.set("bad", object())
    with pytest.raises(TypeError, match="state key must be a str"):
        store.get(1)  # type: ignore[arg-type]


def test_update_is_atomic_across_threads(keys: Keys, redis_connector: RedisConnector) -> None:
    store = redis_connector.state_store(keys.prefix("upd"))

    def append(n: int) -> None:
        for i in range(25):
            store.update("seen", lambda v, i=i: [*v, f"{n}-{i}"], default=[])

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(store.get("seen")) == sorted(f"{n}-{i}" for n in range(4) for i in range(25))


def test_the_store_as_an_apps_state(keys: Keys, redis_connector: RedisConnector) -> None:
    prefix = keys.prefix("app")
    store = redis_connector.state_store(prefix)
    source = MemoryQueue("in")
    for n in range(5):
        source.put(n)
    app = OneStepApp("stateful", state=store)

    @app.task(source=source)
    def count(ctx: Any, item: Any) -> None:
        ctx.state.incr("seen")

    @app.task(source=MemoryQueue("async-in"))
    async def count_async(ctx: Any, item: Any) -> None:
        await ctx.state.incr("seen")

    for n in range(3):
        app.tasks["count_async"].source.put(n)
    with running(app):
        wait_until(lambda: store.get("stateful:count:seen") == 5)
        wait_until(lambda: store.get("stateful:count_async:seen") == 3)
