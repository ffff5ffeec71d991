"""The RabbitMQ adapter's parts that need no broker: how delays map to delay queues (never
shorter, less than 10% longer, a bounded set for jittered backoff) and how pika's log
records are kept at DEBUG while onestep reports a failed connect itself."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

from actors import Failure
from adapters.rabbitmq import DELAY_QUEUE_GRACE_S, RabbitMQConnector, delay_bucket_ms
from adapters.rabbitmq._delays import delay_queue_arguments
from adapters.rabbitmq._quiet import quiet
from onestep import ExponentialBackoff

FAILURE = Failure("error", "RuntimeError", "boom", "")


@pytest.mark.parametrize(
    ("delay_s", "ms"),
    [
        (0.0004, 1),  # at least a millisecond
        (0.001, 1),
        (0.047, 47),
        (0.099, 99),
        (0.1, 100),
        (0.101, 110),
        (0.2, 200),
        (1.0, 1000),
        (1.234, 1300),
        (1.5, 1500),
        (5.0, 5000),
        (20.0, 20_000),
        (60.0, 60_000),
        (86_400.0, 87_000_000),
        (30 * 86_400.0, 30 * 86_400_000),  # the cap, exactly
    ],
)
def test_delays_round_up_to_two_significant_figures_of_milliseconds(
    delay_s: float, ms: int
) -> None:
    assert delay_bucket_ms(delay_s) == ms


def test_a_delay_is_never_shortened_and_lengthened_by_less_than_a_tenth() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        delay_s = 10 ** rng.uniform(-3, 6.4)
        ms = delay_bucket_ms(delay_s)
        asked = delay_s * 1000
        assert ms >= asked - 0.5  # only the rounding to a whole millisecond
        assert ms < max((asked + 0.5) * 1.1, 1.5)  # under 10% more than the whole ms


def test_jittered_backoff_uses_a_bounded_set_of_delay_queues() -> None:
    policy = ExponentialBackoff(
        max_attempts=10, min_delay_s=0.5, max_delay_s=300, multiplier=2, jitter=1.0
    )
    buckets = {
        delay_bucket_ms(delay)
        for _ in range(2_000)
        for attempts in range(1, 10)
        if (delay := policy.next_delay(attempts, FAILURE))
    }
    # every delay lies in [0, 300 s]: at most 90 buckets per factor of ten above 100 ms
    # (and 100 below it), so never more than 100 + 90 * 3.5 whatever the jitter drew
    assert len(buckets) <= 100 + 90 * 3.5
    assert all(1 <= ms <= 300_000 for ms in buckets)


def test_delay_queue_arguments_dead_letter_back_and_expire_after_the_grace() -> None:
    assert delay_queue_arguments(1500, "jobs") == {
        "x-message-ttl": 1500,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "jobs",
        "x-expires": 1500 + int(DELAY_QUEUE_GRACE_S * 1000),
    }


def test_delay_queue_names_and_keepalive_intervals() -> None:
    amqp = RabbitMQConnector("amqp://guest:guest@127.0.0.1:5672/%2F", heartbeat_s=30)
    assert amqp.queue("jobs").delay_queue_name(1.234) == "jobs.delay.1300"
    assert amqp.queue("jobs").keepalive_interval_s == 15.0
    assert RabbitMQConnector("amqp://h/", heartbeat_s=0).keepalive_interval_s == 0.0
    # a heartbeat under a second is one second, not "off"
    assert RabbitMQConnector("amqp://h/", heartbeat_s=0.4).keepalive_interval_s == 0.5


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def pika_records() -> Iterator[Records]:
    handler = Records()
    pika_logger = logging.getLogger("pika")
    old_level = pika_logger.level
    pika_logger.addHandler(handler)
    try:
        yield handler
    finally:
        pika_logger.removeHandler(handler)
        pika_logger.setLevel(old_level)


def test_pika_errors_inside_quiet_are_dropped_unless_debugging(pika_records: Records) -> None:
    pika_logger = logging.getLogger("pika")
    child = logging.getLogger("pika.adapters.blocking_connection")
    pika_logger.setLevel(logging.WARNING)
    with quiet():
        child.error("Connection workflow failed")
    assert pika_records.records == []
    child.error("outside quiet")
    assert [r.levelname for r in pika_records.records] == ["ERROR"]
    pika_logger.setLevel(logging.DEBUG)
    with quiet():
        child.error("while debugging")
    assert [(r.levelname, r.getMessage()) for r in pika_records.records[1:]] == [
        ("DEBUG", "while debugging")
    ]
