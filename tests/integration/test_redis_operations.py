"""Operations against a real Redis: `onestep dlq` (list without consuming, replay with and
without attempts, discard), browse/remove/depth on a stream, a replay that crashes
before its removal, `onestep check --connect` and `onestep run` with a wrong password."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from onestep import RedisConnector
from onestep.testing import run_until_idle
from tests.integration import ops_support
from tests.integration.ops_support import TARGET, configure, onestep_cli
from tests.integration.redis_support import URL, Keys, keys_fixture  # noqa: F401

pytestmark = pytest.mark.integration

APP = f"{TARGET}:redis_app"


def make_dead_letters(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """Three messages {"n": 0..2} (meta {"trace": n}) that fail twice each and are
    dead-lettered; returns (app, jobs stream, dead-letter stream)."""
    jobs, dead = keys.name("ops-jobs"), keys.name("ops-dead")
    configure(monkeypatch, URL, jobs, dead)
    app = ops_support.redis_app()
    stream = app.tasks["work"].source
    for n in range(3):
        stream.put({"n": n}, {"trace": n})
    counts = run_until_idle(app, timeout_s=30)
    assert counts["work"] == {"succeeded": 0, "failed": 3, "retried": 3, "dead_lettered": 3}
    return app, jobs, dead


def test_dlq_list_replay_discard_from_the_command_line(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, jobs, dead = make_dead_letters(keys, monkeypatch)
    dead_stream = app.tasks["work"].dead_letter[0]

    listed = onestep_cli("dlq", "list", APP, "--task", "work")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"3 dead letter(s) of task 'work' in {dead!r}"
    assert re.fullmatch(
        r"- id \d+-\d+: error ValueError: cannot handle \{'n': 0\} \(after 2 execution\(s\)\)",
        lines[1],
    )
    assert lines[2:4] == ['    payload {"n": 0}', '    meta    {"trace": 0}']
    as_json = onestep_cli("dlq", "list", APP, "--task", "work", "--json")
    assert as_json.returncode == 0, as_json.stderr
    letters = json.loads(as_json.stdout)
    assert [letter["payload"] for letter in letters] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [letter["attempts"] for letter in letters] == [2, 2, 2]
    assert dead_stream.depth() == 3  # listing consumed nothing

    replayed = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == (
        f"replayed 1 dead letter(s) of task 'work' from {dead!r} to {jobs!r}\n"
    )
    kept = onestep_cli("dlq", "replay", APP, "--task", "work", "--limit", "1", "--keep-attempts")
    assert kept.returncode == 0, kept.stderr
    assert (app.tasks["work"].source.depth(), dead_stream.depth()) == (2, 1)

    ops_support.FAILING["on"] = False
    assert run_until_idle(app, timeout_s=30)["work"]["succeeded"] == 2
    assert sorted(ops_support.HANDLED, key=lambda h: h[0]["n"]) == [
        ({"n": 0}, 0, {"trace": 0}),
        ({"n": 1}, 2, {"trace": 1}),
    ]

    discarded = onestep_cli("dlq", "discard", APP, "--task", "work")
    assert discarded.returncode == 0, discarded.stderr
    assert discarded.stdout == f"discarded 1 dead letter(s) of task 'work' from {dead!r}\n"
    assert dead_stream.depth() == 0
    assert keys.client.xlen(dead) == 0  # removed entries are deleted, not only acked
    assert json.loads(onestep_cli("dlq", "list", APP, "--task", "work", "--json").stdout) == []


def test_a_replay_that_crashes_before_the_removal_duplicates_and_never_loses(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _, _ = make_dead_letters(keys, monkeypatch)
    source, dead = app.tasks["work"].source, app.tasks["work"].dead_letter[0]
    ops_support.check_a_crashed_replay_duplicates_and_never_loses(
        monkeypatch, app, lambda: (source.depth(), dead.depth())
    )


def test_browse_remove_and_depth(keys: Keys) -> None:
    name = keys.name("ops-browse")
    server = RedisConnector(URL)
    stream = server.stream(name)
    try:
        assert stream.depth() == 0 and stream.browse() == []
        first = keys.client.xadd(name, {"body": b'{"plain": 1}'}).decode()
        stream.put("onestep", {"k": "v"})
        stream.put("third")
        entries = stream.browse()
        assert [(e.id, e.body, e.meta) for e in entries[:1]] == [(first, {"plain": 1}, {})]
        assert [(e.body, e.meta) for e in entries[1:]] == [("onestep", {"k": "v"}), ("third", {})]
        assert stream.browse(limit=1, match=lambda e: e.meta == {"k": "v"})[0].id == entries[1].id
        assert stream.depth() == 3

        # the group reads one (pending) and settles nothing: it still waits
        stream.open()
        keys.client.xreadgroup("onestep", "reader", {name: ">"}, count=1)
        assert stream.depth() == 3
        assert [e.id for e in stream.browse()] == [e.id for e in entries]
        # an entry the group acked is history, not a message
        keys.client.xreadgroup("onestep", "reader", {name: ">"}, count=1)
        keys.client.xack(name, "onestep", entries[1].id)
        assert [e.id for e in stream.browse()] == [entries[0].id, entries[2].id]
        assert stream.depth() == 2

        assert stream.remove([entries[0].id, "0-1"]) == 1  # an unknown id removes nothing
        assert keys.pending(name) == 0  # the removed pending entry left the group too
        assert [e.body for e in stream.browse()] == ["third"]
        stream.put("later", delay_s=30)
        assert stream.depth() == 2  # the delayed one counts
        assert server.stream(keys.name("ops-missing")).depth() == 0
    finally:
        server.close()


def test_check_connect_with_a_good_and_a_wrong_password(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, dead = keys.name("ops-check"), keys.name("ops-check-dead")
    configure(monkeypatch, URL, jobs, dead)
    good = onestep_cli("check", APP, "--connect")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-2:] == [
        f"source {jobs!r} (RedisStream; task 'work'): ok",
        f"sink {dead!r} (RedisStream; dead letter of 'work'): ok",
    ]
    assert keys.client.xinfo_groups(jobs)[0]["name"] == b"onestep"  # made, as a run would

    wrong = URL.replace("redis://", "redis://nobody:not-the-Passw0rd@")
    monkeypatch.setenv("ONESTEP_TEST_URL", wrong)
    bad = onestep_cli("check", APP, "--connect")
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()[-2:]
    assert lines[0] == (
        f"source {jobs!r} (RedisStream; task 'work'): error: ConnectionError: cannot connect "
        "to Redis at 127.0.0.1:6379 db 0 as user 'nobody': AuthenticationError: invalid "
        "username-password pair or user is disabled."
    )
    assert lines[1].startswith(f"sink {dead!r} (RedisStream; dead letter of 'work'): error: ")
    assert bad.stderr.strip().endswith("Error: 2 of 2 endpoint(s) failed to open")
    assert "Traceback" not in bad.stdout + bad.stderr
    assert "not-the-Passw0rd" not in bad.stdout + bad.stderr


BAD_PASSWORD_APP = """
from onestep import OneStepApp, RedisConnector

app = OneStepApp("badpw")
server = RedisConnector({url!r}, connect_timeout_s=3)


@app.task(source=server.stream({stream!r}))
def never(ctx, item):
    raise AssertionError("must not run")
"""


def test_onestep_run_reports_a_wrong_password_in_one_clean_line(keys: Keys, tmp_path: Path) -> None:
    app_file = tmp_path / "bad_app.py"
    url = "redis://nobody:Sekr3t-pw@127.0.0.1:6379/0"
    app_file.write_text(BAD_PASSWORD_APP.format(url=url, stream=keys.name("jobs")))
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
    assert "cannot connect to Redis at 127.0.0.1:6379 db 0 as user 'nobody'" in lines[0]
    assert "Traceback" not in err
    assert "Sekr3t-pw" not in err + completed.stdout
