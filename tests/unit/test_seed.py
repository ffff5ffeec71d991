"""The snippets of the seed page ("核心概念", core concepts), run as written.

Each snippet is embedded verbatim and executed in a namespace holding what the page
uses without defining it (`from onestep import *`, plus `app`, `main_queue`,
`dead_letter_queue`, `source` and `sink` where a snippet needs them). Where the page
writes `source=...` (no source), a second run swaps in a MemoryQueue so that the
handler really runs. Lines about IntervalSource, CronSource, WebhookSource, RabbitMQ
and MySQL belong to the tests of those connectors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from onestep import (
    Delivery,
    InMemoryMetrics,
    InMemoryStateStore,
    MemoryQueue,
    OneStepApp,
    TaskContext,
)
from tests.helpers import running

TIMEOUT_S = 10.0

# -- the snippets, verbatim --------------------------------------------------------------

APP = """\
from onestep import OneStepApp

app = OneStepApp(
    "my-app",                    # 应用名称
    config={"key": "value"},     # 配置
    state=InMemoryStateStore(),  # 状态存储
    shutdown_timeout_s=30.0,     # 关闭超时
)
"""

TASK = """\
@app.task(source=..., emit=...)
async def my_task(ctx, item):
    ...
"""

EVENTS = """\
app.on_event(InMemoryMetrics())
app.on_event(StructuredEventLogger())
"""

HOOKS = """\
@app.on_startup
async def bootstrap(app):
    ...

@app.on_shutdown
async def cleanup(app):
    ...
"""

SOURCE = """\
# 内存队列
source = MemoryQueue("incoming")
"""

CUSTOM_SOURCE = """\
from onestep import Source, Delivery

class MySource(Source):
    async def fetch(self) -> list[Delivery]:
        # 获取消息
        ...
    
    async def ack(self, delivery: Delivery):
        # 确认消息
        ...
"""  # noqa: W293 (on the page, the blank line inside MySource holds four spaces)

SINK = """\
# 内存队列
sink = MemoryQueue("output")
"""

CUSTOM_SINK = """\
from onestep import Sink

class MySink(Sink):
    async def publish(self, body, meta=None):
        # 发布消息
        ...
"""

CONTEXT = """\
@app.task(source=...)
async def my_task(ctx, item):
    # ctx.app - OneStepApp 实例
    # ctx.config - 应用配置
    # ctx.state - 任务状态
    # ctx.current - 当前执行信息
    ...
"""

CONFIG = """\
app = OneStepApp("demo", config={"region": "cn"})


@app.task(source=...)
async def task(ctx, item):
    region = ctx.config["region"]
"""

STATE = """\
@app.task(source=...)
async def task(ctx, item):
    count = await ctx.state.get("count", 0)
    await ctx.state.set("count", count + 1)
"""

BASIC_FLOW = """\
@app.task(source=source, emit=sink)
async def process(ctx, item):
    return {"result": item}  # 返回值发送到 sink
"""

MULTI_STAGE = """\
queue1 = MemoryQueue("stage1")
queue2 = MemoryQueue("stage2")


@app.task(source=MemoryQueue("input"), emit=queue1)
async def stage1(ctx, item):
    return item * 2


@app.task(source=queue1, emit=queue2)
async def stage2(ctx, item):
    return item + 1


@app.task(source=queue2)
async def final(ctx, item):
    print(f"结果:{item}")
"""

RETRY = """\
from onestep import MaxAttempts

@app.task(
    source=...,
    retry=MaxAttempts(max_attempts=3, delay_s=1.0)
)
async def might_fail(ctx, item):
    ...
"""

DEAD_LETTER = """\
@app.task(
    source=main_queue,
    dead_letter=dead_letter_queue
)
async def risky_task(ctx, item):
    ...
"""

TIMEOUT = """\
@app.task(source=..., timeout_s=30.0)
async def long_task(ctx, item):
    ...
"""

DIRECT_RUN = """\
if __name__ == "__main__":
    app.run()
"""

CLI_RUN = """\
onestep run module:app
"""

ASYNC_RUN = """\
import asyncio

async def main():
    await app.serve()

asyncio.run(main())
"""

# -- helpers -----------------------------------------------------------------------------


def run_snippet(snippet: str, namespace: dict[str, Any] | None = None, **names: Any):
    """Exec `snippet` in `namespace` (a new one with `from onestep import *` by default)."""
    if namespace is None:
        namespace = {"__name__": "seed_page"}
        exec("from onestep import *", namespace)
    namespace.update(names)
    exec(compile(snippet, "<seed page>", "exec"), namespace)
    return namespace


def with_source(snippet: str, name: str = "incoming") -> str:
    """The snippet with its `source=...` placeholder replaced by a real source."""
    assert "source=..." in snippet
    return snippet.replace("source=...", f"source={name}")


class Settled:
    """An event handler that sets `done` once `count` deliveries of `task` settled."""

    def __init__(self, task: str, count: int) -> None:
        self.task = task
        self.count = count
        self.settled = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        if event.task != self.task or event.kind not in ("succeeded", "failed", "dead_lettered"):
            return
        with self._lock:
            self.settled += 1
            if self.settled >= self.count:
                self.done.set()


def run_until_settled(app: OneStepApp, task: str, inputs: list[Any], queue: MemoryQueue):
    """Start `app`, put `inputs` on `queue`, wait until `task` settled them all, stop."""
    settled = Settled(task, len(inputs))
    metrics = InMemoryMetrics()
    app.on_event(settled)
    app.on_event(metrics)
    with running(app):
        for item in inputs:
            queue.put(item)
        assert settled.done.wait(TIMEOUT_S), f"{task} settled {settled.settled}/{len(inputs)}"
    return metrics


# -- OneStepApp ---------------------------------------------------------------------------


def test_app():
    app = run_snippet(APP)["app"]
    assert app.name == "my-app"
    assert app.config == {"key": "value"}
    assert isinstance(app.state, InMemoryStateStore)
    assert app.shutdown_timeout_s == 30.0
    with running(app):
        assert app.running
    assert not app.running


def test_task_registration():
    app = OneStepApp("seed")
    namespace = run_snippet(TASK, app=app)
    spec = app.tasks["my_task"]
    assert spec.source is None
    assert spec.emit == ()
    assert spec.is_async
    assert namespace["my_task"] is spec.fn


def test_event_listeners():
    app = OneStepApp("seed")
    run_snippet(EVENTS, app=app)
    assert app.describe()["event_handlers"] == ["InMemoryMetrics", "StructuredEventLogger"]
    incoming = MemoryQueue("incoming")

    @app.task(source=incoming)
    def work(ctx, item):
        return None

    metrics = run_until_settled(app, "work", [1, 2], incoming)
    assert metrics.count("succeeded", task="work") == 2


def test_lifecycle_hooks():
    app = OneStepApp("seed")
    namespace = run_snippet(HOOKS, app=app)
    calls = []
    app.on_startup(lambda app: calls.append("startup"))
    app.on_shutdown(lambda app: calls.append("shutdown"))
    with running(app):
        assert calls == ["startup"]
    assert calls == ["startup", "shutdown"]
    assert callable(namespace["bootstrap"])
    assert callable(namespace["cleanup"])


def test_hooks_are_awaited_in_order():
    """The seed's `async def` hooks: bootstrap runs at start, cleanup at stop."""
    app = OneStepApp("seed")
    order = []

    @app.on_startup
    async def bootstrap(app):
        order.append(("bootstrap", app.name))

    @app.on_shutdown
    async def cleanup(app):
        order.append(("cleanup", app.name))

    with running(app):
        assert order == [("bootstrap", "seed")]
    assert order == [("bootstrap", "seed"), ("cleanup", "seed")]


# -- Source, Sink, Delivery ---------------------------------------------------------------


def test_memory_queue_source_and_sink_with_basic_flow():
    app = OneStepApp("seed")
    namespace = run_snippet(SOURCE, app=app)
    run_snippet(SINK, namespace)
    run_snippet(BASIC_FLOW, namespace)
    source, sink = namespace["source"], namespace["sink"]
    assert (source.name, sink.name) == ("incoming", "output")
    with running(app):
        for item in ["a", "b", "c"]:
            source.put(item)
        results = [sink.get(timeout=TIMEOUT_S) for _ in range(3)]
    assert sorted(r["result"] for r in results) == ["a", "b", "c"]


def test_custom_source_as_written_lacks_retry_and_fail():
    """The page says a custom Source implements ack(), retry() and fail(); the snippet
    shows two of them, so using it as written is refused with the missing names."""
    namespace = run_snippet(CUSTOM_SOURCE)
    app = OneStepApp("seed")
    with pytest.raises(TypeError, match=r"source .*MySource lacks retry, fail"):

        @app.task(source=namespace["MySource"]())
        async def my_task(ctx, item): ...


def test_custom_source_completed_runs():
    """The snippet's MySource, given retry() and fail() and something to fetch: the
    runtime fetches Deliveries, passes delivery.payload as item, then acks."""
    namespace = run_snippet(CUSTOM_SOURCE)
    payloads = []
    acked = []

    class ListSource(namespace["MySource"]):
        def __init__(self, items):
            self.items = list(items)

        async def fetch(self) -> list[Delivery]:
            batch = [Delivery(item) for item in self.items]
            self.items.clear()
            return batch

        async def ack(self, delivery: Delivery):
            await super().ack(delivery)
            acked.append(delivery.payload)

        async def retry(self, delivery, delay_s=None): ...

        async def fail(self, delivery, error=None): ...

    app = OneStepApp("seed")

    @app.task(source=ListSource([{"n": 1}, {"n": 2}]))
    async def my_task(ctx, item):
        payloads.append(item)

    settled = Settled("my_task", 2)
    app.on_event(settled)
    with running(app):
        assert settled.done.wait(TIMEOUT_S)
    assert payloads == [{"n": 1}, {"n": 2}]
    assert acked == [{"n": 1}, {"n": 2}]


def test_custom_sink():
    namespace = run_snippet(CUSTOM_SINK)
    published = []

    class RecordingSink(namespace["MySink"]):
        async def publish(self, body, meta=None):
            await super().publish(body, meta)
            published.append(body)

    app = OneStepApp("seed")
    incoming = MemoryQueue("incoming")

    @app.task(source=incoming, emit=[namespace["MySink"](), RecordingSink()])
    async def produce(ctx, item):
        return item.upper()

    metrics = run_until_settled(app, "produce", ["x", "y"], incoming)
    assert metrics.count("succeeded", task="produce") == 2
    assert sorted(published) == ["X", "Y"]


# -- Task Context -------------------------------------------------------------------------


def test_task_context():
    app = OneStepApp("seed", config={"key": "value"})
    run_snippet(CONTEXT, app=app)
    assert app.tasks["my_task"].source is None
    for name in ("app", "config", "state", "current"):
        assert hasattr(TaskContext, name)

    app = OneStepApp("seed", config={"key": "value"})
    incoming = MemoryQueue("incoming")
    run_snippet(with_source(CONTEXT), app=app, incoming=incoming)
    metrics = run_until_settled(app, "my_task", [1], incoming)
    assert metrics.count("succeeded", task="my_task") == 1


def test_task_context_members():
    """What the snippet's comments promise, seen from inside a handler."""
    app = OneStepApp("seed", config={"key": "value"})
    incoming = MemoryQueue("incoming")
    seen = {}

    @app.task(source=incoming)
    async def my_task(ctx, item):
        seen.update(
            app=ctx.app,
            config=ctx.config,
            count=await ctx.state.get("count", 0),
            payload=ctx.current.payload,
            task=ctx.current.task,
        )

    run_until_settled(app, "my_task", ["hello"], incoming)
    assert seen == {
        "app": app,
        "config": {"key": "value"},
        "count": 0,
        "payload": "hello",
        "task": "my_task",
    }


def test_config_access():
    app = run_snippet(CONFIG)["app"]
    assert app.name == "demo"
    assert list(app.tasks) == ["task"]

    incoming = MemoryQueue("incoming")
    app = run_snippet(with_source(CONFIG), incoming=incoming)["app"]
    metrics = run_until_settled(app, "task", ["item"], incoming)
    assert metrics.count("succeeded", task="task") == 1
    assert metrics.count("failed") == 0


def test_state():
    app = OneStepApp("seed")
    run_snippet(STATE, app=app)
    assert app.tasks["task"].is_async

    app = OneStepApp("seed")
    incoming = MemoryQueue("incoming")
    run_snippet(with_source(STATE), app=app, incoming=incoming)
    run_until_settled(app, "task", ["a", "b", "c"], incoming)
    assert app.state.get("seed:task:count") == 3


# -- message flow ------------------------------------------------------------------------


def test_multi_stage_flow(capsys):
    app = OneStepApp("seed")
    namespace = run_snippet(MULTI_STAGE, app=app)
    assert [spec.name for spec in app.tasks.values()] == ["stage1", "stage2", "final"]
    assert app.tasks["stage1"].emit == (namespace["queue1"],)
    assert app.tasks["stage2"].source is namespace["queue1"]
    assert app.tasks["final"].source is namespace["queue2"]
    inputs = [1, 2, 3, 10]
    metrics = run_until_settled(app, "final", inputs, app.tasks["stage1"].source)
    assert metrics.count("succeeded", task="final") == len(inputs)
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(f"结果:{2 * x + 1}" for x in inputs)


# -- error handling ----------------------------------------------------------------------


def test_retry():
    app = OneStepApp("seed")
    run_snippet(RETRY, app=app)
    task = app.describe()["tasks"][0]
    assert task["name"] == "might_fail"
    assert task["retry"] == {"type": "MaxAttempts", "max_attempts": 3, "delay_s": 1.0}
    assert task["source"] is None


def test_dead_letter():
    app = OneStepApp("seed")
    main_queue, dead_letter_queue = MemoryQueue("main"), MemoryQueue("dead-letters")
    run_snippet(DEAD_LETTER, app=app, main_queue=main_queue, dead_letter_queue=dead_letter_queue)
    spec = app.tasks["risky_task"]
    assert spec.source is main_queue
    assert spec.dead_letter == (dead_letter_queue,)
    metrics = run_until_settled(app, "risky_task", ["ok"], main_queue)
    assert metrics.count("succeeded", task="risky_task") == 1
    assert dead_letter_queue.empty()


def test_dead_letter_receives_a_failing_message():
    """The same declaration with a handler that raises: the message lands in the queue."""
    app = OneStepApp("seed")
    main_queue, dead_letter_queue = MemoryQueue("main"), MemoryQueue("dead-letters")

    @app.task(source=main_queue, dead_letter=dead_letter_queue)
    async def risky_task(ctx, item):
        raise ValueError(f"cannot handle {item}")

    with running(app):
        main_queue.put("bad", {"trace": "t-1"})
        record = dead_letter_queue.get(timeout=TIMEOUT_S)
    assert record["payload"] == "bad"
    assert record["failure"]["kind"] == "error"
    assert record["failure"]["exception_type"] == "ValueError"
    assert record["failure"]["message"] == "cannot handle bad"


def test_timeout():
    app = OneStepApp("seed")
    run_snippet(TIMEOUT, app=app)
    spec = app.tasks["long_task"]
    assert spec.timeout_s == 30.0
    assert spec.is_async


# -- run modes ---------------------------------------------------------------------------


def stopping_app() -> tuple[OneStepApp, MemoryQueue]:
    """An app that handles two messages, publishes them to `done`, then asks to stop."""
    app = OneStepApp("seed-run")
    incoming, done = MemoryQueue("incoming"), MemoryQueue("done")
    incoming.put(1)
    incoming.put(2)

    @app.task(source=incoming, emit=done)
    async def work(ctx, item):
        if await ctx.state.incr("handled") == 2:
            ctx.app.request_shutdown()
        return item * 10

    return app, done


def test_direct_run():
    app, done = stopping_app()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run_snippet(DIRECT_RUN, {"__name__": "__main__", "app": app})
    assert sorted(done.drain()) == [10, 20]
    assert not app.running
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_direct_run_does_nothing_on_import():
    app, done = stopping_app()
    run_snippet(DIRECT_RUN, {"__name__": "module", "app": app})
    assert done.empty()
    assert not app.running


def test_cli_run(tmp_path):
    (tmp_path / "module.py").write_text(
        "from onestep import MemoryQueue, OneStepApp\n"
        "app = OneStepApp('module-app')\n"
        "incoming = MemoryQueue('incoming')\n"
        "@app.on_startup\n"
        "def put(app):\n"
        "    incoming.put('hello')\n"
        "@app.task(source=incoming)\n"
        "def shout(ctx, item):\n"
        "    print(item.upper(), flush=True)\n"
        "    ctx.app.request_shutdown()\n"
    )
    command = CLI_RUN.split()
    assert command[0] == "onestep"
    script = Path(sys.executable).parent / "onestep"
    executable = [str(script)] if script.exists() else [sys.executable, "-m", "onestep"]
    completed = subprocess.run(
        [*executable, *command[1:]],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "HELLO\n"


def test_async_run():
    app, done = stopping_app()
    run_snippet(ASYNC_RUN, app=app)
    assert sorted(done.drain()) == [10, 20]
    assert not app.running
