"""Bad arguments raise at construction or decoration time, and the message names the
parameter (DESIGN §5)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap

import pytest

from onestep import (
    Delivery,
    ExponentialBackoff,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    Sink,
    Source,
)

BAD_ARGUMENT = (TypeError, ValueError)


def names(parameter: str) -> str:
    """A `match` pattern: the parameter name as a whole word."""
    return rf"(?<![\w.]){re.escape(parameter)}(?!\w)"


def handler(ctx, item):
    return item


class IncompleteSource(Source):
    def fetch(self, limit):
        return []

    def ack(self, delivery):
        pass


class SendOnly:
    def publish(self, body, meta=None):
        pass


# -- @app.task ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "30"}, "timeout_s"),
        ({"timeout_s": math.nan}, "timeout_s"),
        ({"retry": 3}, "retry"),
        ({"retry": MaxAttempts}, "retry"),
        ({"emit": 42}, "emit"),
        ({"emit": [MemoryQueue("ok"), "not a sink"]}, "emit[1]"),
        ({"emit": Sink()}, "emit"),
        ({"dead_letter": object()}, "dead_letter"),
        ({"source": IncompleteSource()}, "source"),
        ({"source": "jobs"}, "source"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
    ],
)
def test_task_arguments(kwargs, parameter):
    app = OneStepApp("validation")
    with pytest.raises(BAD_ARGUMENT, match=names(parameter)):
        app.task(**kwargs)(handler)
    assert app.tasks == {}


def test_source_lacking_retry_and_fail_names_them():
    app = OneStepApp("validation")
    with pytest.raises(TypeError, match=r"source .* IncompleteSource lacks retry, fail"):
        app.task(source=IncompleteSource())(handler)


def test_same_sink_twice():
    queue = MemoryQueue("out")
    with pytest.raises(ValueError, match=names("emit")):
        OneStepApp("validation").task(emit=[queue, queue])(handler)


def test_non_callable_handler():
    with pytest.raises(TypeError, match=names("handler")):
        OneStepApp("validation").task(source=MemoryQueue("q"))(42)


@pytest.mark.parametrize(
    "fn",
    [
        lambda ctx: None,
        lambda: None,
        lambda ctx, item, extra: None,
        lambda ctx, item, *, required: None,
    ],
    ids=["one", "none", "three", "required-keyword"],
)
def test_handler_with_the_wrong_arity(fn):
    with pytest.raises(TypeError, match=r"handler .*must accept two arguments \(ctx, item\)"):
        OneStepApp("validation").task()(fn)


@pytest.mark.parametrize(
    "fn",
    [
        lambda ctx, item: None,
        lambda *args: None,
        lambda ctx, item, extra=None: None,
    ],
    ids=["two", "varargs", "optional-third"],
)
def test_handlers_that_accept_two_arguments(fn):
    app = OneStepApp("validation")
    app.task(name="ok")(fn)
    assert list(app.tasks) == ["ok"]


def test_duplicate_task_name():
    app = OneStepApp("validation")
    app.task(source=MemoryQueue("a"))(handler)
    with pytest.raises(ValueError, match=names("name")) as raised:
        app.task(source=MemoryQueue("b"))(handler)
    assert "'handler'" in str(raised.value)
    app.task(source=MemoryQueue("c"), name="second")(handler)
    assert list(app.tasks) == ["handler", "second"]


def test_one_source_feeds_one_task():
    app = OneStepApp("validation")
    shared = MemoryQueue("shared")
    app.task(source=shared, name="first")(handler)
    with pytest.raises(ValueError, match=names("source")):
        app.task(source=shared, name="second")(handler)


def test_ellipsis_is_a_placeholder_for_no_source_and_no_emit():
    app = OneStepApp("validation")
    app.task(source=..., emit=..., dead_letter=..., retry=..., timeout_s=...)(handler)
    spec = app.tasks["handler"]
    assert (spec.source, spec.emit, spec.dead_letter, spec.timeout_s) == (None, (), (), None)


def test_hooks_and_event_handlers_must_be_callable():
    app = OneStepApp("validation")
    with pytest.raises(TypeError, match=names("handler")):
        app.on_event("print")
    with pytest.raises(TypeError, match=names("hook")):
        app.on_startup(None)
    with pytest.raises(TypeError, match=names("hook")):
        app.on_shutdown(3)


# -- OneStepApp --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter"),
    [
        (("",), {}, "name"),
        ((None,), {}, "name"),
        ((42,), {}, "name"),
        (("app",), {"config": [("key", "value")]}, "config"),
        (("app",), {"config": "key=value"}, "config"),
        (("app",), {"state": {}}, "state"),
        (("app",), {"shutdown_timeout_s": -1}, "shutdown_timeout_s"),
        (("app",), {"shutdown_timeout_s": "30"}, "shutdown_timeout_s"),
        (("app",), {"shutdown_timeout_s": True}, "shutdown_timeout_s"),
    ],
)
def test_app_arguments(args, kwargs, parameter):
    with pytest.raises(BAD_ARGUMENT, match=names(parameter)):
        OneStepApp(*args, **kwargs)


def test_app_rejects_nan_shutdown_timeout():
    with pytest.raises(ValueError, match=names("shutdown_timeout_s")):
        OneStepApp("app", shutdown_timeout_s=math.nan)


def test_infinite_shutdown_timeout_waits_for_in_flight_work():
    # In a child process: the bug leaves actors and threads behind.
    script = textwrap.dedent(
        """
        import threading
        from onestep import MemoryQueue, OneStepApp

        app = OneStepApp("inf", shutdown_timeout_s=float("inf"))
        jobs = MemoryQueue("jobs")
        started = threading.Event()

        @app.task(source=jobs)
        def work(ctx, item):
            started.set()
            ctx.app.wait_for_shutdown_request()
            threading.Event().wait(0.5)  # half a second of work left at shutdown
            print("finished", flush=True)

        app.start()
        jobs.put(1)
        assert started.wait(10)
        app.stop()
        print("stopped", flush=True)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "finished\nstopped\n"


# -- retry policies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"delay_s": -1.0}, "delay_s"),
        ({"delay_s": "1"}, "delay_s"),
    ],
)
def test_max_attempts_arguments(kwargs, parameter):
    with pytest.raises(BAD_ARGUMENT, match=names(parameter)):
        MaxAttempts(**kwargs)


def test_max_attempts_zero_positional():
    with pytest.raises(ValueError, match=names("max_attempts")):
        MaxAttempts(0)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"min_delay_s": -1}, "min_delay_s"),
        ({"max_delay_s": -1}, "max_delay_s"),
        ({"min_delay_s": 10, "max_delay_s": 1}, "max_delay_s"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": "2"}, "multiplier"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_exponential_backoff_arguments(kwargs, parameter):
    with pytest.raises(BAD_ARGUMENT, match=names(parameter)):
        ExponentialBackoff(**kwargs)


@pytest.mark.parametrize(
    ("policy", "kwargs", "parameter"),
    [
        (MaxAttempts, {"delay_s": math.nan}, "delay_s"),
        (ExponentialBackoff, {"min_delay_s": math.nan}, "min_delay_s"),
        (ExponentialBackoff, {"multiplier": math.nan}, "multiplier"),
        (ExponentialBackoff, {"jitter": math.nan}, "jitter"),
    ],
)
def test_retry_policies_reject_nan(policy, kwargs, parameter):
    with pytest.raises(ValueError, match=names(parameter)):
        policy(**kwargs)


# -- MemoryQueue and Delivery ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter"),
    [
        (("",), {}, "name"),
        ((3,), {}, "name"),
        (("q",), {"maxsize": -1}, "maxsize"),
        (("q",), {"maxsize": 1.5}, "maxsize"),
    ],
)
def test_memory_queue_arguments(args, kwargs, parameter):
    with pytest.raises(BAD_ARGUMENT, match=names(parameter)):
        MemoryQueue(*args, **kwargs)


@pytest.mark.parametrize("attempts", [-1, 1.0, "0"])
def test_delivery_attempts(attempts):
    with pytest.raises(ValueError, match=names("attempts")):
        Delivery("payload", attempts=attempts)


def test_a_send_only_object_is_a_sink():
    app = OneStepApp("validation")
    app.task(emit=SendOnly())(handler)
    assert len(app.tasks["handler"].emit) == 1
