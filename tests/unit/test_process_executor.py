"""`executor="process"` without starting processes: the options, and handlers that cannot
run in another process refused at registration (or at start) with the task and the reason.
The runs themselves are in tests/faults/test_process_executor_faults.py."""

from __future__ import annotations

import functools
import sys

import pytest

from actors import Failure
from actors._failure import NOT_RETRIED
from onestep import (
    ExponentialBackoff,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    ProcessExecutor,
    StartupError,
)


def module_level(ctx, item):
    return item


def test_process_executor_is_described_and_the_thread_executor_stays_the_default():
    app = OneStepApp("pe")
    app.task(source=MemoryQueue("a"), name="threaded")(module_level)
    app.task(source=MemoryQueue("b"), name="processed", executor="process")(module_level)
    executor = ProcessExecutor(max_messages_per_worker=5, start_method="spawn")
    app.task(source=MemoryQueue("c"), name="options", executor=executor)(module_level)
    tasks = {task["name"]: task for task in app.describe()["tasks"]}
    assert tasks["threaded"]["executor"] == "thread"
    assert tasks["processed"]["executor"] == {
        "type": "process",
        "max_messages_per_worker": None,
        "start_method": "fork",
    }
    assert tasks["options"]["executor"]["max_messages_per_worker"] == 5
    assert tasks["options"]["executor"]["start_method"] == "spawn"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_messages_per_worker": 0}, "max_messages_per_worker"),
        ({"max_messages_per_worker": 1.5}, "max_messages_per_worker"),
        ({"start_method": "clone"}, "start_method"),
    ],
)
def test_bad_process_executor_options_are_refused_naming_them(kwargs, param):
    with pytest.raises((TypeError, ValueError), match=param):
        ProcessExecutor(**kwargs)


def test_an_unknown_executor_is_refused():
    app = OneStepApp("pe")
    with pytest.raises(ValueError, match="executor must be 'thread', 'process'"):
        app.task(source=MemoryQueue("a"), executor="greenlet")(module_level)


def test_process_concurrency_is_capped():
    app = OneStepApp("pe")
    with pytest.raises(ValueError, match=r"at most 64 for executor='process'"):
        app.task(source=MemoryQueue("a"), executor="process", concurrency=65)(module_level)


def _closure_factory():
    def inner(ctx, item):
        return item

    return inner


async def async_handler(ctx, item):
    return item


class CallableObject:
    def __call__(self, ctx, item):
        return item


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (lambda ctx, item: item, "cannot run a lambda"),
        (_closure_factory(), "defined inside a function"),
        (async_handler, "runs sync handlers only"),
        (CallableObject(), "needs a module-level function"),
    ],
    ids=["lambda", "closure", "async", "callable-object"],
)
def test_a_handler_another_process_cannot_run_is_refused_at_registration(handler, reason):
    app = OneStepApp("pe")
    with pytest.raises(TypeError, match=reason) as raised:
        app.task(source=MemoryQueue("a"), name="job", executor="process")(handler)
    assert "task 'job'" in str(raised.value)
    assert app.tasks == {}


def wrapped(ctx, item):
    return item


@functools.wraps(wrapped)
def _wrapper(ctx, item):
    return wrapped(ctx, item)


def test_a_handler_not_found_by_its_module_and_name_fails_the_start_naming_the_task():
    # _wrapper claims the name `wrapped`, but test_process_executor.wrapped is another
    # function: a worker process would run that one
    app = OneStepApp("pe")
    app.task(source=MemoryQueue("a"), name="job", executor="process")(_wrapper)
    with pytest.raises(StartupError, match=r"task 'job'.*cannot find the handler"):
        app.start()


def test_without_thespian_the_start_names_the_extra(monkeypatch):
    for module in ("_pool", "_thespian"):
        monkeypatch.delitem(sys.modules, f"onestep.executor.{module}", raising=False)
    monkeypatch.setitem(sys.modules, "thespian.actors", None)
    monkeypatch.setitem(sys.modules, "thespian", None)
    app = OneStepApp("pe")
    app.task(source=MemoryQueue("a"), name="job", executor="process")(module_level)
    with pytest.raises(ImportError, match=r"task 'job'.*'thespian' extra\): pip install"):
        app.start()


@pytest.mark.parametrize("policy", [MaxAttempts(3), ExponentialBackoff(3, 0.1, 1.0)])
def test_a_crashed_worker_is_retried_like_an_error(policy):
    crashed = Failure("crashed", "WorkerCrashed", "the worker process died", "")
    assert "crashed" not in NOT_RETRIED
    assert policy.next_delay(1, crashed) is not None
    assert policy.next_delay(3, crashed) is None


class RecordingLink:
    """Stands in for a worker's channel to the app: records each forwarded call."""

    def __init__(self, value):
        self.calls = []
        self.value = value

    def call(self, op, *args):
        self.calls.append((op, args))
        return self.value


def test_one_ctx_state_incr_in_a_worker_is_one_call_run_by_the_apps_store():
    """`ctx.state.incr` in a worker process forwards one `state.incr` to the app's process
    (never a get then a set, which two workers would interleave), and the app's side runs
    it as one `incr` on the task's state."""
    import pickle

    from onestep.executor._channel import Call
    from onestep.executor._handler_side import StateProxy
    from onestep.executor._pool import HandlerPool

    link = RecordingLink(7)
    assert StateProxy(link).incr("hits", 3) == 7
    assert link.calls == [("state.incr", ("hits", 3))]

    app = OneStepApp("pe")
    app.task(source=MemoryQueue("a"), name="job", executor="process")(module_level)
    pool = HandlerPool(app.tasks["job"], ProcessExecutor())
    for expected in (3, 6):
        reply = pool.serve(Call(1, "state.incr", pickle.dumps(("hits", 3))))
        assert (reply.value, reply.error) == (expected, None)
    assert app.state.get("pe:job:hits") == 6
