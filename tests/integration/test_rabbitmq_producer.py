"""RabbitMQQueue.put and put_many against a real broker: from many threads without an app,
in batches, delayed, refused, from inside a handler, after close() and after idling past
the heartbeat; bodies that are not JSON are refused before anything is sent."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from actors import EncodeError
from adapters.rabbitmq import PublishRefused
from onestep import OneStepApp, RabbitMQConnector
from onestep.kit import MessageTooLarge
from tests.helpers import running
from tests.integration.rabbitmq_support import (  # noqa: F401
    AMQP_URL,
    CountingConnector,
    Rabbit,
    rabbit_fixture,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def consume_exactly(
    rabbit: Rabbit, amqp: RabbitMQConnector, name: str, count: int
) -> list[tuple[Any, dict[str, Any]]]:
    """Run an app on `name` until it handled `count` messages; then the queue must be
    empty (a duplicate would still be in it, or would have been handled)."""
    seen: list[tuple[Any, dict[str, Any]]] = []
    lock = threading.Lock()
    done = threading.Event()
    app = OneStepApp("consumer")

    @app.task(source=amqp.queue(name, prefetch=200), concurrency=8)
    def collect(ctx: Any, item: Any) -> None:
        with lock:
            seen.append((item, ctx.current.meta))
            if len(seen) == count:
                done.set()

    with running(app):
        assert done.wait(TIMEOUT), f"handled {len(seen)} of {count}"
    assert len(seen) == count
    assert rabbit.count(name) == 0
    return seen


def test_four_threads_put_two_thousand_without_an_app_and_an_app_consumes_them(
    rabbit: Rabbit,
) -> None:
    name = rabbit.name("put")
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = amqp.queue(name)
    errors: list[BaseException] = []

    def produce(thread: int) -> None:
        try:
            for n in range(500):
                jobs.put({"thread": thread, "n": n}, {"from": f"{thread}-{n}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors, errors
    assert rabbit.count(name) == 2000  # every put returned after its confirm
    seen = consume_exactly(rabbit, amqp, name, 2000)
    keys = {(item["thread"], item["n"]) for item, _ in seen}
    assert keys == {(t, n) for t in range(4) for n in range(500)}
    for item, meta in seen:
        assert meta == {"from": f"{item['thread']}-{item['n']}"}
    amqp.close()


def test_put_many_publishes_a_thousand_with_their_meta(rabbit: Rabbit) -> None:
    name = rabbit.name("many")
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = amqp.queue(name)
    assert jobs.put_many(({"n": n} for n in range(1000)), {"batch": "b1"}) == 1000
    assert jobs.put_many([]) == 0
    seen = consume_exactly(rabbit, amqp, name, 1000)
    assert Counter(item["n"] for item, _ in seen) == Counter(range(1000))
    assert all(meta == {"batch": "b1"} for _, meta in seen)
    amqp.close()


def test_a_delayed_put_arrives_after_its_delay_not_before(rabbit: Rabbit) -> None:
    name = rabbit.name("delayed")
    rabbit.delayed(name, 1.5)
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = amqp.queue(name)
    assert jobs.delay_queue_name(1.5) == f"{name}.delay.1500"
    started = time.monotonic()
    jobs.put({"late": True}, {"k": "v"}, delay_s=1.5)
    jobs.put({"late": False})
    first, _ = rabbit.get_json(name, TIMEOUT)
    assert first == {"late": False}
    body, meta = rabbit.get_json(name, TIMEOUT)
    arrived = time.monotonic() - started
    assert body == {"late": True} and meta == {"k": "v"}
    assert 1.5 <= arrived < 1.5 + 5
    amqp.close()


def test_put_to_a_destination_that_refuses_raises(rabbit: Rabbit) -> None:
    name = rabbit.name("full")
    amqp = RabbitMQConnector(AMQP_URL)
    full = amqp.queue(name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    full.put("fits")
    with pytest.raises(PublishRefused, match=f"refused 1 .* to queue '{name}'"):
        full.put("does not fit")
    with pytest.raises(PublishRefused, match="refused 2"):
        full.put_many(["no", "room"])
    assert rabbit.count(name) == 1
    amqp.close()


def test_put_after_its_queue_was_deleted_raises_then_declares_it_again(rabbit: Rabbit) -> None:
    name = rabbit.name("deleted")
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = amqp.queue(name)
    jobs.put(1)
    rabbit.channel.queue_delete(name)
    with pytest.raises(PublishRefused, match="returned 1 \\(unroutable\\)"):
        jobs.put(2)  # nothing routes it: the put says so instead of dropping it
    jobs.put(3)  # declares the queue again first
    assert rabbit.get_json(name, TIMEOUT)[0] == 3
    amqp.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_put_from_inside_a_running_handler(rabbit: Rabbit, kind: str) -> None:
    jobs_name, out_name = rabbit.name("jobs"), rabbit.name("out")
    amqp = RabbitMQConnector(AMQP_URL)
    jobs, out = amqp.queue(jobs_name), amqp.queue(out_name)
    rabbit.declare(out_name)  # so that the test can read it before the first put
    app = OneStepApp(f"put-inside-{kind}")

    if kind == "sync":

        @app.task(source=jobs, concurrency=4)
        def fan_out(ctx: Any, item: Any) -> None:
            out.put({"n": item["n"]}, {"by": "handler"})

    else:

        @app.task(source=jobs, concurrency=4)
        async def fan_out_async(ctx: Any, item: Any) -> None:
            out.put({"n": item["n"]}, {"by": "handler"})  # blocks the loop briefly

    with running(app):
        jobs.put_many([{"n": n} for n in range(20)])
        got = [rabbit.get_json(out_name, TIMEOUT) for _ in range(20)]
    assert sorted(body["n"] for body, _ in got) == list(range(20))
    assert all(meta == {"by": "handler"} for _, meta in got)
    assert rabbit.count(jobs_name) == 0
    amqp.close()


def test_close_then_put_again_reconnects(rabbit: Rabbit) -> None:
    name = rabbit.name("close")
    amqp = CountingConnector()
    jobs = amqp.queue(name)
    jobs.put(1)
    assert amqp.connects == 1
    jobs.put(2)
    assert amqp.connects == 1  # the pooled connection was used again
    amqp.close()
    jobs.put(3)
    assert amqp.connects == 2
    jobs.close()  # outside an actor: closes the connector's producer connections
    jobs.put(4)
    assert amqp.connects == 3
    assert [rabbit.get_json(name, TIMEOUT)[0] for _ in range(4)] == [1, 2, 3, 4]
    amqp.close()


def test_a_put_after_the_producer_idled_past_its_heartbeat_still_works(rabbit: Rabbit) -> None:
    name = rabbit.name("idle")
    amqp = CountingConnector(heartbeat_s=1)
    jobs = amqp.queue(name)
    jobs.put("before")
    # idle for four heartbeat timeouts (the condition under test): nobody pumps the
    # pooled connection, so the broker closes it
    time.sleep(4.0)
    jobs.put("after")  # finds the pooled connection dead and connects again
    assert amqp.connects == 2
    assert [rabbit.get_json(name, TIMEOUT)[0] for _ in range(2)] == ["before", "after"]
    amqp.close()


def test_concurrent_puts_never_share_a_connection(rabbit: Rabbit) -> None:
    name = rabbit.name("threads")
    amqp = RabbitMQConnector(AMQP_URL)
    jobs = amqp.queue(name)
    in_use: set[int] = set()
    overlaps: list[int] = []
    lock = threading.Lock()
    pool = amqp.producers
    original_take, original_give = pool._take, pool._give_back

    def take() -> Any:
        producer = original_take()
        with lock:
            if id(producer.connection) in in_use:
                overlaps.append(id(producer.connection))
            in_use.add(id(producer.connection))
        return producer

    def give_back(producer: Any) -> None:
        with lock:
            in_use.discard(id(producer.connection))
        original_give(producer)

    pool._take, pool._give_back = take, give_back  # type: ignore[method-assign]
    results: queue.Queue[BaseException | None] = queue.Queue()

    def produce() -> None:
        try:
            for n in range(100):
                jobs.put(n)
            results.put(None)
        except BaseException as exc:
            results.put(exc)

    threads = [threading.Thread(target=produce) for _ in range(6)]
    for thread in threads:
        thread.start()
    outcomes = [results.get(timeout=TIMEOUT) for _ in threads]
    for thread in threads:
        thread.join(TIMEOUT)
    assert outcomes == [None] * 6
    assert not overlaps
    assert rabbit.count(name) == 600
    amqp.close()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"bad": object()}, "Object of type object is not JSON serializable"),
        ({"x": float("nan")}, "NaN and Infinity are not JSON"),
        (float("inf"), "NaN and Infinity are not JSON"),
    ],
)
def test_a_body_that_is_not_json_raises_before_anything_is_sent(
    rabbit: Rabbit, body: Any, problem: str
) -> None:
    name = rabbit.name("encode")
    amqp = CountingConnector()
    jobs = amqp.queue(name)
    with pytest.raises(EncodeError, match=problem) as raised:
        jobs.put(body)
    assert name in str(raised.value)
    with pytest.raises(EncodeError, match=problem):
        jobs.put_many([{"ok": 1}, {"ok": 2}, body, {"ok": 3}])
    with pytest.raises(EncodeError, match="the meta is not valid JSON"):
        jobs.put({"ok": 1}, {"when": object()})
    assert amqp.connects == 0  # refused before connecting: nothing of the batch was sent
    jobs.put(b"\x00raw bytes")
    properties, raw = rabbit.get(name, TIMEOUT)
    assert raw == b"\x00raw bytes" and properties.content_type == "application/octet-stream"
    assert rabbit.count(name) == 0
    amqp.close()


def test_a_body_over_the_brokers_limit_fails_at_once_naming_its_size(rabbit: Rabbit) -> None:
    name = rabbit.name("oversize")
    jobs = RabbitMQConnector(AMQP_URL).queue(name)
    body = b"x" * (140 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(MessageTooLarge) as raised:
        jobs.put(body)
    assert time.monotonic() - started < 10
    assert raised.value.size == len(body)
    assert raised.value.limit == 128 * 1024 * 1024
    assert f"the body is {len(body):,} bytes" in str(raised.value)
    assert f"over the limit of {128 * 1024 * 1024:,} bytes" in str(raised.value)
    jobs.put({"next": "works"})
    assert rabbit.get_json(name, TIMEOUT)[0] == {"next": "works"}
    jobs.connector.close()


def test_a_body_of_exactly_max_message_bytes_goes_and_one_byte_more_does_not(
    rabbit: Rabbit,
) -> None:
    name = rabbit.name("limit")
    amqp = CountingConnector(max_message_bytes=1000)
    jobs = amqp.queue(name)
    with pytest.raises(MessageTooLarge, match="the body is 1,001 bytes"):
        jobs.put(b"x" * 1001)
    assert amqp.connects == 0  # refused before connecting
    jobs.put(b"x" * 1000)
    assert rabbit.get(name, TIMEOUT)[1] == b"x" * 1000
    amqp.close()


def test_a_broker_with_a_lower_limit_than_configured_refuses_at_once_too(
    rabbit: Rabbit,
) -> None:
    # the connector thinks 200 MiB may go; the broker (128 MiB) closes the channel, and
    # the put says so at once instead of waiting for a confirm that never comes
    name = rabbit.name("oversize")
    jobs = RabbitMQConnector(AMQP_URL, max_message_bytes=200 * 1024 * 1024).queue(name)
    started = time.monotonic()
    with pytest.raises(MessageTooLarge, match="the broker's max_message_size") as raised:
        jobs.put(b"x" * (140 * 1024 * 1024))
    assert time.monotonic() - started < 10
    assert raised.value.size >= 140 * 1024 * 1024
    jobs.put({"next": "works"})
    assert rabbit.get_json(name, TIMEOUT)[0] == {"next": "works"}
    jobs.connector.close()


def test_put_arguments_are_checked() -> None:
    jobs = RabbitMQConnector(AMQP_URL).queue("never-used")
    with pytest.raises(ValueError, match="delay_s"):
        jobs.put(1, delay_s=-1)
    with pytest.raises(ValueError, match="delay_s must be at most"):
        jobs.put(1, delay_s=31 * 86_400)
    with pytest.raises(TypeError, match="meta must be a dict"):
        jobs.put(1, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bodies must be an iterable"):
        jobs.put_many("abc")
    with pytest.raises(ValueError, match="delay_s"):
        jobs.delay_queue_name(0)


AT_EXIT_SCRIPT = """
import atexit

pooled = []
# atexit runs the last registered first: this runs after onestep's own exit handler
atexit.register(lambda: print("closed" if pooled[0].is_closed else "still open"))

from onestep import RabbitMQConnector

jobs = RabbitMQConnector({url!r}).queue({queue!r})
jobs.put("from a script that never closes")
pooled.append(jobs.connector.producers._idle[0].connection)
print("put")
"""


def test_producer_connections_are_closed_at_interpreter_exit(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    name = rabbit.name("atexit")
    script = tmp_path / "script.py"
    script.write_text(AT_EXIT_SCRIPT.format(url=AMQP_URL, queue=name))
    root = str(Path(__file__).resolve().parents[2])
    completed = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["put", "closed"]
    assert completed.stderr == ""
    assert rabbit.get_json(name, TIMEOUT)[0] == "from a script that never closes"
