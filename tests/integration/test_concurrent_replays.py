"""Two `onestep dlq replay --limit 150` processes at once over 200 dead letters, on MySQL,
PostgreSQL and RabbitMQ: each dead letter is claimed by one of them only, so exactly 200 distinct
messages are back on the source, none is left as a dead letter, and the two printed
counts add up to 200. Both processes hold their first claim before either puts anything
back (ops_support.GATE), so they do overlap."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import ops_support, postgres_support
from tests.integration.mysql_support import URL, mysql_url, query, quote, tables
from tests.integration.ops_support import TARGET, concurrent_replays, configure
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

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
