"""Targets and helpers for the operations tests against real servers (`onestep dlq`,
`onestep check --connect`): app factories configured by environment variables, so that
the same app runs in the test's process and loads in a real `onestep` process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from onestep import MaxAttempts, OneStepApp

REPO = Path(__file__).resolve().parents[2]
TARGET = "tests/integration/ops_support.py"
CLI_TIMEOUT_S = 60.0

#: While True, the task fails every message (they end as dead letters).
FAILING = {"on": True}
#: (payload, attempts, meta) of every message the task handled without failing.
HANDLED: list[tuple[Any, int, dict[str, Any]]] = []


def _app(name: str, source: Any, dead: Any) -> OneStepApp:
    app = OneStepApp(name)

    @app.task(source=source, dead_letter=dead, retry=MaxAttempts(2))
    def work(ctx: Any, item: Any) -> None:
        if FAILING["on"]:
            raise ValueError(f"cannot handle {item}")
        meta = {k: v for k, v in ctx.current.meta.items() if k != "id"}
        HANDLED.append((item, ctx.current.attempts, meta))

    return app


def rabbit_app() -> OneStepApp:
    """Task `work` on queue $ONESTEP_TEST_QUEUE, dead letters to $ONESTEP_TEST_DEAD."""
    from onestep import RabbitMQConnector

    amqp = RabbitMQConnector(os.environ["ONESTEP_TEST_URL"])
    jobs = amqp.queue(os.environ["ONESTEP_TEST_QUEUE"])
    return _app("ops-rabbit", jobs, amqp.queue(os.environ["ONESTEP_TEST_DEAD"]))


def mysql_app() -> OneStepApp:
    """Task `work` on table queue $ONESTEP_TEST_QUEUE, dead letters to the table queue
    $ONESTEP_TEST_DEAD (or, with $ONESTEP_TEST_SINK set, to that table sink too)."""
    from onestep import MySQLConnector

    db = MySQLConnector(os.environ["ONESTEP_TEST_URL"], connect_timeout_s=5)
    jobs = db.table_queue(os.environ["ONESTEP_TEST_QUEUE"], poll_interval_s=0.02)
    dead: list[Any] = [db.table_queue(os.environ["ONESTEP_TEST_DEAD"])]
    if os.environ.get("ONESTEP_TEST_SINK"):
        dead.append(db.table_sink(os.environ["ONESTEP_TEST_SINK"], auto_create=True))
    return _app("ops-mysql", jobs, dead if len(dead) > 1 else dead[0])


def postgres_app() -> OneStepApp:
    """Task `work` on PostgreSQL table queue $ONESTEP_TEST_QUEUE, dead letters to the
    table queue $ONESTEP_TEST_DEAD (or, with $ONESTEP_TEST_SINK set, to that table sink
    too)."""
    from onestep import PostgresConnector

    db = PostgresConnector(os.environ["ONESTEP_TEST_URL"], connect_timeout_s=5)
    jobs = db.table_queue(os.environ["ONESTEP_TEST_QUEUE"], poll_interval_s=0.02)
    dead: list[Any] = [db.table_queue(os.environ["ONESTEP_TEST_DEAD"])]
    if os.environ.get("ONESTEP_TEST_SINK"):
        dead.append(db.table_sink(os.environ["ONESTEP_TEST_SINK"], auto_create=True))
    return _app("ops-postgres", jobs, dead if len(dead) > 1 else dead[0])


def redis_app() -> OneStepApp:
    """Task `work` on stream $ONESTEP_TEST_QUEUE, dead letters to stream $ONESTEP_TEST_DEAD."""
    from onestep import RedisConnector

    server = RedisConnector(os.environ["ONESTEP_TEST_URL"], connect_timeout_s=5)
    jobs = server.stream(os.environ["ONESTEP_TEST_QUEUE"], poll_interval_s=0.05)
    return _app("ops-redis", jobs, server.stream(os.environ["ONESTEP_TEST_DEAD"]))


def configure(monkeypatch: Any, url: str, queue: str, dead: str, sink: str = "") -> None:
    """Point the factories at these names, in this process and in `onestep` processes."""
    monkeypatch.setenv("ONESTEP_TEST_URL", url)
    monkeypatch.setenv("ONESTEP_TEST_QUEUE", queue)
    monkeypatch.setenv("ONESTEP_TEST_DEAD", dead)
    monkeypatch.setenv("ONESTEP_TEST_SINK", sink)
    FAILING["on"] = True
    HANDLED.clear()


def onestep_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `onestep ARGS...` in a real process from the repository root."""
    script = shutil.which("onestep", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "onestep"]
    return subprocess.run(
        [*command, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def check_a_crashed_replay_duplicates_and_never_loses(
    monkeypatch: Any, app: OneStepApp, depths: Any
) -> None:
    """Replay the task 'work''s three dead letters with the removal failing once (as a
    crash between the put and the removal would): the first replay put all three back
    and removed none, the second puts them again and removes them, and running the app
    handles each payload twice and loses none. `depths()` gives (source, dead letters)."""
    import pytest  # only the tests import this helper; the CLI loads this file as a target

    from onestep.testing import run_until_idle

    letters = app.dead_letters("work")
    remove = letters.sink.remove
    calls: list[int] = []

    def crash_once(ids: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("killed between the put and the removal")
        return int(remove(ids))

    monkeypatch.setattr(letters.sink, "remove", crash_once)
    with pytest.raises(ConnectionError, match="killed"):
        letters.replay()
    assert depths() == (3, 3)
    assert letters.replay() == 3
    assert depths() == (6, 0)
    FAILING["on"] = False
    run_until_idle(app, timeout_s=30)
    assert sorted(h[0]["n"] for h in HANDLED) == [0, 0, 1, 1, 2, 2]
