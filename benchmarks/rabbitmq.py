"""Throughput and peak memory of onestep on RabbitMQ against raw pika, same run, same broker.

Needs RabbitMQ at 127.0.0.1:5672 (guest/guest; or set ONESTEP_RABBITMQ_URL). Run from the
repository root:

    python benchmarks/rabbitmq.py                   # both cases, 20,000 messages
    python benchmarks/rabbitmq.py --repeat 3 --json # best of 3, one JSON object per case

Cases:
- `consume`: 20,000 preloaded messages, prefetch 100, a no-op handler that returns None
  (so each message is only consumed and acked). Baseline: raw pika `basic_consume` with
  the same prefetch and a callback that does `basic_ack` per message.
- `pipeline`: RabbitMQ -> no-op task (returns its item) -> RabbitMQ with publisher
  confirms. Baseline: raw pika consume -> `basic_publish` on a `confirm_delivery` channel
  (one confirm waited per message) -> `basic_ack`.

Each side runs in its own child process (peak RSS is that side's alone) on its own fresh
queues, preloaded before the clock starts. The rate is (N - 1) / (time of the N-th
message done - time of the first message seen): for `consume` a message is done when its
handler ran (acks must keep pace or prefetch 100 stops the flow), for `pipeline` when the
output queue holds N messages (polled every 5 ms from another connection) for onestep, and
when the N-th source ack is written for the baseline.
It never asserts anything: it only reports (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    CountingEvent,
    add_common_args,
    emit_child_result,
    parse_common_args,
    print_results,
    run_cases,
)

URL = os.environ.get("ONESTEP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
CASES = ("consume", "pipeline")
DEFAULT_MESSAGES = 20_000
PREFETCH = 100
CONCURRENCY = 32


def _pika() -> Any:
    import pika  # type: ignore[import-untyped]

    return pika


def prepare(messages: int) -> tuple[str, str, Any]:
    """Fresh input and output queues, the input preloaded with N small JSON messages."""
    pika = _pika()
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    tag = uuid.uuid4().hex[:8]
    source, sink = f"bench-in-{tag}", f"bench-out-{tag}"
    for name in (source, sink):
        channel.queue_declare(name, durable=True)
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for i in range(messages):
        channel.basic_publish("", source, b'{"n":%d}' % i, properties)
    while channel.queue_declare(source, passive=True).method.message_count < messages:
        connection.process_data_events(time_limit=0.05)
    return source, sink, connection


def cleanup(connection: Any, *queues: str) -> None:
    channel = connection.channel()
    for name in queues:
        channel.queue_delete(name)
    connection.close()


def wait_for_count(connection: Any, queue: str, count: int, wait_s: float) -> float | None:
    """Time at which `queue` held `count` messages, or None after `wait_s`."""
    channel = connection.channel()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if channel.queue_declare(queue, passive=True).method.message_count >= count:
            return time.perf_counter()
        connection.process_data_events(time_limit=0.005)
    return None


def measure_onestep(case: str, messages: int, wait_s: float) -> dict[str, Any]:
    from onestep import OneStepApp, RabbitMQConnector

    source_name, sink_name, connection = prepare(messages)
    amqp = RabbitMQConnector(URL)
    app = OneStepApp("bench", shutdown_timeout_s=5.0)
    counter = CountingEvent(messages)
    hit = counter.hit
    try:
        if case == "consume":

            @app.task(source=amqp.queue(source_name, prefetch=PREFETCH), concurrency=CONCURRENCY)
            def consume(ctx: Any, item: Any) -> None:
                hit()

            app.start()
            try:
                if not counter.done.wait(wait_s):
                    return {"error": f"not all {messages} messages handled in {wait_s:g} s"}
            finally:
                app.stop()
            return {"rate": counter.rate()}

        @app.task(
            source=amqp.queue(source_name, prefetch=PREFETCH),
            emit=amqp.queue(sink_name),
            concurrency=CONCURRENCY,
        )
        def forward(ctx: Any, item: Any) -> Any:
            hit()
            return item

        app.start()
        try:
            last = wait_for_count(connection, sink_name, messages, wait_s)
        finally:
            app.stop()
        if last is None or counter.first_at is None:
            return {"error": f"not all {messages} results published in {wait_s:g} s"}
        return {"rate": (messages - 1) / (last - counter.first_at)}
    finally:
        cleanup(connection, source_name, sink_name)


def measure_baseline(case: str, messages: int, wait_s: float) -> dict[str, Any]:
    pika = _pika()
    source_name, sink_name, setup = prepare(messages)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    out = connection.channel()
    out.confirm_delivery()
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    times: list[float] = []
    seen = 0

    def on_consume(ch: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal seen
        if case == "pipeline":
            out.basic_publish("", sink_name, body, properties)  # waits for its confirm
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen == 1 or seen == messages:
            times.append(time.perf_counter())

    channel.basic_consume(source_name, on_consume)
    deadline = time.monotonic() + wait_s
    while seen < messages and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    connection.close()
    cleanup(setup, source_name, sink_name)
    if seen < messages:
        return {"error": f"baseline handled {seen} of {messages} in {wait_s:g} s"}
    return {"rate": (messages - 1) / (times[-1] - times[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="onestep on RabbitMQ against raw pika: consume+ack and a confirmed "
        "RabbitMQ -> task -> RabbitMQ pipeline; each side in its own child process."
    )
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    args = parse_common_args(parser, argv, CASES)
    if args.child:
        kind, case = args.child
        measure = measure_onestep if kind == "onestep" else measure_baseline
        emit_child_result(**measure(case, args.messages, args.timeout))
        return 0
    results = run_cases(
        os.path.abspath(__file__),
        args.cases,
        repeat=args.repeat,
        child_args=["--messages", str(args.messages), "--timeout", str(args.timeout)],
        timeout_s=args.timeout + 60.0,
    )
    title = (
        f"RabbitMQ: onestep against raw pika, {args.messages:,} messages, prefetch "
        f"{PREFETCH}, concurrency {CONCURRENCY}, best of {args.repeat}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    print_results(results, as_json=args.json, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
