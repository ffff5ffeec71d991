"""Operations against a real RabbitMQ: `onestep dlq` (list without consuming, replay with
and without attempts, discard), browse/remove/depth on a queue, a replay that crashes
before its removal, and `onestep check --connect` with a good and a wrong password."""

from __future__ import annotations

import json
import re
from typing import Any

import pika  # type: ignore[import-untyped]
import pytest

from onestep import RabbitMQConnector
from onestep.testing import run_until_idle
from tests.integration import ops_support
from tests.integration.ops_support import TARGET, configure, onestep_cli
from tests.integration.rabbitmq_support import AMQP_URL, Rabbit, rabbit_fixture  # noqa: F401

pytestmark = pytest.mark.integration

APP = f"{TARGET}:rabbit_app"


def make_dead_letters(rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Three messages {"n": 0..2} (meta {"trace": n}) that fail twice each and are
    dead-lettered; returns (app, jobs queue, dead-letter queue)."""
    jobs, dead = rabbit.name("ops-jobs"), rabbit.name("ops-dead")
    configure(monkeypatch, AMQP_URL, jobs, dead)
    app = ops_support.rabbit_app()
    queue = app.tasks["work"].source
    for n in range(3):
        queue.put({"n": n}, {"trace": n})
    counts = run_until_idle(app, timeout_s=30)
    assert counts["work"] == {"succeeded": 0, "failed": 3, "retried": 3, "dead_lettered": 3}
    return app, jobs, dead


def test_dlq_list_replay_discard_from_the_command_line(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, jobs, dead = make_dead_letters(rabbit, monkeypatch)

    listed = onestep_cli("dlq", "list", APP, "--task", "work")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"3 dead letter(s) of task 'work' in {dead!r}"
    assert re.fullmatch(
        r"- id [0-9a-f]{32}: error ValueError: cannot handle \{'n': 0\} "
        r"\(after 2 execution\(s\)\)",
        lines[1],
    )
    assert lines[2:4] == ['    payload {"n": 0}', '    meta    {"trace": 0}']
    as_json = onestep_cli("dlq", "list", APP, "--task", "work", "--json")
    assert as_json.returncode == 0, as_json.stderr
    letters = json.loads(as_json.stdout)
    assert [letter["payload"] for letter in letters] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [letter["meta"] for letter in letters] == [{"trace": n} for n in range(3)]
    assert {letter["failure"]["exception_type"] for letter in letters} == {"ValueError"}
    assert [letter["attempts"] for letter in letters] == [2, 2, 2]
    assert rabbit.count(dead) == 3  # listing consumed nothing
    assert onestep_cli("dlq", "list", APP, "--task", "work", "--json").stdout == as_json.stdout

    replayed = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == (
        f"replayed 1 dead letter(s) of task 'work' from {dead!r} to {jobs!r}\n"
    )
    kept = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1", "--keep-attempts")
    assert kept.returncode == 0, kept.stderr
    assert (rabbit.count(jobs), rabbit.count(dead)) == (2, 1)

    ops_support.FAILING["on"] = False
    counts = run_until_idle(app, timeout_s=30)
    assert counts["work"]["succeeded"] == 2
    assert sorted(ops_support.HANDLED, key=lambda h: h[0]["n"]) == [
        ({"n": 0}, 0, {"trace": 0}),
        ({"n": 1}, 2, {"trace": 1}),
    ]

    discarded = onestep_cli("dlq", "discard", APP, "--task", "work")
    assert discarded.returncode == 0, discarded.stderr
    assert discarded.stdout == f"discarded 1 dead letter(s) of task 'work' from {dead!r}\n"
    assert (rabbit.count(jobs), rabbit.count(dead)) == (0, 0)
    empty = onestep_cli("dlq", "list", APP, "--task", "work", "--json")
    assert json.loads(empty.stdout) == []


def test_a_replay_that_crashes_before_the_removal_duplicates_and_never_loses(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, jobs, dead = make_dead_letters(rabbit, monkeypatch)
    ops_support.check_a_crashed_replay_duplicates_and_never_loses(
        monkeypatch, app, lambda: (rabbit.count(jobs), rabbit.count(dead))
    )


def test_browse_remove_and_depth_on_any_message(rabbit: Rabbit) -> None:
    name = rabbit.name("ops-browse")
    amqp = RabbitMQConnector(AMQP_URL)
    queue = amqp.queue(name)
    try:
        rabbit.publish(name, {"plain": 1})
        rabbit.publish(name, {"plain": 1})  # the same contents: the same fallback id
        rabbit.channel.basic_publish(
            "", name, b'"tagged"', pika.BasicProperties(message_id="m-7", delivery_mode=2)
        )
        queue.put("onestep", {"k": "v"})
        entries = queue.browse()
        bodies = [entry.body for entry in entries]
        assert bodies == [{"plain": 1}, {"plain": 1}, b'"tagged"', "onestep"]
        assert entries[0].id == entries[1].id and str(entries[0].id).startswith("sha256-")
        assert entries[2].id == "m-7"
        assert entries[3].meta == {"k": "v"}
        assert queue.browse(limit=1, match=lambda e: e.id == "m-7")[0].id == "m-7"
        assert rabbit.count(name) == 4

        # one named occurrence removes one message; an unknown id removes nothing
        assert queue.remove([entries[0].id, "m-7", "unknown"]) == 2
        assert [entry.body for entry in queue.browse()] == [{"plain": 1}, "onestep"]
        assert queue.depth() == 2

        rabbit.delayed(name, 30)
        queue.put("later", delay_s=30)
        assert queue.depth() == 3  # the delay queue this process used counts
        assert amqp.queue(rabbit.name("ops-missing")).depth() == 0
    finally:
        amqp.close()


def test_check_connect_with_a_good_and_a_wrong_password(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = rabbit.name("ops-check"), rabbit.name("ops-check-dead")
    configure(monkeypatch, AMQP_URL, jobs, dead)
    good = onestep_cli("check", APP, "--connect")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-2:] == [
        f"source {jobs!r} (RabbitMQQueue; task 'work'): ok",
        f"sink {dead!r} (RabbitMQQueue; dead letter of 'work'): ok",
    ]
    assert rabbit.count(jobs) == 0  # declared, as a run would

    wrong = AMQP_URL.replace("guest:guest@", "guest:not-the-Passw0rd@")
    assert wrong != AMQP_URL
    monkeypatch.setenv("ONESTEP_TEST_URL", wrong)
    bad = onestep_cli("check", APP, "--connect")
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()[-2:]
    assert lines[0].startswith(f"source {jobs!r} (RabbitMQQueue; task 'work'): error: ")
    assert lines[1].startswith(f"sink {dead!r} (RabbitMQQueue; dead letter of 'work'): error: ")
    assert "ACCESS_REFUSED" in lines[0]
    assert bad.stderr.strip().endswith("Error: 2 of 2 endpoint(s) failed to open")
    assert "not-the-Passw0rd" not in bad.stdout + bad.stderr
