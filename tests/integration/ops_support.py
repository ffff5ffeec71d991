"""Targets and helpers for the operations tests against real servers (`onestep dlq`,
`onestep check --connect`): app factories configured by environment variables, so that
the same app runs in the test's process and loads in a real `onestep` process."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
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
    _gate_first_put(source)

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


#: With this environment variable naming a directory, the first `put` of the task's source
#: in each process (a replay's first put-back, made while it holds its first claim)
#: waits until two processes reached theirs: two `onestep dlq replay` run at once for sure.
GATE = "ONESTEP_TEST_GATE"
GATE_TIMEOUT_S = 30.0


def _gate_first_put(source: Any) -> None:
    gate = os.environ.get(GATE)
    if not gate:
        return
    put = source.put
    first = threading.Event()

    @functools.wraps(put)  # keeps put's signature: attempts= stays visible to the replay
    def gated_put(*args: Any, **kwargs: Any) -> Any:
        if not first.is_set():
            first.set()
            Path(gate, str(os.getpid())).touch()
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while len(os.listdir(gate)) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the other replay never reached its first put")
                threading.Event().wait(0.01)  # polling another process's file
        return put(*args, **kwargs)

    source.put = gated_put


def plant_dead_letters(app: OneStepApp, count: int) -> None:
    """`count` dead letters of the task 'work', payloads {"n": 0..count-1} with meta
    {"trace": n}, written to its dead-letter sink as the dead-letter path writes them
    (DESIGN §3), one `put` each."""
    spec = app.tasks["work"]
    (dead,) = spec.dead_letter
    for n in range(count):
        failure = {"kind": "error", "exception_type": "ValueError", "message": f"n={n}"}
        meta = {
            "app": app.name,
            "task": "work",
            "source": spec.source_name,
            "original_meta": {"trace": n},
            "original_attempts": 2,
            "dead_letter_id": uuid.uuid4().hex,
        }
        dead.put({"payload": {"n": n}, "failure": failure}, meta)


def concurrent_replays(gate: Path, target: str, limit: int) -> list[int]:
    """Run two `onestep dlq replay TARGET --task work --limit LIMIT` processes at once
    (both hold their first claim before either puts anything back: see GATE); returns
    the count each printed. Each must exit 0."""
    env = {**os.environ, GATE: str(gate), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "onestep", "dlq", "replay", target, "--task", "work"]
    command += ["--limit", str(limit)]
    processes = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    counts = []
    for process in processes:
        out, err = process.communicate(timeout=CLI_TIMEOUT_S)
        assert process.returncode == 0, err
        words = out.split()
        assert words[0] == "replayed", out
        counts.append(int(words[1]))
    return counts


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
    crash between the put and the removal would: the claim ends, its entries go back):
    the first replay put all three back and removed none, the second puts them again
    and removes them, and running the app handles each payload twice and loses none.
    `depths()` gives (source, dead letters)."""
    import pytest  # only the tests import this helper; the CLI loads this file as a target

    from onestep.testing import run_until_idle

    letters = app.dead_letters("work")
    take = letters.sink.take
    calls: list[int] = []

    def crash_once(limit: int, match: Any) -> Any:
        claim = take(limit, match)
        calls.append(1)
        if len(calls) == 1:

            def crash(ids: Any) -> int:
                claim.release()  # as the connection dropped by a crash gives them back
                raise ConnectionError("killed between the put and the removal")

            claim.settle = crash
        return claim

    monkeypatch.setattr(letters.sink, "take", crash_once)
    with pytest.raises(ConnectionError, match="killed"):
        letters.replay()
    assert depths() == (3, 3)
    assert letters.replay() == 3
    assert depths() == (6, 0)
    FAILING["on"] = False
    run_until_idle(app, timeout_s=30)
    assert sorted(h[0]["n"] for h in HANDLED) == [0, 0, 1, 1, 2, 2]
