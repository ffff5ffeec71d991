"""Apps for the `executor="process"` tests, run through `onestep run` as targets
(`tests/faults/process_executor_apps.py:NAME`).

Each app's `work` task runs in worker processes; its results and dead letters go to
MemoryQueues drained by thread tasks in the app's process, which print one JSON line per
message (`RESULT {...}`, `DEAD {...}`), so a test reads what happened from stdout.
Handlers are module-level functions: a worker process finds them by module and name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from onestep import MaxAttempts, MemoryQueue, NoRetry, OneStepApp, ProcessExecutor


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def build(
    name: str,
    handler: Any,
    items: list[Any],
    *,
    executor: Any = "process",
    concurrency: int = 1,
    timeout_s: float | None = None,
    retry: Any = None,
    shutdown_timeout_s: float = 5.0,
) -> OneStepApp:
    app = OneStepApp(name, config={"flavour": "salty"}, shutdown_timeout_s=shutdown_timeout_s)
    jobs, results, dead = MemoryQueue("jobs"), MemoryQueue("results"), MemoryQueue("dead")

    @app.on_startup
    def load(app: OneStepApp) -> None:
        say(f"APP {os.getpid()}")
        for item in items:
            jobs.put(item, meta={"tag": f"m-{item}"} if isinstance(item, int | str) else None)

    app.task(
        source=jobs,
        emit=results,
        dead_letter=dead,
        executor=executor,
        concurrency=concurrency,
        timeout_s=timeout_s,
        retry=retry or NoRetry(),
        name="work",
    )(handler)

    @app.task(source=results)
    def report(ctx: Any, item: Any) -> None:
        say("RESULT " + json.dumps(item))

    @app.task(source=dead)
    def dead_letters(ctx: Any, item: Any) -> None:
        failure = item["failure"]
        payload = item["payload"] if isinstance(item["payload"], int | str) else "?"
        runs = ctx.app.state.get(f"{app.name}:work:runs-{payload}")
        line = {
            "payload": payload,
            "kind": failure["kind"],
            "message": failure["message"],
            "attempts": ctx.current.meta["original_attempts"],
            "runs": runs,
            # the pids its handler stored (the worker's, its children's)
            "pids": ctx.app.state.get(f"{app.name}:work:pids-{payload}"),
        }
        say("DEAD " + json.dumps(line))

    return app


# -- handlers (module level) -----------------------------------------------------------


def count_and_burn(ctx: Any, item: Any) -> Any:
    """CPU-bound; reports its context and which process ran it."""
    burn(200_000)
    n = ctx.state.incr("n")
    ctx.logger.info("handled %s in pid %d", item, os.getpid())
    return {
        "item": item,
        "n": n,
        "pid": os.getpid(),
        "payload": ctx.current.payload,
        "meta": ctx.current.meta,
        "attempts": ctx.current.attempts,
        "task": ctx.current.task,
        "config": ctx.config["flavour"],
        "deadline": ctx.deadline,
        "cancelled": ctx.cancelled.is_set(),
    }


def misbehave(ctx: Any, item: Any) -> Any:
    """Sleeps, exits the process, returns what does not pickle, or does its work."""
    ctx.state.incr(f"runs-{item}")
    if item == "sleep":
        ctx.state.set(f"pids-{item}", [os.getpid()])
        time.sleep(120)
    if item == "chatty":  # keeps the app busy with log records past its deadline
        while True:
            ctx.logger.warning("still here")
            time.sleep(0.01)
    if item == "exit":
        os._exit(3)
    if item == "unpicklable":
        return threading.Lock()
    return {"item": item, "pid": os.getpid(), "admin": os.getppid()}


def emit_and_state(ctx: Any, item: Any) -> None:
    """ctx.state and ctx.emit from a worker process (they run in the app's process)."""
    ctx.state.set(f"k{item}", item * 10)
    got = ctx.state.get(f"k{item}")
    ctx.state.delete(f"k{item}")
    after = ctx.state.get(f"k{item}", "gone")
    ctx.emit({"via": "default", "item": item, "got": got, "after": after})
    # another sink is found in the app by its type and name
    ctx.emit({"via": "named", "item": item}, sink=MemoryQueue("results"), meta={"m": 1})


def wait_for_cancel(ctx: Any, item: Any) -> None:
    """A cooperative handler: waits on ctx.cancelled, which the shutdown sets."""
    ctx.logger.warning("WAITING deadline=%s", ctx.deadline)
    seen = ctx.cancelled.wait(60)
    ctx.logger.warning("CANCELLED %s remaining=%s", seen, ctx.remaining_s)


def hang(ctx: Any, item: Any) -> None:
    """Logs its pid and its parent's (the thespian admin), then blocks."""
    ctx.logger.warning("HANG pid=%d ppid=%d", os.getpid(), os.getppid())
    time.sleep(120)


def start_children(ctx: Any, item: Any) -> None:
    """Starts children, stores their pids and its own, then overruns its timeout ("timeout":
    a plain child and one in a session of its own) or exits the process ("crash": a plain
    child)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    quiet = subprocess.DEVNULL  # a child left behind must not hold the test's pipes open
    children = [subprocess.Popen(sleeper, stdout=quiet, stderr=quiet)]
    if item == "timeout":
        detached = subprocess.Popen(sleeper, stdout=quiet, stderr=quiet, start_new_session=True)
        children.append(detached)
    ctx.state.set(f"pids-{item}", [os.getpid(), *(child.pid for child in children)])
    if item == "crash":
        os._exit(3)
    time.sleep(120)


def incr_loop(ctx: Any, item: Any) -> Any:
    """300 increments in a tight loop: two workers' loops overlap."""
    last = 0
    for _ in range(300):
        last = ctx.state.incr("total")
    return {"item": item, "last": last, "pid": os.getpid()}


def crash_always(ctx: Any, item: Any) -> None:
    os._exit(3)


def which_pid(ctx: Any, item: Any) -> Any:
    return {"item": item, "pid": os.getpid()}


# -- the apps --------------------------------------------------------------------------


def cpu_app() -> OneStepApp:
    return build("pe-cpu", count_and_burn, list(range(12)), concurrency=2)


def timeout_app() -> OneStepApp:
    return build(
        "pe-timeout", misbehave, ["sleep", "chatty", 1, 2, 3], concurrency=2, timeout_s=0.5
    )


def crash_app() -> OneStepApp:
    return build("pe-crash", misbehave, ["exit", 1, 2, 3, 4, 5], retry=MaxAttempts(2))


def unpicklable_app() -> OneStepApp:
    app = build("pe-pickle", misbehave, ["unpicklable", 1])
    return app


def lock_payload_app() -> OneStepApp:
    return build("pe-payload", misbehave, [threading.Lock(), 7])


def recycle_app() -> OneStepApp:
    return build(
        "pe-recycle", which_pid, list(range(6)), executor=ProcessExecutor(max_messages_per_worker=2)
    )


def emit_app() -> OneStepApp:
    return build("pe-emit", emit_and_state, [1, 2])


def cancel_app() -> OneStepApp:
    return build("pe-cancel", wait_for_cancel, [1], timeout_s=60.0, shutdown_timeout_s=0.5)


def spawn_app() -> OneStepApp:
    executor = ProcessExecutor(start_method="spawn")
    return build("pe-spawn", which_pid, [1, 2, 3], executor=executor, concurrency=2)


def hang_app() -> OneStepApp:
    return build("pe-hang", hang, [1, 2], concurrency=2)


def hang_spawn_app() -> OneStepApp:
    executor = ProcessExecutor(start_method="spawn")
    return build("pe-hang-spawn", hang, [1, 2], executor=executor, concurrency=2)


def children_app() -> OneStepApp:
    return build("pe-children", start_children, ["timeout", "crash"], concurrency=2, timeout_s=1.0)


def crash_loop_app() -> OneStepApp:
    # every message crashes its worker: the app replaces workers until it is stopped
    return build("pe-crash-loop", crash_always, list(range(100_000)), concurrency=2)


def incr_app() -> OneStepApp:
    return build("pe-incr", incr_loop, list(range(8)), concurrency=2)
