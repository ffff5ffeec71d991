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
    CronSource,
    Delivery,
    ExponentialBackoff,
    IntervalSource,
    MaxAttempts,
    MemoryQueue,
    OneStepApp,
    Sink,
    Source,
    SQLiteStateStore,
)
from onestep._values import MAX_DELAY_S
from onestep.core._task import MAX_CONCURRENCY

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


# -- delays and timeouts: at most 30 days where they are given (issue 13) ---------------

TOO_LONG = 1e10  # past threading.TIMEOUT_MAX: it killed the timer thread


async def async_handler(ctx, item):
    return item


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda v: OneStepApp("v").task(timeout_s=v)(handler), "timeout_s"),
        (lambda v: OneStepApp("v").task(timeout_s=v)(async_handler), "timeout_s"),
        (lambda v: MaxAttempts(2, delay_s=v), "delay_s"),
        (lambda v: ExponentialBackoff(min_delay_s=v, max_delay_s=v), "min_delay_s"),
        (lambda v: ExponentialBackoff(max_delay_s=v), "max_delay_s"),
        (lambda v: OneStepApp("v", shutdown_timeout_s=v), "shutdown_timeout_s"),
        (lambda v: OneStepApp("v", restart_window_s=v), "restart_window_s"),
        (lambda v: SQLiteStateStore("state.db", timeout_s=v), "timeout_s"),
    ],
    ids=[
        "timeout_s",
        "async-timeout_s",
        "MaxAttempts.delay_s",
        "ExponentialBackoff.min_delay_s",
        "ExponentialBackoff.max_delay_s",
        "shutdown_timeout_s",
        "restart_window_s",
        "SQLiteStateStore.timeout_s",
    ],
)
@pytest.mark.parametrize("value", [TOO_LONG, MAX_DELAY_S + 1], ids=["1e10", "30-days-plus-1s"])
def test_a_delay_longer_than_30_days_is_refused_naming_the_parameter(build, parameter, value):
    with pytest.raises(ValueError, match=names(parameter)) as raised:
        build(value)
    assert "30 days" in str(raised.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda v: OneStepApp("v").task(timeout_s=v)(handler),
        lambda v: MaxAttempts(2, delay_s=v),
        lambda v: ExponentialBackoff(min_delay_s=v, max_delay_s=v),
        lambda v: OneStepApp("v", shutdown_timeout_s=v),
        lambda v: OneStepApp("v", restart_window_s=v),
    ],
)
def test_a_delay_of_exactly_30_days_is_accepted(build):
    build(MAX_DELAY_S)


def test_an_infinite_shutdown_timeout_is_still_accepted():
    assert OneStepApp("v", shutdown_timeout_s=math.inf).shutdown_timeout_s == math.inf


@pytest.mark.parametrize(
    "kwargs",
    [{"days": 31}, {"days": TOO_LONG}, {"days": 30, "seconds": 1}, {"seconds": TOO_LONG}],
)
def test_an_interval_longer_than_30_days_is_refused(kwargs):
    with pytest.raises(ValueError, match=r"interval must be at most 30 days .*CronSource"):
        IntervalSource.every(**kwargs)


def test_an_interval_timedelta_longer_than_30_days_is_refused():
    from datetime import timedelta

    with pytest.raises(ValueError, match=r"interval must be at most 30 days"):
        IntervalSource(timedelta(days=30, microseconds=1))
    assert IntervalSource(timedelta(days=30)).interval == timedelta(days=30)


# -- cron expressions that never fire ----------------------------------------------------


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 12 31 4,6,9,11 *"])
def test_a_cron_expression_matching_no_date_is_refused_naming_it(expression):
    with pytest.raises(ValueError, match="matches no date") as raised:
        CronSource(expression)
    assert repr(expression) in str(raised.value)


@pytest.mark.parametrize("expression", ["0 0 29 2 *", "0 0 31 * *", "@yearly", "*/5 * * * * 30"])
def test_rare_but_real_cron_dates_are_accepted(expression):
    assert CronSource(expression).expression == expression


# -- concurrency: bounded per executor ---------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "executor", "units"),
    [(handler, "thread", "one thread per unit"), (async_handler, "async", "one coroutine")],
    ids=["sync", "async"],
)
def test_concurrency_above_the_executor_cap_is_refused_naming_the_cap(fn, executor, units):
    cap = MAX_CONCURRENCY[executor]
    app = OneStepApp("caps")
    with pytest.raises(ValueError, match=names("concurrency")) as raised:
        app.task(source=MemoryQueue("over"), concurrency=cap + 1)(fn)
    message = str(raised.value)
    assert f"at most {cap:,}" in message
    assert units in message
    assert str(cap + 1) in message
    with pytest.raises(ValueError, match=f"at most {cap:,}"):
        app.task(source=MemoryQueue("huge"), concurrency=10**6)(fn)
    app.task(source=MemoryQueue("at-cap"), concurrency=cap)(fn)
    assert app.tasks[fn.__name__].concurrency == cap


def test_the_caps_are_a_thousand_threads_ten_thousand_coroutines_and_64_processes():
    assert MAX_CONCURRENCY == {"thread": 1000, "async": 10_000, "process": 64}


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
