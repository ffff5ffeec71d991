"""wire_format="upstream" on a real Redis: onestep-redis's entries (one field `body`
holding the `{"body", "meta", "attempts"}` envelope) are read and written, a retry counts
in the envelope, and the default format hands a user's `body` key through untouched."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from onestep import MaxAttempts, OneStepApp, RedisConnector
from tests.helpers import running
from tests.integration.redis_support import (  # noqa: F401
    Keys,
    keys_fixture,
    redis_connector_fixture,
    wait_until,
)

pytestmark = pytest.mark.integration
TIMEOUT = 20.0
ENVELOPE = {"body": {"job": 7}, "meta": {"k": "v"}, "attempts": 1}


def add_upstream_entry(keys: Keys, name: str, envelope: dict[str, Any]) -> None:
    """XADD as onestep-redis does: the envelope's JSON in the one field `body`."""
    keys.client.xadd(name, {"body": json.dumps(envelope)})


def test_an_upstream_entry_is_unwrapped_and_the_result_leaves_as_one(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs, results = keys.name("jobs"), keys.name("results")
    seen: list[tuple[Any, dict[str, Any], int]] = []
    app = OneStepApp("upstream-redis")

    @app.task(
        source=redis_connector.stream(jobs, poll_interval_s=0.1, wire_format="upstream"),
        emit=redis_connector.stream(results, wire_format="upstream"),
    )
    def handle(ctx: Any, item: Any) -> Any:
        seen.append((item, dict(ctx.current.meta), ctx.current.attempts))
        return {"job": item["job"], "status": "done"}

    add_upstream_entry(keys, jobs, ENVELOPE)
    with running(app):
        wait_until(lambda: keys.client.xlen(results) >= 1, TIMEOUT)
    assert seen == [({"job": 7}, {"k": "v"}, 1)]
    [(_, fields)] = keys.client.xrange(results)
    assert set(fields) == {b"body"}
    envelope = json.loads(fields[b"body"])
    assert envelope["body"] == {"job": 7, "status": "done"}
    assert envelope["attempts"] == 0
    assert wait_until(lambda: keys.pending(jobs) == 0, TIMEOUT) is True


def test_a_retry_counts_in_the_envelope(keys: Keys, redis_connector: RedisConnector) -> None:
    jobs, dead = keys.name("jobs"), keys.name("dead")
    executions: list[int] = []
    app = OneStepApp("upstream-redis-retry")

    @app.task(
        source=redis_connector.stream(jobs, poll_interval_s=0.1, wire_format="upstream"),
        retry=MaxAttempts(3),
        dead_letter=redis_connector.stream(dead),
    )
    def flaky(ctx: Any, item: Any) -> None:
        executions.append(ctx.current.attempts)
        raise RuntimeError("boom")

    add_upstream_entry(keys, jobs, ENVELOPE)
    with running(app):
        wait_until(lambda: keys.client.xlen(dead) >= 1, TIMEOUT)
    assert executions == [1, 2]
    [(_, fields)] = keys.client.xrange(dead)
    assert json.loads(fields[b"body"])["payload"] == {"job": 7}
    assert json.loads(fields[b"meta"])["original_attempts"] == 3


def test_put_on_an_upstream_stream_writes_the_envelope(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    redis_connector.stream(jobs, wire_format="upstream").put({"job": 1}, {"k": "v"}, attempts=2)
    [(_, fields)] = keys.client.xrange(jobs)
    assert json.loads(fields[b"body"]) == {"body": {"job": 1}, "meta": {"k": "v"}, "attempts": 2}


def test_the_default_format_hands_a_body_key_through_untouched(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    jobs = keys.name("jobs")
    got: list[Any] = []
    done = threading.Event()
    app = OneStepApp("default-redis")

    @app.task(source=redis_connector.stream(jobs, poll_interval_s=0.1))
    def handle(ctx: Any, item: Any) -> None:
        got.append((item, ctx.current.attempts))
        done.set()

    add_upstream_entry(keys, jobs, ENVELOPE)
    with running(app):
        assert done.wait(TIMEOUT)
    assert got == [(ENVELOPE, 0)]


def test_wire_format_is_checked(redis_connector: RedisConnector) -> None:
    with pytest.raises(ValueError, match="wire_format"):
        redis_connector.stream("s", wire_format="json")


def test_compat_stream_reads_what_a_startup_hook_published(keys: Keys) -> None:
    # upstream's redis_stream.py: a group at "$" and jobs published by a startup hook
    from onestep.compat import RedisConnector as CompatRedis
    from tests.integration.redis_support import URL

    jobs = keys.name("jobs")
    redis = CompatRedis(URL)
    source = redis.stream(jobs, group="workers", batch_size=10, poll_interval_s=0.2)
    got: list[Any] = []
    done = threading.Event()
    app = OneStepApp("compat-redis")

    @app.on_startup
    async def publish_jobs(app: OneStepApp) -> None:
        for i in range(3):
            await source.publish({"job": i})

    @app.task(source=source)
    async def handle(ctx: Any, item: Any) -> None:
        got.append(item["job"])
        if len(got) == 3:
            done.set()

    try:
        with running(app):
            assert done.wait(TIMEOUT)
    finally:
        redis.close()
    assert sorted(got) == [0, 1, 2]
    assert source.start_id == "$"
