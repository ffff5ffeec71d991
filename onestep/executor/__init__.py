"""The process executor: `ProcessExecutor`, the options of `@app.task(executor="process")`,
and the checks that a handler can run in another process, made when the task is registered.

Imported by onestep's app and task modules. The running side is in this package's private
modules, imported only when a task with this executor starts (so onestep imports without
the `thespian` extra): `_pool` (the app's side, the `actors.ExecutorPort`), `_worker` (the
worker process's side), `_channel` (the messages and the direct data channel), `_thespian`
(the only module that imports thespian) and `_watchdog` (killing what was started).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from .._extras import extra_for, missing_extra
from .._values import check_int

if TYPE_CHECKING:
    from actors import ExecutorPort

    from ..core._task import TaskSpec

# "forkserver" is not offered: thespian 4.0.1's actors started through it never answered
# (measured: no reply to the first message within 30 s).
START_METHODS = ("fork", "spawn")


class ProcessExecutor:
    """Run a task's sync handler in worker processes (thespian actors), one per unit of
    `concurrency`: true parallelism for CPU-bound handlers, and a hard `timeout_s` (the
    worker process is killed at the deadline and replaced).

    Args:
        max_messages_per_worker: Replace a worker process after it handled this many
            messages (for libraries that leak); None keeps workers for the whole run.
        start_method: How worker processes start: `"fork"` (the default: fastest, and
            handlers defined in the script run with `python app.py` work) or `"spawn"`
            (a fresh interpreter that imports the handler's module by name).
            One ActorSystem serves the whole app process, so every process-executor task
            of an app uses the same start method.
    """

    def __init__(
        self, *, max_messages_per_worker: int | None = None, start_method: str | None = None
    ) -> None:
        if max_messages_per_worker is not None:
            check_int("max_messages_per_worker", max_messages_per_worker, minimum=1)
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be one of {', '.join(START_METHODS)} or None, "
                f"got {start_method!r}"
            )
        self.max_messages_per_worker = max_messages_per_worker
        self.start_method = start_method or "fork"

    def describe(self) -> dict[str, Any]:
        return {
            "type": "process",
            "max_messages_per_worker": self.max_messages_per_worker,
            "start_method": self.start_method,
        }

    def __repr__(self) -> str:
        return (
            f"ProcessExecutor(max_messages_per_worker={self.max_messages_per_worker!r}, "
            f"start_method={self.start_method!r})"
        )

    def require(self, task: str) -> Any:
        """The module that runs handlers in processes (it imports thespian); MissingExtra
        naming the `thespian` extra and its install command when thespian is missing.
        `onestep check` calls it too, so a missing extra is found before `run`."""
        try:
            return importlib.import_module("onestep.executor._pool")
        except ModuleNotFoundError as exc:
            if extra_for(exc.name) is None:
                raise
            raise missing_extra(f"task {task!r}: executor='process'", exc) from exc

    def bind(self, spec: TaskSpec) -> ExecutorPort:
        """The running side for one task; imports thespian (called as the task starts)."""
        pool = self.require(spec.name)
        executor: ExecutorPort = pool.HandlerPool(spec, self)
        return executor


def executor_option(value: Any) -> ProcessExecutor | None:
    """The `executor=` argument of `@app.task`: None for "thread" (or not given), a
    ProcessExecutor for "process" or a ProcessExecutor; ValueError otherwise."""
    if value is None or value == "thread":
        return None
    if value == "process":
        return ProcessExecutor()
    if isinstance(value, ProcessExecutor):
        return value
    raise ValueError(
        f"executor must be 'thread', 'process' or a ProcessExecutor(...), got {value!r}"
    )


def check_runs_elsewhere(fn: Any, task: str) -> None:
    """Raise TypeError, naming the task and the reason, for a handler that another
    process could not find: an `async def`, a lambda, a function defined inside another
    one, or any callable that is not a module-level function or class method. Called at
    `@app.task` time, when the module is not finished yet: that the module attribute is
    this very function is checked again as the task starts (`check_importable`)."""
    where = f"task {task!r}: executor='process'"
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    ):
        raise TypeError(f"{where} runs sync handlers only; use the default executor for async def")
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise TypeError(
            f"{where} needs a module-level function as its handler, got "
            f"{type(fn).__name__} (a worker process finds the handler by module and name)"
        )
    qualname = getattr(fn, "__qualname__", "")
    if fn.__name__ == "<lambda>":
        raise TypeError(f"{where} cannot run a lambda in another process; use a def")
    if "<locals>" in qualname:
        raise TypeError(
            f"{where} cannot run {qualname}: it is defined inside a function (a closure), "
            "and a worker process finds the handler by module and name; define it at "
            "module level"
        )


def check_importable(fn: Any, task: str) -> None:
    """Raise TypeError unless `module.qualname` leads back to `fn` (a decorator that
    returns a wrapper hides it, say). Called as the task starts."""
    import sys

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    target: Any = module
    for part in getattr(fn, "__qualname__", "").split("."):
        target = getattr(target, part, None)
    if getattr(target, "__func__", target) is not getattr(fn, "__func__", fn):
        raise TypeError(
            f"task {task!r}: executor='process' cannot find the handler as "
            f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')} "
            "(a worker process finds it by module and name): register a module-level "
            "function that keeps its name"
        )
