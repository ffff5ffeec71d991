"""Apps for the `onestep run --processes N` tests, loaded by the workers as targets
(`tests/faults/processes_apps.py:NAME`). Each is a factory configured by environment
variables (queue names, files), so one test's workers never see another test's.

Every handler names its worker (`ONESTEP_WORKER`, set by the parent) in what it prints
or publishes, so a test can tell which worker did what.
"""

from __future__ import annotations

import os
import time
from typing import Any

from onestep import IntervalSource, MemoryQueue, OneStepApp, SQLiteStateStore


def worker() -> str:
    return os.environ.get("ONESTEP_WORKER", "?")


def say(line: str) -> None:
    """One line on stdout in one write: the workers share the parent's stdout pipe, and
    print() (text, then newline) lets their lines interleave."""
    os.write(1, f"{line}\n".encode())


def rabbit_app() -> OneStepApp:
    """RabbitMQ jobs -> results: each result says which worker (and pid) processed it."""
    from onestep import RabbitMQConnector

    amqp = RabbitMQConnector(os.environ["TEST_AMQP_URL"], heartbeat_s=10, connect_timeout_s=5)
    app = OneStepApp("procs-rabbit", shutdown_timeout_s=10.0)
    work_s = float(os.environ.get("TEST_WORK_S", "0"))

    @app.task(
        source=amqp.queue(os.environ["TEST_JOBS"], prefetch=10),
        emit=amqp.queue(os.environ["TEST_RESULTS"]),
        concurrency=4,
    )
    def record(ctx: Any, item: Any) -> Any:
        if work_s:
            time.sleep(work_s)  # the workload, so that messages are in flight for a while
        return {"id": item["id"], "worker": worker(), "pid": os.getpid()}

    return app


def webhook_app() -> OneStepApp:
    """A WebhookSource on a free port (`port=0`): the parent binds it once."""
    from onestep import WebhookSource

    app = OneStepApp("procs-webhook", shutdown_timeout_s=5.0)

    @app.task(source=WebhookSource("/hook", port=0, queue_maxsize=1000), concurrency=4)
    def hook(ctx: Any, item: Any) -> None:
        say(f"handled {item['body']['n']} by {worker()}")

    return app


def _schedule(app: OneStepApp) -> OneStepApp:
    @app.task(source=IntervalSource.every(seconds=0.2, name="beat"))
    def beat(ctx: Any, item: Any) -> None:
        say(f"fired {ctx.current.meta['scheduled_at']} by {worker()}")

    return app


def schedule_app() -> OneStepApp:
    """An IntervalSource every 0.2 s on a shared SQLiteStateStore (TEST_DB)."""
    state = SQLiteStateStore(os.environ["TEST_DB"])
    return _schedule(OneStepApp("procs-schedule", state=state, shutdown_timeout_s=2.0))


def schedule_app_in_memory() -> OneStepApp:
    """The same schedule on the default in-memory state store: refused under N > 1."""
    return _schedule(OneStepApp("procs-schedule-memory"))


def forever() -> OneStepApp:
    """One message per worker that is in flight until shutdown, then finishes (after
    TEST_DRAIN_S more seconds of work, 0 by default)."""
    app = OneStepApp("procs-forever", shutdown_timeout_s=10.0)
    jobs = MemoryQueue("jobs")
    drain_s = float(os.environ.get("TEST_DRAIN_S", "0"))

    @app.on_startup
    def put_job(app: OneStepApp) -> None:
        jobs.put("job")

    @app.task(source=jobs)
    def work(ctx: Any, item: Any) -> None:
        ctx.logger.info("working")
        say(f"working in {worker()} run dir {os.environ.get('ONESTEP_RUN_DIR', '-')}")
        ctx.app.wait_for_shutdown_request()
        if drain_s:
            time.sleep(drain_s)  # the last of the work, so that the drain takes a while
        say(f"finished in {worker()}")

    return app


def dies_on_request() -> OneStepApp:
    """Starts fine; each request to its webhook (port 0) ends the worker that took it."""
    from onestep import WebhookSource

    app = OneStepApp("procs-dies")

    @app.task(source=WebhookSource("/die", port=0))
    def die(ctx: Any, item: Any) -> None:
        say(f"dying in {worker()}")
        os._exit(3)

    return app


def exits_at_startup() -> OneStepApp:
    """Its startup hook ends the process: no worker can ever start."""
    app = OneStepApp("procs-exits-at-startup")

    @app.on_startup
    def leave(app: OneStepApp) -> None:
        say(f"startup hook in {worker()}")
        os._exit(3)

    @app.task(source=MemoryQueue("jobs"))
    def work(ctx: Any, item: Any) -> None: ...

    return app


def fails_in_workers() -> OneStepApp:
    """Loads in the parent, but its factory raises in a worker (a setting that only the
    parent's environment has, say): the worker exits 2 as a bad target."""
    if os.environ.get("ONESTEP_WORKER"):
        raise RuntimeError("DATABASE_URL is not set")
    app = OneStepApp("procs-fails-in-workers")

    @app.task(source=MemoryQueue("jobs"))
    def work(ctx: Any, item: Any) -> None: ...

    return app


def stuck_at_stop() -> OneStepApp:
    """A shutdown hook that never returns: the parent must SIGKILL the worker."""
    app = OneStepApp("procs-stuck", shutdown_timeout_s=0.2)

    @app.task(source=MemoryQueue("jobs"))
    def work(ctx: Any, item: Any) -> None: ...

    @app.on_shutdown
    def hang(app: OneStepApp) -> None:
        say(f"hanging in {worker()}")
        time.sleep(3600)  # the hang under test, not synchronisation

    return app


def forever_with_hook() -> OneStepApp:
    """`forever` with a shutdown hook that says it ran."""
    app = forever()

    @app.on_shutdown
    def goodbye(app: OneStepApp) -> None:
        say(f"shutdown hook in {worker()}")

    return app
