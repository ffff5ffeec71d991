"""Two `onestep dlq replay --limit 150` processes at once over 200 dead letters, on MySQL,
PostgreSQL, RabbitMQ and Redis: each dead letter is claimed by one of them only, so
exactly 200 distinct messages are back on the source, none is left as a dead letter, and
the two printed counts add up to 200. Both processes hold their first claim before either
puts anything back (ops_support.GATE), so they do overlap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import ops_support, postgres_support
from tests.integration.mysql_support import URL, mysql_url, query, quote, tables
from tests.integration.ops_support import TARGET, concurrent_replays, configure
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401
from tests.integration.redis_support import URL as REDIS_URL
from tests.integration.redis_support import Keys, keys_fixture, wait_until  # noqa: F401

__all__ = ["mysql_url", "tables"]  # fixtures used by name

pytestmark = pytest.mark.integration

DEAD_LETTERS = 200
LIMIT = 150


@pytest.fixture
def pg_tables() -> Iterator[Callable[[str], str]]:
    """`pg_tables("jobs")`: a unique PostgreSQL table name, dropped afterwards."""
    postgres_support.require_server()
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(f"t_{prefix}_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    for name in made:
        postgres_support.query(f"DROP TABLE IF EXISTS {postgres_support.quote(name)}")


def test_two_replays_at_once_on_mysql_put_each_dead_letter_back_once(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs, dead = tables("replay_jobs"), tables("replay_dead")
    configure(monkeypatch, URL, jobs, dead)
    app = ops_support.mysql_app()
    app.tasks["work"].source.create_table()
    ops_support.plant_dead_letters(app, DEAD_LETTERS)

    counts = concurrent_replays(tmp_path, f"{TARGET}:mysql_app", LIMIT)

    assert sum(counts) == DEAD_LETTERS, counts
    assert all(count > 0 for count in counts), counts  # both did some of the work
    payloads = [row[0] for row in query(f"SELECT payload FROM {quote(jobs)}")]
    assert len(payloads) == DEAD_LETTERS
    assert len(set(payloads)) == DEAD_LETTERS
    assert query(f"SELECT COUNT(*) FROM {quote(dead)}") == [(0,)]


def test_two_replays_at_once_on_rabbitmq_put_each_dead_letter_back_once(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs, dead = rabbit.name("replay-jobs"), rabbit.name("replay-dead")
    configure(monkeypatch, AMQP_URL, jobs, dead)
    app = ops_support.rabbit_app()
    ops_support.plant_dead_letters(app, DEAD_LETTERS)
    rabbit.declare(jobs)

    counts = concurrent_replays(tmp_path, f"{TARGET}:rabbit_app", LIMIT)

    assert sum(counts) == DEAD_LETTERS, counts
    assert all(count > 0 for count in counts), counts
    assert rabbit.count(dead) == 0
    assert rabbit.count(jobs) == DEAD_LETTERS
    bodies: list[Any] = [rabbit.get(jobs)[1] for _ in range(DEAD_LETTERS)]
    assert len(set(bodies)) == DEAD_LETTERS
    assert rabbit.count(jobs) == 0


def test_a_consumer_of_the_mysql_dead_letter_table_skips_claimed_rows(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = tables("claim_jobs"), tables("claim_dead")
    configure(monkeypatch, URL, jobs, dead)
    app = ops_support.mysql_app()
    ops_support.plant_dead_letters(app, 5)
    letters = app.dead_letters("work")
    table = letters.sink
    consumer = table.connector.table_queue(dead)
    consumer.open()
    try:
        with table.take(3, letters._matches) as claim:
            assert [entry.body["payload"]["n"] for entry in claim.entries] == [0, 1, 2]
            # an app consuming the table (and a second claim) sees only the other two
            assert [d.payload["payload"]["n"] for d in consumer.fetch(10)] == [3, 4]
            assert table.take(10, letters._matches).entries == []
            assert claim.settle([claim.entries[0].id]) == 1
        with table.take(10, letters._matches) as claim:  # the two given back
            assert [entry.body["payload"]["n"] for entry in claim.entries] == [1, 2]
    finally:
        consumer.close()


def test_a_rabbitmq_claim_hides_its_messages_until_it_ends(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = rabbit.name("claim-jobs"), rabbit.name("claim-dead")
    configure(monkeypatch, AMQP_URL, jobs, dead)
    app = ops_support.rabbit_app()
    ops_support.plant_dead_letters(app, 5)
    letters = app.dead_letters("work")
    queue = letters.sink
    with queue.take(3, letters._matches) as claim:
        assert [entry.body["payload"]["n"] for entry in claim.entries] == [0, 1, 2]
        assert rabbit.count(dead) == 2  # held unacked: no other consumer gets them
        other = queue.take(10, letters._matches)
        assert [entry.body["payload"]["n"] for entry in other.entries] == [3, 4]
        other.release()
        assert claim.settle([claim.entries[1].id]) == 1
    assert rabbit.count(dead) == 4
    assert [letter.payload["n"] for letter in letters.list()] == [0, 2, 3, 4]


def test_two_replays_at_once_on_postgres_put_each_dead_letter_back_once(
    pg_tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs, dead = pg_tables("replay_jobs"), pg_tables("replay_dead")
    configure(monkeypatch, postgres_support.URL, jobs, dead)
    app = ops_support.postgres_app()
    app.tasks["work"].source.create_table()
    ops_support.plant_dead_letters(app, DEAD_LETTERS)

    counts = concurrent_replays(tmp_path, f"{TARGET}:postgres_app", LIMIT)

    assert sum(counts) == DEAD_LETTERS, counts
    assert all(count > 0 for count in counts), counts  # both did some of the work
    pg = postgres_support.query
    payloads = [row[0] for row in pg(f"SELECT payload FROM {postgres_support.quote(jobs)}")]
    assert len(payloads) == DEAD_LETTERS
    assert len(set(payloads)) == DEAD_LETTERS
    assert pg(f"SELECT count(*) FROM {postgres_support.quote(dead)}") == [(0,)]


def test_a_consumer_of_the_postgres_dead_letter_table_skips_claimed_rows(
    pg_tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = pg_tables("claim_jobs"), pg_tables("claim_dead")
    configure(monkeypatch, postgres_support.URL, jobs, dead)
    app = ops_support.postgres_app()
    ops_support.plant_dead_letters(app, 5)
    letters = app.dead_letters("work")
    table = letters.sink
    consumer = table.connector.table_queue(dead, notify=False)
    consumer.open()
    try:
        with table.take(3, letters._matches) as claim:
            assert [entry.body["payload"]["n"] for entry in claim.entries] == [0, 1, 2]
            # an app consuming the table (and a second claim) sees only the other two
            assert [d.payload["payload"]["n"] for d in consumer.fetch(10)] == [3, 4]
            assert table.take(10, letters._matches).entries == []
            assert claim.settle([claim.entries[0].id]) == 1
        with table.take(10, letters._matches) as claim:  # the two given back
            assert [entry.body["payload"]["n"] for entry in claim.entries] == [1, 2]
        missing = table.connector.table_queue(pg_tables("never_made"), auto_create=False)
        assert missing.take(10).entries == []  # a table not made yet holds no dead letter
    finally:
        consumer.close()


def test_two_replays_at_once_on_redis_put_each_dead_letter_back_once(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jobs, dead = keys.name("replay-jobs"), keys.name("replay-dead")
    configure(monkeypatch, REDIS_URL, jobs, dead)
    app = ops_support.redis_app()
    ops_support.plant_dead_letters(app, DEAD_LETTERS)

    counts = concurrent_replays(tmp_path, f"{TARGET}:redis_app", LIMIT)

    assert sum(counts) == DEAD_LETTERS, counts
    assert all(count > 0 for count in counts), counts
    assert keys.client.xlen(dead) == 0  # settled entries are deleted, not only acked
    assert keys.pending(dead) == 0
    assert app.tasks["work"].dead_letter[0].depth() == 0
    bodies = [fields[b"body"] for _, fields in keys.entries(jobs)]
    assert len(bodies) == DEAD_LETTERS
    assert len(set(bodies)) == DEAD_LETTERS


def _redis_letters(keys: Keys, monkeypatch: pytest.MonkeyPatch, count: int) -> Any:
    jobs, dead = keys.name("claim-jobs"), keys.name("claim-dead")
    configure(monkeypatch, REDIS_URL, jobs, dead)
    app = ops_support.redis_app()
    ops_support.plant_dead_letters(app, count)
    return app.dead_letters("work")


def _numbers(entries: Any) -> list[int]:
    return [entry.body["payload"]["n"] for entry in entries]


def test_a_redis_claim_hides_its_entries_until_it_ends(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = _redis_letters(keys, monkeypatch, 6)
    stream = letters.sink
    odd = lambda entry: letters._matches(entry) and entry.body["payload"]["n"] % 2 == 1  # noqa: E731
    with stream.take(2, odd) as claim:
        assert _numbers(claim.entries) == [1, 3]
        # the ones it passed over (0, 2) were given back: another claim gets them
        with stream.take(10, letters._matches) as other:
            assert _numbers(other.entries) == [0, 2, 4, 5]
            assert stream.take(10, letters._matches).entries == []
        assert claim.settle([claim.entries[1].id]) == 1
    assert keys.pending(stream.name) == 5  # given back, still waiting
    with stream.take(10, letters._matches) as claim:  # oldest first again
        assert _numbers(claim.entries) == [0, 1, 2, 4, 5]
        claim.settle([])
    assert _numbers(stream.browse()) == [0, 1, 2, 4, 5]
    assert stream.depth() == 5
    # every claim's consumer left the group when it ended; the given-back ones wait
    consumers = {c["name"].decode() for c in keys.client.xinfo_consumers(stream.name, "onestep")}
    assert consumers == {"onestep-dead-letters"}
    # a stream that does not exist yet: nothing to claim, nothing made
    missing = stream.connector.stream(keys.name("claim-missing"))
    with missing.take(10, None) as claim:
        assert claim.entries == []
    assert not keys.client.exists(missing.name)


def test_a_consumer_of_the_redis_dead_letter_stream_skips_claimed_entries(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = _redis_letters(keys, monkeypatch, 5)
    stream = letters.sink
    consumer = stream.connector.stream(stream.name)
    consumer.open()
    try:
        with stream.take(3, letters._matches) as claim:
            assert _numbers(claim.entries) == [0, 1, 2]
            # an app reading the stream gets only the other two
            assert [d.payload["payload"]["n"] for d in consumer.fetch(10)] == [3, 4]
            assert stream.take(10, letters._matches).entries == []
    finally:
        consumer.close()


def test_the_entries_of_a_redis_claim_whose_replayer_died_come_back(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = _redis_letters(keys, monkeypatch, 3)
    server = letters.sink.connector
    # a short claim_idle_s, so that a dead claim is taken over soon
    stream = server.stream(letters.sink.name, claim_idle_s=0.5)
    dead = stream.take(2, letters._matches)
    assert _numbers(dead.entries) == [0, 1]
    dead._stop.set()  # the replayer dies: no keepalive, no settle, no release

    with stream.take(10, letters._matches) as claim:
        assert _numbers(claim.entries) == [2]  # still held by the dead claim

    def after_idle() -> list[int]:
        with stream.take(10, letters._matches) as claim:
            return _numbers(claim.entries)

    assert wait_until(lambda: after_idle() == [0, 1, 2], timeout=10)

    # a replayer that was only stalled and wakes up deletes nothing another claim took
    with stream.take(10, letters._matches) as claim:
        assert _numbers(claim.entries) == [0, 1, 2]
        assert dead.settle([entry.id for entry in dead.entries]) == 0
        assert claim.settle([claim.entries[2].id]) == 1
    assert _numbers(stream.browse()) == [0, 1]


def test_a_live_redis_claim_keeps_its_entries_however_long_it_takes(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = _redis_letters(keys, monkeypatch, 2)
    stream = letters.sink.connector.stream(letters.sink.name, claim_idle_s=0.3)
    with stream.take(1, letters._matches) as claim:
        assert _numbers(claim.entries) == [0]
        # for four idle periods its keepalive holds entry 0: other claims get only 1
        deadline = time.monotonic() + 4 * stream.claim_idle_s
        pace = threading.Event()
        while time.monotonic() < deadline:
            with stream.take(10, letters._matches) as other:
                assert _numbers(other.entries) == [1]
            pace.wait(0.05)  # not a synchronisation: paces the probing
        assert claim.settle([claim.entries[0].id]) == 1
    assert _numbers(stream.browse()) == [1]


HOLD_SCRIPT = """
import sys, threading
from onestep import RedisConnector
stream = RedisConnector({url!r}).stream({name!r}, claim_idle_s=0.5)
claim = stream.take(2, None)
print(len(claim.entries), flush=True)
threading.Event().wait()  # holds the claim (kept alive) until it is killed
"""


def test_a_redis_replayer_killed_mid_claim_gives_its_entries_back(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = _redis_letters(keys, monkeypatch, 3)
    name = letters.sink.name
    stream = letters.sink.connector.stream(name, claim_idle_s=0.5)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT.format(url=REDIS_URL, name=name)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ops_support.REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "2"
        # alive, its keepalive holds them however long: others get only the third
        deadline = time.monotonic() + 3 * stream.claim_idle_s
        while time.monotonic() < deadline:
            with stream.take(10, letters._matches) as claim:
                assert _numbers(claim.entries) == [2]
            threading.Event().wait(0.05)  # paces the probing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

    def taken() -> bool:
        with stream.take(10, letters._matches) as claim:
            return _numbers(claim.entries) == [0, 1, 2]

    assert wait_until(taken, timeout=10)  # idle for claim_idle_s: taken over
