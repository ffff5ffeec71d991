"""Operations against a real PostgreSQL: `onestep dlq` on a table queue used as dead
letter (list without claiming, replay with and without attempts, discard), the refusal
of a table sink, browse/remove/depth on a table, a replay that crashes before its
removal, and `onestep check --connect` with a good and a wrong password."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from onestep.testing import run_until_idle
from tests.integration import ops_support
from tests.integration.ops_support import TARGET, configure, onestep_cli
from tests.integration.postgres_support import (
    URL,
    connector,
    postgres_url,
    query,
    quote,
    statuses,
    tables,
)

__all__ = ["connector", "postgres_url", "tables"]  # fixtures used by name

pytestmark = pytest.mark.integration

APP = f"{TARGET}:postgres_app"


def make_dead_letters(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, sink: str = ""
) -> tuple[Any, str, str]:
    """Three rows {"n": 0..2} (meta {"trace": n}) that fail twice each and are
    dead-lettered; returns (app, jobs table, dead-letter table)."""
    jobs, dead = tables("ops_jobs"), tables("ops_dead")
    configure(monkeypatch, URL, jobs, dead, sink)
    app = ops_support.postgres_app()
    for n in range(3):
        app.tasks["work"].source.put({"n": n}, {"trace": n})
    counts = run_until_idle(app, timeout_s=30)
    assert counts["work"] == {"succeeded": 0, "failed": 3, "retried": 3, "dead_lettered": 3}
    return app, jobs, dead


def pending(table: str) -> int:
    return statuses(table).get("pending", 0)


def test_dlq_list_replay_discard_from_the_command_line(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, jobs, dead = make_dead_letters(tables, monkeypatch)
    dead_name = f"postgresql:{dead}"

    listed = onestep_cli("dlq", "list", APP, "--task", "work")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[:4] == [
        f"3 dead letter(s) of task 'work' in {dead_name!r}",
        "- id 1: error ValueError: cannot handle {'n': 0} (after 2 execution(s))",
        '    payload {"n": 0}',
        '    meta    {"id": 1, "trace": 0}',
    ]
    as_json = onestep_cli("dlq", "list", APP, "--task", "work", "--json")
    assert as_json.returncode == 0, as_json.stderr
    letters = json.loads(as_json.stdout)
    assert [letter["id"] for letter in letters] == [1, 2, 3]
    assert [letter["payload"] for letter in letters] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert letters[0]["failure"]["message"] == "cannot handle {'n': 0}"
    assert statuses(dead) == {"pending": 3}  # listing claimed nothing

    replayed = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == (
        f"replayed 1 dead letter(s) of task 'work' from {dead_name!r} to 'postgresql:{jobs}'\n"
    )
    kept = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1", "--keep-attempts")
    assert kept.returncode == 0, kept.stderr
    assert (pending(jobs), pending(dead)) == (2, 1)

    ops_support.FAILING["on"] = False
    assert run_until_idle(app, timeout_s=30)["work"]["succeeded"] == 2
    assert sorted(ops_support.HANDLED, key=lambda h: h[0]["n"]) == [
        ({"n": 0}, 0, {"trace": 0}),
        ({"n": 1}, 2, {"trace": 1}),
    ]

    discarded = onestep_cli("dlq", "discard", APP, "--task", "work")
    assert discarded.returncode == 0, discarded.stderr
    assert discarded.stdout == f"discarded 1 dead letter(s) of task 'work' from {dead_name!r}\n"
    assert query(f"SELECT count(*) FROM {quote(dead)}") == [(0,)]
    assert pending(jobs) == 0


def test_a_table_sink_dead_letter_is_refused_with_what_to_use(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tables("ops_audit")
    make_dead_letters(tables, monkeypatch, sink=sink)
    assert query(f"SELECT count(*) FROM {quote(sink)}") == [(3,)]  # it did get them
    refused = onestep_cli("dlq", "list", APP, "--task", "work", "--sink", f"postgresql:{sink}")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        f"Error: table sink 'postgresql:{sink}' cannot list or replay dead letters"
    )
    assert f"use connector.table_queue({sink!r}) as dead_letter instead" in refused.stderr


def test_a_replay_that_crashes_before_the_removal_duplicates_and_never_loses(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, jobs, dead = make_dead_letters(tables, monkeypatch)
    ops_support.check_a_crashed_replay_duplicates_and_never_loses(
        monkeypatch, app, lambda: (pending(jobs), pending(dead))
    )


def test_browse_remove_and_depth_see_only_pending_rows(
    connector: Any, tables: Callable[[str], str]
) -> None:
    name = tables("ops_rows")
    queue = connector.table_queue(name)
    assert queue.depth() == 0  # no table yet
    assert queue.browse() == []
    ids = [queue.put({"n": n}, {"k": n}) for n in range(4)]
    queue.put({"n": 9}, delay_s=600)  # pending, due later
    query(f"UPDATE {quote(name)} SET status = 'done' WHERE id = %s", (ids[1],))
    entries = queue.browse()
    assert [(e.id, e.body) for e in entries] == [
        (ids[0], {"n": 0}),
        (ids[2], {"n": 2}),
        (ids[3], {"n": 3}),
        (ids[3] + 1, {"n": 9}),
    ]
    assert entries[0].meta == {"k": 0}
    assert queue.browse(limit=1, match=lambda e: e.body["n"] > 0)[0].id == ids[2]
    assert queue.depth() == 4
    assert queue.remove([ids[0], ids[1], "not-a-row-id"]) == 1  # a done row is not pending
    assert queue.depth() == 3
    assert statuses(name) == {"pending": 3, "done": 1}


def test_put_with_attempts(connector: Any, tables: Callable[[str], str]) -> None:
    name = tables("ops_attempts")
    queue = connector.table_queue(name)
    row = queue.put("x", attempts=4)
    assert query(f"SELECT attempts FROM {quote(name)} WHERE id = %s", (row,)) == [(4,)]


def test_check_connect_with_a_good_and_a_wrong_password(
    tables: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = tables("ops_check"), tables("ops_check_dead")
    configure(monkeypatch, URL, jobs, dead)
    good = onestep_cli("check", APP, "--connect")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-2:] == [
        f"source 'postgresql:{jobs}' (PostgresTableQueue, table {jobs!r}; task 'work'): ok",
        f"sink 'postgresql:{dead}' (PostgresTableQueue, table {dead!r}; dead letter of 'work'): ok",
    ]
    assert statuses(jobs) == {}  # the table exists (created, as a run would), empty

    # trust authentication accepts any password: a wrong user is what fails here
    wrong = URL.replace("postgres@", "no_such_user:not-the-Passw0rd@")
    assert wrong != URL
    monkeypatch.setenv("ONESTEP_TEST_URL", wrong)
    bad = onestep_cli("check", APP, "--connect")
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()[-2:]
    assert lines[0].startswith(
        f"source 'postgresql:{jobs}' (PostgresTableQueue, table {jobs!r}; task 'work'): error: "
    )
    assert "no_such_user" in lines[0]
    assert bad.stderr.strip().endswith("Error: 2 of 2 endpoint(s) failed to open")
    assert "not-the-Passw0rd" not in bad.stdout + bad.stderr
