"""Fixtures for the RabbitMQ tests: a broker check that skips (or fails under CI), unique
queue names that are deleted afterwards (with their delay queues), a raw pika client to
publish and inspect, and a connector that counts its connections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika  # type: ignore[import-untyped]
import pytest

from adapters.rabbitmq import RabbitMQConnector, delay_bucket_ms
from tests.helpers import skip_or_fail

AMQP_URL = os.environ.get("ONESTEP_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def broker_problem() -> str | None:
    """Why the broker cannot be used, or None when it answers."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    connection.close()
    return None


def require_broker() -> None:
    problem = broker_problem()
    if problem is None:
        return
    skip_or_fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({problem})")


class Rabbit:
    """A raw pika client for the test thread, and the queues a test made."""

    def __init__(self) -> None:
        self.url = AMQP_URL
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.queues: list[str] = []

    def name(self, label: str) -> str:
        """A queue name unique to this test; it (and its retry queue) is deleted after."""
        name = f"onestep-test-{label}-{uuid.uuid4().hex[:10]}"
        self.queues += [name, f"{name}.retry"]
        return name

    def delayed(self, queue: str, *delays_s: float) -> None:
        """Delete the delay queues of `queue` for these delays after the test too (the
        broker would remove them by itself, but only minutes later)."""
        self.queues += [f"{queue}.delay.{delay_bucket_ms(d)}" for d in delays_s]

    def declare(self, queue: str) -> None:
        self.channel.queue_declare(queue, durable=True)

    def publish(
        self,
        queue: str,
        body: Any,
        *,
        content_type: str | None = "application/json",
        headers: dict[str, Any] | None = None,
    ) -> None:
        if content_type == "application/json" and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.declare(queue)
        properties = pika.BasicProperties(
            content_type=content_type, headers=headers, delivery_mode=2
        )
        self.channel.basic_publish("", queue, body, properties)

    def get(self, queue: str, timeout: float = 10.0) -> tuple[Any, bytes]:
        """The next message of `queue` (properties, body), acked; TimeoutError if none
        arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return properties, body
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message in {queue!r} within {timeout:g} s")
            self.connection.process_data_events(time_limit=0.02)

    def get_json(self, queue: str, timeout: float = 10.0) -> tuple[Any, dict[str, Any]]:
        """(body decoded from JSON, onestep meta from the headers)."""
        properties, body = self.get(queue, timeout)
        assert properties.content_type == "application/json"
        meta_header = (properties.headers or {}).get("x-onestep-meta")
        return json.loads(body), json.loads(meta_header) if meta_header else {}

    def count(self, queue: str) -> int:
        """Messages ready in `queue` (not counting unacked ones)."""
        result = self.channel.queue_declare(queue, durable=True, passive=True)
        return int(result.method.message_count)

    def close(self) -> None:
        try:
            for queue in self.queues:
                self.channel.queue_delete(queue)
        finally:
            self.connection.close()


@pytest.fixture(name="rabbit")
def rabbit_fixture() -> Iterator[Rabbit]:
    """Skips when RabbitMQ is unreachable (fails instead when CI is set)."""
    require_broker()
    client = Rabbit()
    try:
        yield client
    finally:
        client.close()


class CountingConnector(RabbitMQConnector):
    """A connector that counts the connections it made: a source that reconnected (an
    actor restart) or a sink that did shows up as one more."""

    def __init__(self, url: str = AMQP_URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.connects = 0

    def connect(self, purpose: str = "onestep") -> Any:
        connection = super().connect(purpose)
        self.connects += 1
        return connection


def close_connections_named(part: str) -> int:
    """Have the broker close every connection whose name contains `part` (onestep names
    them after their queue and thread), as an operator or a network cut would; returns how
    many it closed. Skips the test (fails under CI) without rabbitmqctl."""
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not installed: cannot close a connection from the broker"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    closed = 0
    for line in listed.splitlines():
        pid, _, properties = line.partition("\t")  # connection_name is among the properties
        if part in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "closed by a test"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            closed += 1
    return closed
