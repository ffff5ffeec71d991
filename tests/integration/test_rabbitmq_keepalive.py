"""RabbitMQ connections stay alive however long a handler runs: the source's and the sink's
actors pump their connections on a timer (keepalive), so heartbeats are answered while
every credit is out with a handler, and an idle sink still publishes without reconnecting.
A connection the broker closes is noticed by the keepalive: the source restarts even
while its handler runs, a sink reconnects on its next publish without failing it."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

import pytest

from onestep import OneStepApp
from tests.helpers import running
from tests.integration.rabbitmq_support import (  # noqa: F401
    CountingConnector,
    Rabbit,
    close_connections_named,
    rabbit_fixture,
)

pytestmark = pytest.mark.integration
HEARTBEAT_S = 2
LONG_S = 10.0  # five heartbeat timeouts


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        threading.Event().wait(0.05)


def wait_healthy(app: OneStepApp, done: threading.Event, timeout: float) -> int:
    """Wait for `done`, asserting `app.health()` is ok every 0.2 s meanwhile; returns how
    many times it was checked."""
    deadline = time.monotonic() + timeout
    checks = 0
    while not done.wait(0.2):
        health = app.health()
        assert health["status"] == "ok", health
        checks += 1
        assert time.monotonic() < deadline, f"not done within {timeout:g} s"
    return checks


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_longer_than_five_heartbeats_runs_once_without_a_restart(
    rabbit: Rabbit, kind: str
) -> None:
    jobs = rabbit.name("long")
    amqp = CountingConnector(heartbeat_s=HEARTBEAT_S)
    assert amqp.keepalive_interval_s == HEARTBEAT_S / 2
    executions: queue.Queue[tuple[int, int]] = queue.Queue()
    done = threading.Event()
    app = OneStepApp(f"long-{kind}")

    def record(ctx: Any, item: dict[str, Any]) -> None:
        executions.put((item["n"], ctx.current.attempts))
        if item["n"] == 1:
            done.set()

    if kind == "sync":

        @app.task(source=amqp.queue(jobs), concurrency=1)
        def slow(ctx: Any, item: dict[str, Any]) -> None:
            time.sleep(item["work_s"])  # the long work itself, not a synchronisation
            record(ctx, item)

    else:

        @app.task(source=amqp.queue(jobs), concurrency=1)
        async def slow_async(ctx: Any, item: dict[str, Any]) -> None:
            await asyncio.sleep(item["work_s"])
            record(ctx, item)

    # the second message waits in the consumer's buffer while the first runs
    rabbit.publish(jobs, {"n": 0, "work_s": LONG_S})
    rabbit.publish(jobs, {"n": 1, "work_s": 0})
    with running(app):
        checks = wait_healthy(app, done, LONG_S + 20)
        assert amqp.connects == 1, "the source reconnected: its actor was restarted"
    assert checks >= LONG_S / 0.2 / 2  # health was looked at throughout the long handler
    seen = [executions.get_nowait() for _ in range(executions.qsize())]
    assert seen == [(0, 0), (1, 0)]  # each ran once, never redelivered
    assert rabbit.count(jobs) == 0  # both acked: nothing came back when the app closed


def test_an_emit_sink_idle_for_several_heartbeats_publishes_without_reconnecting(
    rabbit: Rabbit, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = CountingConnector(heartbeat_s=1)
    app = OneStepApp("idle-sink")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results))
    def echo(ctx: Any, item: Any) -> Any:
        return item

    with caplog.at_level(logging.INFO, logger="onestep"), running(app):
        rabbit.publish(jobs, {"n": 1})
        assert rabbit.get_json(results, 10)[0] == {"n": 1}
        # Idle for five heartbeat timeouts (the condition under test), health checked
        # throughout: without keepalive the broker closes the sink's connection here.
        idle = threading.Event()
        threading.Timer(5.0, idle.set).start()
        wait_healthy(app, idle, 10)
        rabbit.publish(jobs, {"n": 2})
        assert rabbit.get_json(results, 10)[0] == {"n": 2}
        assert amqp.connects == 2  # one for the source, one for the sink: no reconnect
    assert "reconnecting" not in caplog.text
    assert "restarted" not in caplog.text


def test_a_source_whose_connection_is_closed_during_a_long_handler_restarts_at_once(
    rabbit: Rabbit,
) -> None:
    jobs = rabbit.name("cut")
    amqp = CountingConnector(heartbeat_s=HEARTBEAT_S)
    started, release = threading.Event(), threading.Event()
    executions: queue.Queue[int] = queue.Queue()
    app = OneStepApp("cut-source")

    @app.task(source=amqp.queue(jobs), concurrency=1)
    def hold(ctx: Any, item: Any) -> None:
        executions.put(ctx.current.attempts)
        started.set()
        assert release.wait(30)

    rabbit.publish(jobs, {"n": 1})
    with running(app):
        assert started.wait(10)
        assert close_connections_named(f"'{jobs}' on SourceActor") == 1
        # every credit is out with the handler, so only the keepalive touches the
        # connection: it finds it closed and the source actor is restarted meanwhile
        wait_until(lambda: amqp.connects == 2, 10, "a reconnect")
        wait_until(lambda: app.health()["status"] == "ok", 10, "recovery")
        release.set()
        # the broker gives the message, unacked on the closed connection, back once
        assert executions.get(timeout=10) == 0
        assert executions.get(timeout=10) == 0
    assert rabbit.count(jobs) == 0


def test_a_sink_whose_connection_the_broker_closed_publishes_the_next_result_on_a_new_one(
    rabbit: Rabbit, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = CountingConnector(heartbeat_s=1)
    failures: list[Any] = []
    app = OneStepApp("cut-sink")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results))
    def echo(ctx: Any, item: Any) -> Any:
        return item

    @app.on_event
    def on_event(event: Any) -> None:
        if event.kind in ("failed", "retried", "dead_lettered"):
            failures.append(event)

    with caplog.at_level(logging.INFO, logger="onestep"), running(app):
        rabbit.publish(jobs, {"n": 1})
        assert rabbit.get_json(results, 10)[0] == {"n": 1}
        assert close_connections_named(f"'{results}' on SinkActor") == 1
        wait_until(lambda: "keepalive failed" in caplog.text, 10, "the keepalive noticing")
        rabbit.publish(jobs, {"n": 2})
        assert rabbit.get_json(results, 10)[0] == {"n": 2}
        assert amqp.connects == 3  # the source's, the sink's and the sink's new one
    assert failures == []
    assert caplog.text.count("keepalive failed") == 1  # said once, not every interval
    assert rabbit.count(jobs) == 0
