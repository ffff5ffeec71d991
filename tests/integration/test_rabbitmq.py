"""RabbitMQConnector against a real broker: round trips, exact attempts through the delay
queues, a short retry never behind a long one, dead letters, results that cannot be
encoded, decoding, restarts between attempts and startup errors (in the CLI too)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors import Failure
from onestep import MaxAttempts, OneStepApp, RabbitMQConnector, RetryPolicy, StartupError
from tests.helpers import running
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


def connector() -> RabbitMQConnector:
    return RabbitMQConnector(AMQP_URL)


def test_round_trip_source_task_sink(rabbit: Rabbit) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = connector()
    app = OneStepApp("rt")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results))
    def double(ctx: Any, item: Any) -> Any:
        ctx.emit({"side": item["n"]}, meta={"tag": "extra"})
        return {"n": item["n"] * 2, "meta_in": ctx.current.meta}

    with running(app):
        # published once start() returned: ctx.emit is bound only then (see the report)
        rabbit.publish(jobs, {"n": 21}, headers={"x-onestep-meta": '{"trace": "abc"}'})
        first, first_meta = rabbit.get_json(results, TIMEOUT)
        properties, body = rabbit.get(results, TIMEOUT)
    assert first == {"side": 21}
    assert first_meta == {"tag": "extra"}
    assert body == b'{"n":42,"meta_in":{"trace":"abc"}}'
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert rabbit.count(jobs) == 0


def test_returning_none_acks_without_publishing(rabbit: Rabbit) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = connector()
    seen = threading.Event()
    app = OneStepApp("none")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results))
    def nothing(ctx: Any, item: Any) -> None:
        seen.set()

    rabbit.publish(jobs, {"n": 1})
    with running(app):
        assert seen.wait(TIMEOUT)
    # stop() flushed the ack and closed: an unacked message would be ready again now
    assert rabbit.count(jobs) == 0
    assert rabbit.count(results) == 0


def test_max_attempts_three_dead_letters_after_exactly_three_executions(rabbit: Rabbit) -> None:
    jobs, dead = rabbit.name("jobs"), rabbit.name("dead")
    amqp = connector()
    executions: list[int] = []
    app = OneStepApp("dl")

    @app.task(source=amqp.queue(jobs), retry=MaxAttempts(3), dead_letter=amqp.queue(dead))
    def flaky(ctx: Any, item: Any) -> None:
        executions.append(ctx.current.attempts)
        raise RuntimeError(f"boom {item['n']}")

    rabbit.publish(jobs, {"n": 7}, headers={"x-onestep-meta": '{"k": 1}'})
    with running(app):
        body, meta = rabbit.get_json(dead, TIMEOUT)
    assert executions == [0, 1, 2]
    assert body["payload"] == {"n": 7}
    failure = body["failure"]
    assert failure["kind"] == "error"
    assert failure["exception_type"] == "RuntimeError"
    assert failure["message"] == "boom 7"
    assert "RuntimeError: boom 7" in failure["traceback"]
    assert re.fullmatch(r"[0-9a-f]{32}", meta.pop("dead_letter_id"))
    assert meta == {
        "app": "dl",
        "task": "flaky",
        "source": jobs,
        "original_meta": {"k": 1},
        "original_attempts": 3,
    }
    assert rabbit.count(jobs) == 0


def test_a_two_second_retry_delay_does_not_hold_up_other_messages(rabbit: Rabbit) -> None:
    jobs = rabbit.name("jobs")
    rabbit.delayed(jobs, 2.0)
    amqp = connector()
    done: queue.Queue[tuple[str, int, float]] = queue.Queue()
    app = OneStepApp("delay")

    @app.task(source=amqp.queue(jobs), retry=MaxAttempts(2, delay_s=2.0), concurrency=1)
    def handle(ctx: Any, item: str) -> None:
        attempts = ctx.current.attempts
        done.put((item, attempts, time.monotonic()))
        if item == "slow" and attempts == 0:
            raise RuntimeError("later, please")

    rabbit.publish(jobs, "slow")
    with running(app):
        _, _, failed_at = done.get(timeout=TIMEOUT)
        for n in range(5):
            rabbit.publish(jobs, f"fast-{n}")
        seen = [done.get(timeout=TIMEOUT) for _ in range(6)]
    fast = [at for item, _, at in seen if item.startswith("fast")]
    slow = [(attempts, at) for item, attempts, at in seen if item == "slow"]
    assert len(fast) == 5 and len(slow) == 1
    retried_attempts, retried_at = slow[0]
    assert retried_attempts == 1
    assert max(fast) < retried_at  # the fast ones did not wait for the delayed retry
    assert retried_at - failed_at >= 1.9


class DelayPerItem(RetryPolicy):
    """Retries each message once, after the delay its payload names."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays

    def next_delay(self, attempts: int, failure: Failure) -> float | None:
        if attempts > 1:
            return None
        return self.delays[failure.message]


def test_a_one_second_retry_does_not_wait_behind_a_twenty_second_one(rabbit: Rabbit) -> None:
    jobs = rabbit.name("jobs")
    rabbit.delayed(jobs, 1.0, 20.0)
    amqp = connector()
    runs: queue.Queue[tuple[str, int, float]] = queue.Queue()
    app = OneStepApp("mixed-delays")

    @app.task(source=amqp.queue(jobs), retry=DelayPerItem({"slow": 20.0, "fast": 1.0}))
    def handle(ctx: Any, item: str) -> None:
        runs.put((item, ctx.current.attempts, time.monotonic()))
        if ctx.current.attempts == 0:
            raise RuntimeError(item)  # the message names the delay the policy picks

    with running(app):
        rabbit.publish(jobs, "slow")
        assert runs.get(timeout=TIMEOUT)[:2] == ("slow", 0)
        rabbit.publish(jobs, "fast")  # after the 20 s retry is in its delay queue
        item, attempts, failed_at = runs.get(timeout=TIMEOUT)
        assert (item, attempts) == ("fast", 0)
        item, attempts, retried_at = runs.get(timeout=TIMEOUT)
    assert (item, attempts) == ("fast", 1)
    assert 1.0 <= retried_at - failed_at < 3.0
    assert rabbit.count(f"{jobs}.delay.20000") == 1  # the slow one is still waiting


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"bad": object()}, "Object of type object is not JSON serializable"),
        (float("nan"), "NaN and Infinity are not JSON"),
    ],
)
def test_one_result_that_cannot_be_encoded_fails_alone(
    rabbit: Rabbit, bad: Any, problem: str
) -> None:
    jobs, results, dead = rabbit.name("jobs"), rabbit.name("results"), rabbit.name("dead")
    amqp = connector()
    settled = threading.Semaphore(0)
    app = OneStepApp("encode")

    @app.task(
        source=amqp.queue(jobs, prefetch=200),
        emit=amqp.queue(results),
        dead_letter=amqp.queue(dead),
        concurrency=50,
    )
    async def produce(ctx: Any, item: dict[str, int]) -> Any:
        await asyncio.sleep(0.001)
        return bad if item["n"] == 100 else {"n": item["n"]}

    @app.on_event
    def count(event: Any) -> None:
        if event.kind in ("succeeded", "dead_lettered"):
            settled.release()

    for n in range(200):
        rabbit.publish(jobs, {"n": n})
    with running(app):
        for _ in range(200):
            assert settled.acquire(timeout=TIMEOUT)
    assert rabbit.count(jobs) == 0
    assert rabbit.count(results) == 199
    assert rabbit.count(dead) == 1
    letter, meta = rabbit.get_json(dead, TIMEOUT)
    assert letter["payload"] == {"n": 100}
    assert letter["failure"]["kind"] == "encode"
    assert letter["failure"]["exception_type"] == "EncodeError"
    assert problem in letter["failure"]["message"]
    assert results in letter["failure"]["message"]
    assert meta["original_attempts"] == 1
    published = {json.loads(rabbit.get(results, TIMEOUT)[1])["n"] for _ in range(199)}
    assert published == set(range(200)) - {100}


def test_one_result_over_max_message_bytes_fails_alone_and_the_others_publish_once(
    rabbit: Rabbit,
) -> None:
    jobs, results, dead = rabbit.name("jobs"), rabbit.name("results"), rabbit.name("dead")
    limit = 64 * 1024
    amqp = RabbitMQConnector(AMQP_URL, max_message_bytes=limit)
    settled = threading.Semaphore(0)
    kinds: list[str] = []
    app = OneStepApp("oversize")

    @app.task(
        source=amqp.queue(jobs),
        emit=amqp.queue(results),
        dead_letter=amqp.queue(dead),
        retry=MaxAttempts(3),
        concurrency=8,
    )
    def produce(ctx: Any, item: dict[str, int]) -> Any:
        if item["n"] == 17:
            return {"n": 17, "blob": "x" * limit}  # over the limit once encoded
        return {"n": item["n"]}

    @app.on_event
    def count(event: Any) -> None:
        kinds.append(event.kind)
        if event.kind in ("succeeded", "dead_lettered"):
            settled.release()

    for n in range(40):
        rabbit.publish(jobs, {"n": n})
    with running(app):
        for _ in range(40):
            assert settled.acquire(timeout=TIMEOUT)
    assert kinds.count("succeeded") == 39
    assert kinds.count("dead_lettered") == 1
    assert "retried" not in kinds  # an encode failure is never retried
    assert rabbit.count(jobs) == 0
    assert rabbit.count(dead) == 1
    letter, _ = rabbit.get_json(dead, TIMEOUT)
    assert letter["payload"] == {"n": 17}
    assert letter["failure"]["kind"] == "encode"
    assert letter["failure"]["exception_type"] == "MessageTooLarge"
    assert f"over the limit of {limit:,} bytes" in letter["failure"]["message"]
    assert rabbit.count(results) == 39  # each published once
    published = [json.loads(rabbit.get(results, TIMEOUT)[1])["n"] for _ in range(39)]
    assert sorted(published) == sorted(set(range(40)) - {17})


def test_undecodable_json_is_dead_lettered_as_decode_and_later_messages_flow(
    rabbit: Rabbit,
) -> None:
    jobs, results, dead = rabbit.name("jobs"), rabbit.name("results"), rabbit.name("dead")
    amqp = connector()
    app = OneStepApp("decode")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results), dead_letter=amqp.queue(dead))
    def echo(ctx: Any, item: Any) -> Any:
        return item

    rabbit.publish(jobs, b"{not json", content_type="application/json")
    rabbit.publish(jobs, {"ok": 1})
    with running(app):
        body, meta = rabbit.get_json(dead, TIMEOUT)
        result, _ = rabbit.get_json(results, TIMEOUT)
    assert body["failure"]["kind"] == "decode"
    assert body["payload"] == "{not json"
    assert meta["original_attempts"] == 0
    assert result == {"ok": 1}


def test_attempts_survive_a_worker_restart_between_attempts(rabbit: Rabbit) -> None:
    jobs, dead = rabbit.name("jobs"), rabbit.name("dead")
    rabbit.delayed(jobs, 0.5)
    executions: list[tuple[str, int]] = []
    retried = threading.Event()

    def make_app(label: str) -> OneStepApp:
        amqp = connector()
        app = OneStepApp("restart")

        @app.task(
            source=amqp.queue(jobs),
            retry=MaxAttempts(3, delay_s=0.5),
            dead_letter=amqp.queue(dead),
        )
        def flaky(ctx: Any, item: Any) -> None:
            executions.append((label, ctx.current.attempts))
            raise RuntimeError("again")

        @app.on_event
        def on_event(event: Any) -> None:
            if event.kind == "retried":
                retried.set()

        return app

    rabbit.publish(jobs, {"n": 1})
    with running(make_app("first")):
        assert retried.wait(TIMEOUT)
    assert executions == [("first", 0)]
    with running(make_app("second")):
        body, meta = rabbit.get_json(dead, TIMEOUT)
    assert executions == [("first", 0), ("second", 1), ("second", 2)]
    assert meta["original_attempts"] == 3
    assert body["payload"] == {"n": 1}


def test_text_and_binary_content_types(rabbit: Rabbit) -> None:
    jobs, results = rabbit.name("jobs"), rabbit.name("results")
    amqp = connector()
    received: queue.Queue[Any] = queue.Queue()
    app = OneStepApp("types")

    @app.task(source=amqp.queue(jobs), emit=amqp.queue(results))
    def keep(ctx: Any, item: Any) -> Any:
        received.put(item)
        return item if isinstance(item, bytes) else None

    rabbit.publish(jobs, "héllo".encode(), content_type="text/plain")
    rabbit.publish(jobs, b"\x00\xffraw", content_type="application/octet-stream")
    rabbit.publish(jobs, b"no type", content_type=None)
    with running(app):
        items = [received.get(timeout=TIMEOUT) for _ in range(3)]
        properties, body = rabbit.get(results, TIMEOUT)
        second_properties, second_body = rabbit.get(results, TIMEOUT)
    assert items == ["héllo", b"\x00\xffraw", b"no type"]
    assert (properties.content_type, body) == ("application/octet-stream", b"\x00\xffraw")
    assert second_body == b"no type"
    assert second_properties.content_type == "application/octet-stream"


def test_bad_credentials_fail_at_startup_without_the_password(
    rabbit: Rabbit, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = rabbit.name("jobs")
    secret = "s3cret-Pa55word"
    amqp = RabbitMQConnector(f"amqp://guest:{secret}@127.0.0.1:5672/%2F")
    assert secret not in repr(amqp) and secret not in repr(amqp.queue(jobs))
    app = OneStepApp("badcreds")

    @app.task(source=amqp.queue(jobs))
    def never(ctx: Any, item: Any) -> None:
        raise AssertionError("must not run")

    with caplog.at_level(logging.DEBUG), pytest.raises(StartupError) as raised:
        app.start()
    text = str(raised.value)
    assert "127.0.0.1:5672" in text and "guest" in text
    assert secret not in text
    assert secret not in repr(raised.value.__cause__)
    assert secret not in caplog.text


def test_unreachable_broker_fails_at_startup(rabbit: Rabbit) -> None:
    amqp = RabbitMQConnector("amqp://guest:pw-xyz@127.0.0.1:1/%2F", connect_timeout_s=2)
    app = OneStepApp("badurl")

    @app.task(source=amqp.queue(rabbit.name("jobs")))
    def never(ctx: Any, item: Any) -> None:
        raise AssertionError("must not run")

    with pytest.raises(StartupError) as raised:
        app.start()
    assert "127.0.0.1:1" in str(raised.value)
    assert "connection refused" in str(raised.value)  # not a bare "AMQPConnectionError:"
    assert "pw-xyz" not in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prefetch": 0}, "prefetch"),
        ({"exchange_type": "nope"}, "exchange_type"),
        ({"routing_key": "rk"}, "routing_key"),
        ({"durable": "yes"}, "durable"),
        ({"arguments": 3}, "arguments"),
        ({"exchange": ""}, "exchange"),
    ],
)
def test_queue_arguments_are_checked_at_construction(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        connector().queue("q", **kwargs)


def test_connector_arguments_are_checked_and_the_password_is_not_shown() -> None:
    with pytest.raises(ValueError, match="url") as raised:
        RabbitMQConnector("http://user:hunter2@host/")
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ValueError, match="heartbeat_s"):
        RabbitMQConnector(AMQP_URL, heartbeat_s=-1)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        RabbitMQConnector(AMQP_URL, connect_timeout_s=0)


def test_the_rabbitmq_pipeline_example_runs_to_a_clean_stop(rabbit: Rabbit) -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "examples/rabbitmq_pipeline.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    assert out.count("report: order") == 19
    assert "dead letter: order 13 after 3 executions: ValueError" in out


BAD_PASSWORD_APP = """
from onestep import OneStepApp, RabbitMQConnector

app = OneStepApp("badpw")
amqp = RabbitMQConnector({url!r}, connect_timeout_s=3)


@app.task(source=amqp.queue({queue!r}))
def never(ctx, item):
    raise AssertionError("must not run")
"""


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("amqp://guest:Sekr3t-pw@127.0.0.1:5672/%2F", "ACCESS_REFUSED"),
        ("amqp://guest:Sekr3t-pw@127.0.0.1:1/%2F", "127.0.0.1:1"),
    ],
    ids=["wrong-password", "refused-connection"],
)
def test_onestep_run_reports_a_failed_connect_in_one_clean_line(
    rabbit: Rabbit, tmp_path: Path, url: str, where: str
) -> None:
    app_file = tmp_path / "bad_app.py"
    app_file.write_text(BAD_PASSWORD_APP.format(url=url, queue=rabbit.name("jobs")))
    completed = subprocess.run(
        [sys.executable, "-m", "onestep", "run", str(app_file)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    err = completed.stderr
    assert completed.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: app 'badpw' crashed: StartupError:")
    assert "cannot connect to RabbitMQ at 127.0.0.1" in lines[0] and where in lines[0]
    assert "Traceback" not in err and "pika" not in err
    assert "Sekr3t-pw" not in err + completed.stdout


PUT_SCRIPT = """
from onestep import RabbitMQConnector

try:
    RabbitMQConnector({url!r}).queue({queue!r}).put({{"n": 1}})
except ConnectionError as exc:
    print("refused:", exc)
"""


def test_a_put_with_a_wrong_password_raises_without_pika_noise(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    script = tmp_path / "put.py"
    url = "amqp://guest:Sekr3t-pw@127.0.0.1:5672/%2F"
    script.write_text(PUT_SCRIPT.format(url=url, queue=rabbit.name("jobs")))
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""  # pika's ERROR records are not printed by lastResort
    assert completed.stdout.startswith("refused: cannot connect to RabbitMQ at 127.0.0.1:5672")
    assert "ACCESS_REFUSED" in completed.stdout
    assert "Sekr3t-pw" not in completed.stdout
