"""The core app and the named interface its extensions use (onestep.core: AppCore,
AppInternals), and what the public OneStepApp adds to the core."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from onestep import MemoryQueue, OneStepApp, ProcessExecutor
from onestep.core import AppCore
from tests.helpers import running


def _app_with_a_task(name: str = "internals") -> tuple[OneStepApp, MemoryQueue]:
    app = OneStepApp(name)
    source = MemoryQueue("in")

    @app.task(source=source)
    def work(ctx: Any, item: Any) -> None:
        pass

    return app, source


def test_the_core_runs_threads_only_and_the_public_app_adds_processes() -> None:
    core = AppCore("core")
    with pytest.raises(ValueError, match="executor must be 'thread', got 'process'"):
        core.task(source=MemoryQueue("q"), executor="process")(_module_level_handler)
    public = OneStepApp("public")
    public.task(source=MemoryQueue("q"), executor="process")(_module_level_handler)
    assert isinstance(public.tasks["_module_level_handler"].process, ProcessExecutor)
    assert not hasattr(core, "dead_letters") and not hasattr(core, "serve_http")


def _module_level_handler(ctx: Any, item: Any) -> None:
    pass


def test_stats_are_made_once_and_refused_while_running_without_them() -> None:
    app, _ = _app_with_a_task()
    with running(app):
        assert app.internals.system is not None
        with pytest.raises(RuntimeError, match="cannot turn metrics on while app"):
            app.internals.enable_stats()
    assert app.internals.system is None
    stats = app.internals.enable_stats()
    assert app.internals.enable_stats() is stats


def test_an_http_url_is_cleared_only_by_the_server_that_set_it() -> None:
    app, _ = _app_with_a_task()
    app.internals.set_http_url("http://127.0.0.1:1/")
    app.internals.set_http_url("http://127.0.0.1:2/")
    app.internals.clear_http_url("http://127.0.0.1:1/")
    assert app.http_url == "http://127.0.0.1:2/"
    app.internals.clear_http_url("http://127.0.0.1:2/")
    assert app.http_url is None


def test_an_event_tap_sees_every_record_until_removed() -> None:
    app, source = _app_with_a_task()
    seen: list[str] = []
    done = threading.Event()

    def tap(record: Any) -> None:
        seen.append(record[0])
        if record[0] == "succeeded":
            done.set()

    app.internals.add_event_tap(tap)
    source.put(1)
    with running(app):
        assert done.wait(10)
    assert "succeeded" in seen
    assert app.describe()["event_handlers"] == []  # a tap is no event handler
    app.internals.remove_event_tap(tap)
    with pytest.raises(ValueError):
        app.internals.remove_event_tap(tap)


def test_shutdown_callbacks_and_clearing_a_served_request() -> None:
    app, _ = _app_with_a_task()
    calls: list[str] = []

    def callback() -> None:
        calls.append("called")

    app.internals.add_shutdown_callback(callback)
    app.request_shutdown()
    app.request_shutdown()  # idempotent: one call
    assert calls == ["called"]
    assert app.wait_for_shutdown_request(0)
    app.internals.clear_shutdown_request()
    assert not app.wait_for_shutdown_request(0)
    app.internals.remove_shutdown_callback(callback)
    app.internals.remove_shutdown_callback(callback)  # unknown: nothing happens
    app.request_shutdown()
    assert calls == ["called"]


def test_run_in_this_process_calls_on_started_once_started() -> None:
    app, _ = _app_with_a_task()
    started: list[bool] = []

    def on_started() -> None:
        started.append(app.running)
        app.request_shutdown()

    worker = threading.Thread(target=app.internals.run_in_this_process, args=(on_started,))
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert started == [True]
    assert not app.running
