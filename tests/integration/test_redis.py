"""RedisStream against a real Redis: a thousand entries through a task into a stream,
exact attempts to the dead letter, retry delays that do not queue behind longer ones,
reclaimed entries counted as attempts, slow handlers kept alive, releases, decoding,
bytes, maxlen and startup errors."""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
import time
from typing import Any

import pytest

from actors import Failure
from onestep import MaxAttempts, OneStepApp, RedisConnector, RetryPolicy, StartupError
from tests.helpers import running
from tests.integration.redis_support import (  # noqa: F401
    URL,
    Keys,
    keys_fixture,
    redis_connector_fixture,
    wait_until,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def read_stream(keys: Keys, name: str, count: int) -> list[tuple[Any, dict[str, Any]]]:
    """The (body, meta) of the first `count` entries of `name`, waiting for them."""
    from adapters.redis._codec import decode_entry

    entries = wait_until(lambda: len(keys.entries(name)) >= count and keys.entries(name))
    decoded = [decode_entry(i, f) for i, f in entries[:count]]
    return [(d.payload, d.meta) for d in decoded]


def test_a_thousand_entries_stream_to_task_to_stream_leave_nothing_pending(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs, results = keys.name("jobs"), keys.name("results")
    source = redis_connector.stream(jobs, poll_interval_s=0.1)
    source.put_many(({"n": n} for n in range(1000)), {"trace": "t"})
    app = OneStepApp("rt")

    @app.task(source=source, emit=redis_connector.stream(results), concurrency=4)
    def double(ctx: Any, item: Any) -> Any:
        return {"n": item["n"] * 2, "meta_in": ctx.current.meta}

    with running(app):
        wait_until(lambda: keys.client.xlen(results) >= 1000, TIMEOUT)
    out = read_stream(keys, results, 1000)
    assert sorted(body["n"] for body, _ in out) == [2 * n for n in range(1000)]
    assert all(body["meta_in"] == {"trace": "t"} for body, _ in out)
    assert keys.client.xlen(results) == 1000  # no duplicates
    assert keys.pending(jobs) == 0
    assert source.depth() == 0


def test_max_attempts_three_dead_letters_after_attempts_0_1_2(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs, dead = keys.name("jobs"), keys.name("dead")
    executions: list[int] = []
    app = OneStepApp("dl")
    source = redis_connector.stream(jobs, poll_interval_s=0.1)

    @app.task(source=source, retry=MaxAttempts(3), dead_letter=redis_connector.stream(dead))
    def flaky(ctx: Any, item: Any) -> None:
        executions.append(ctx.current.attempts)
        raise RuntimeError(f"boom {item['n']}")

    source.put({"n": 7}, {"k": 1})
    with running(app):
        [(body, meta)] = read_stream(keys, dead, 1)
    assert executions == [0, 1, 2]
    assert body["payload"] == {"n": 7}
    assert body["failure"]["kind"] == "error"
    assert body["failure"]["message"] == "boom 7"
    assert re.fullmatch(r"[0-9a-f]{32}", meta.pop("dead_letter_id"))
    assert meta == {
        "app": "dl",
        "task": "flaky",
        "source": jobs,
        "original_meta": {"k": 1},
        "original_attempts": 3,
    }
    assert keys.pending(jobs) == 0
    assert source.depth() == 0


class DelayPerItem(RetryPolicy):
    """Retries each message once, after the delay its payload names."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        if attempts > 1:
            return None
        return self.delays[failure.message]


def test_a_one_second_retry_does_not_wait_behind_a_twenty_second_one(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    source = redis_connector.stream(jobs, poll_interval_s=0.5)
    runs: queue.Queue[tuple[str, int, float]] = queue.Queue()
    app = OneStepApp("mixed-delays")

    @app.task(source=source, retry=DelayPerItem({"slow": 20.0, "fast": 1.0}))
    def handle(ctx: Any, item: str) -> None:
        runs.put((item, ctx.current.attempts, time.monotonic()))
        if ctx.current.attempts == 0:
            raise RuntimeError(item)  # the message names the delay the policy picks

    with running(app):
        source.put("slow")
        assert runs.get(timeout=TIMEOUT)[:2] == ("slow", 0)
        wait_until(lambda: keys.client.zcard(f"{jobs}:delayed") == 1)
        source.put("fast")  # after the 20 s retry is in the delay set
        item, attempts, failed_at = runs.get(timeout=TIMEOUT)
        assert (item, attempts) == ("fast", 0)
        item, attempts, retried_at = runs.get(timeout=TIMEOUT)
        assert (item, attempts) == ("fast", 1)
        assert source.depth() == 1  # the slow one is still waiting
    assert 1.0 <= retried_at - failed_at < 3.0
    assert keys.client.zcard(f"{jobs}:delayed") == 1
    assert keys.pending(jobs) == 0


def test_a_put_delayed_by_one_and_a_half_seconds_arrives_between_1_4_and_3_5_s(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    source = redis_connector.stream(jobs, poll_interval_s=0.5)
    arrived: queue.Queue[tuple[Any, float]] = queue.Queue()
    app = OneStepApp("delayed-put")

    @app.task(source=source)
    def handle(ctx: Any, item: Any) -> None:
        arrived.put((item, time.monotonic()))

    with running(app):
        put_at = time.monotonic()
        source.put({"late": True}, delay_s=1.5)
        source.put({"late": False})
        first, _ = arrived.get(timeout=TIMEOUT)
        second, second_at = arrived.get(timeout=TIMEOUT)
    assert (first, second) == ({"late": False}, {"late": True})
    assert 1.4 <= second_at - put_at <= 3.5, second_at - put_at


def test_an_entry_left_pending_by_a_dead_consumer_is_reclaimed_as_one_more_attempt(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    source = redis_connector.stream(jobs, poll_interval_s=0.1, claim_idle_s=0.5)
    source.put({"n": 1}, {"k": "v"})
    source.put({"n": 2})
    keys.client.xgroup_create(jobs, "onestep", id="0")
    # a consumer that read the first entry and died before settling it
    keys.client.xreadgroup("onestep", "dead-one", {jobs: ">"}, count=1)
    seen: list[tuple[Any, int, dict[str, Any]]] = []
    done = threading.Event()
    app = OneStepApp("reclaim")

    @app.task(source=source)
    def work(ctx: Any, item: Any) -> None:
        seen.append((item, ctx.current.attempts, ctx.current.meta))
        if len(seen) == 2:
            done.set()

    with running(app):
        assert done.wait(TIMEOUT)
    assert sorted(seen, key=lambda s: s[0]["n"]) == [
        ({"n": 1}, 1, {"k": "v"}),
        ({"n": 2}, 0, {}),
    ]
    assert keys.pending(jobs) == 0


def test_a_handler_longer_than_claim_idle_s_runs_once(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    runs: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def make_app(consumer: str) -> OneStepApp:
        app = OneStepApp(f"slow-{consumer}")
        stream = redis_connector.stream(
            jobs, consumer=consumer, poll_interval_s=0.1, claim_idle_s=0.6
        )

        @app.task(source=stream, concurrency=2)
        def slow(ctx: Any, item: Any) -> None:
            runs.append(consumer)
            started.set()
            release.wait(TIMEOUT)

        return app

    redis_connector.stream(jobs).put({"n": 1})
    first, second = make_app("first"), make_app("second")
    with running(first):
        assert started.wait(TIMEOUT)
        with running(second):
            # five times claim_idle_s: the second consumer looked for idle entries ~10 times
            threading.Event().wait(3.0)
            release.set()
        wait_until(lambda: keys.pending(jobs) == 0)
    assert runs == ["first"]


def test_release_at_shutdown_gives_the_entry_back_with_its_attempts(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    source = redis_connector.stream(jobs, poll_interval_s=0.1)
    source.put({"n": 1}, attempts=1)
    started = threading.Event()
    app = OneStepApp("release", shutdown_timeout_s=0.2)

    @app.task(source=source)
    def stuck(ctx: Any, item: Any) -> None:
        started.set()
        ctx.cancelled.wait(TIMEOUT)

    with running(app):
        assert started.wait(TIMEOUT)
    assert keys.pending(jobs) == 0
    [entry] = source.browse()
    assert entry.body == {"n": 1}
    from adapters.redis._codec import decode_entry

    _, fields = keys.entries(jobs)[-1]
    assert decode_entry(b"0-1", fields).attempts == 1


def test_undecodable_entries_are_dead_lettered_as_decode_and_others_flow(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs, dead = keys.name("jobs"), keys.name("dead")
    keys.client.xadd(jobs, {"body": b"{not json"})
    keys.client.xadd(jobs, {"other": b"field"})
    keys.client.xadd(jobs, {"body": b'{"ok": true}'})
    handled: list[Any] = []
    app = OneStepApp("decode")

    @app.task(
        source=redis_connector.stream(jobs, poll_interval_s=0.1),
        dead_letter=redis_connector.stream(dead),
    )
    def work(ctx: Any, item: Any) -> None:
        handled.append(item)

    with running(app):
        letters = read_stream(keys, dead, 2)
        wait_until(lambda: handled)
    assert handled == [{"ok": True}]
    assert [body["failure"]["kind"] for body, _ in letters] == ["decode", "decode"]
    assert letters[0][0]["payload"] == "{not json"
    assert "not JSON" in letters[0][0]["failure"]["message"]
    assert "no 'body' field" in letters[1][0]["failure"]["message"]
    assert letters[1][0]["payload"] == {"other": "field"}
    wait_until(lambda: keys.pending(jobs) == 0)


def test_bytes_stay_bytes_and_meta_travels(keys: Keys, redis_connector: RedisConnector) -> None:
    jobs = keys.name("jobs")
    stream = redis_connector.stream(jobs)
    stream.put(b"\x00\xffraw", {"a": [1, 2]})
    stream.put("text")
    entries = stream.browse()
    assert [(e.body, e.meta) for e in entries] == [(b"\x00\xffraw", {"a": [1, 2]}), ("text", {})]
    assert keys.entries(jobs)[1][1] == {b"body": b'"text"'}


def test_maxlen_keeps_the_stream_near_its_length(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    stream = redis_connector.stream(jobs, maxlen=100)
    stream.put_many(range(1000))
    for n in range(200):
        stream.put(n)
    length = keys.client.xlen(jobs)
    # approximate trimming removes whole nodes (100 entries each by default)
    assert 100 <= length <= 300, length


def test_a_wrong_password_fails_at_startup_without_the_password(keys: Keys) -> None:
    url = "redis://nobody:s3cret-pw@127.0.0.1:6379/0"
    connector = RedisConnector(url, connect_timeout_s=3)
    assert "s3cret" not in repr(connector) and "***" in connector.url
    app = OneStepApp("badpw")

    @app.task(source=connector.stream(keys.name("jobs")))
    def work(ctx: Any, item: Any) -> None: ...

    with pytest.raises(StartupError) as caught:
        app.start()
    app.stop()
    text = str(caught.value) + repr(caught.value.__cause__)
    assert "s3cret" not in text
    assert "cannot connect to Redis at 127.0.0.1:6379 db 0 as user 'nobody'" in text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
        ({"poll_interval_s": 60}, "poll_interval_s"),
        ({"maxlen": 0}, "maxlen"),
        ({"claim_idle_s": -1}, "claim_idle_s"),
        ({"group": ""}, "group"),
        ({"consumer": ""}, "consumer"),
    ],
)
def test_stream_arguments_are_checked(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        RedisConnector(URL).stream("s", **kwargs)


def test_connector_arguments_are_checked_and_the_password_is_not_shown() -> None:
    with pytest.raises(ValueError, match="redis:// or rediss://") as caught:
        RedisConnector("http://u:topsecret@host/")
    assert "topsecret" not in str(caught.value)
    assert RedisConnector("rediss://u:p%40ss@host:6380/2").url == "rediss://u:***@host:6380/2"
    with pytest.raises(ValueError, match="connect_timeout_s"):
        RedisConnector(URL, connect_timeout_s=0)
    described = RedisConnector(URL).stream("s").describe()
    assert described["consumer"] == f"{socket.gethostname()}-{os.getpid()}"
    assert described["server"] == URL


def test_an_idle_blocking_read_holds_up_a_shutdown_for_at_most_poll_interval_s(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    app = OneStepApp("idle")

    @app.task(source=redis_connector.stream(jobs, poll_interval_s=3.0, consumer="idle-one"))
    def work(ctx: Any, item: Any) -> None: ...

    def blocked() -> bool:
        return any(
            client.get("cmd") == "xreadgroup" and "b" in client.get("flags", "")
            for client in keys.client.client_list()
        )

    app.start()
    try:
        wait_until(blocked)  # the source waits on the server (XREADGROUP ... BLOCK)
    finally:
        started = time.monotonic()
        app.stop()
    # a read blocked for ever (BLOCK 0), or until the socket timed out (30 s), would show
    assert time.monotonic() - started < 3.0 + 3.0
