"""`onestep run TARGET` (one process, or a `--processes N` parent) and the hidden `_worker`
command that parent starts in each worker process."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import click

from .._exit_codes import EXIT_BAD_TARGET
from ..core._logging import configure_logging, quiet_failures
from ..ops import (
    AppMonitor,
    Monitor,
    WorkersMonitor,
)
from ..processes import (
    RUN_DIR_ENV,
    START_TIMEOUT_S,
    ProcessesRefused,
    ProcessSupervisor,
    WorkerLink,
)
from ._common import (
    TARGET_HELP,
    crashed,
    fail,
    load_target,
    log_options,
    no_tasks,
    onestep,
    processes_option,
)

logger = logging.getLogger("onestep.cli")


def _http_option(value: Any) -> tuple[str, int] | None:
    """`--http HOST:PORT` or `--http PORT` (host 127.0.0.1)."""
    if value is None:
        return None
    from ..http import parse_address

    try:
        return parse_address(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


PROCESSES_HELP = (
    "Worker processes to run the app in (an integer, or 'auto' for one per CPU). With more "
    "than 1, a parent that does no task work starts, restarts and stops them."
)


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@log_options
@click.option(
    "--processes",
    metavar="N|auto",
    default="1",
    show_default=True,
    callback=lambda ctx, param, value: processes_option(value),
    help=PROCESSES_HELP,
)
@click.option(
    "--http",
    metavar="HOST:PORT",
    default=None,
    callback=lambda ctx, param, value: _http_option(value),
    help="Serve /metrics (Prometheus), /healthz, /readyz and a status page at / on this "
    "address (a bare PORT listens on 127.0.0.1). Off by default.",
)
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Log one status line per task this often (messages, rate, in flight, retries, "
    "dead letters); 0 turns it off.",
)
@click.option(
    "--quiet-failures",
    is_flag=True,
    expose_value=False,
    callback=quiet_failures,
    help="Log only dead letters and final failures (ERROR), not every retry and timeout.",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=START_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="With --processes: a worker not running its app this long after it started (an "
    "import that hangs) is killed and counted as a death; /healthz answers 503 once no "
    "worker has been running for this long.",
)
def run(
    target: str,
    log_level: str,
    log_format: str,
    processes: int,
    http: tuple[str, int] | None,
    status_interval: float,
    start_timeout: float,
) -> None:
    """Run the app TARGET until SIGINT, SIGTERM or SIGHUP, or until it stops by itself.

    A signal starts a graceful shutdown: sources stop fetching and in-flight work gets
    the app's shutdown_timeout_s to finish. With --processes N every worker drains so.
    """
    if processes > 1:
        _run_processes(
            target, log_level, log_format, processes, http, status_interval, start_timeout
        )
        return
    configure_logging(log_level, log_format)
    app = load_target(target)
    if not app.tasks:
        fail(f"Error: {no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    monitor = None
    if http is not None or status_interval > 0:
        monitor = AppMonitor(app, status_interval_s=status_interval)
    with _operations(monitor, http):
        try:
            app.run()
        except Exception as exc:
            crashed(app, exc)


@contextlib.contextmanager
def _operations(monitor: Monitor | None, http: tuple[str, int] | None) -> Iterator[None]:
    """The HTTP endpoints and the monitor thread (status line) around a run."""
    if monitor is None:
        yield
        return
    if http is None:
        monitor.start()
        try:
            yield
        finally:
            monitor.stop()
        return
    from ..http import HttpServer

    host, port = http
    try:
        server = HttpServer(monitor, host, port)
    except (OSError, ValueError) as exc:  # cannot resolve, cannot bind: a config error
        shown = f"[{host}]" if ":" in host else host
        fail(f"Error: cannot serve --http on {shown}:{port}: {exc}", EXIT_BAD_TARGET)
    try:
        yield
    finally:
        server.stop()


def _run_processes(
    target: str,
    log_level: str,
    log_format: str,
    processes: int,
    http: tuple[str, int] | None = None,
    status_interval: float = 0.0,
    start_timeout: float = START_TIMEOUT_S,
) -> None:
    configure_logging(log_level, log_format, worker="parent")
    app = load_target(target)
    if not app.tasks:
        fail(f"Error: {no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    counting = http is not None or status_interval > 0
    try:
        supervisor = ProcessSupervisor(
            app,
            target,
            processes,
            log_level=log_level.upper(),
            log_format=log_format,
            start_timeout_s=start_timeout,
            snapshots=counting,
        )
    except ProcessesRefused as exc:
        fail(f"Error: {exc}", EXIT_BAD_TARGET)
    monitor = None
    if counting:
        monitor = WorkersMonitor(
            app,
            supervisor.worker_states,
            lambda: supervisor.run_dir,
            lambda: not supervisor.stopping,
            stalled=supervisor.stalled,
            status_interval_s=status_interval,
        )
    with _operations(monitor, http):
        code = supervisor.run()
    if code:
        fail(f"Error: {supervisor.error}", code)


@onestep.command("_worker", hidden=True)
@click.argument("target")
@log_options
@click.option("--index", type=click.IntRange(min=1), required=True)
@click.option("--control-fd", type=click.IntRange(min=0), required=True)
@click.option("--status-fd", type=click.IntRange(min=0), required=True)
@click.option("--snapshots", is_flag=True, help="Write metrics snapshots into ONESTEP_RUN_DIR.")
def worker(
    target: str,
    log_level: str,
    log_format: str,
    index: int,
    control_fd: int,
    status_fd: int,
    snapshots: bool,
) -> None:
    """One worker process of `onestep run --processes N`, started by its parent."""
    link = WorkerLink(index, control_fd, status_fd)  # first: it takes over the signals
    configure_logging(log_level, log_format, worker=link.name)
    prefix = f"worker {link.name}: "
    app = load_target(target, prefix)
    if not app.tasks:
        fail(f"Error: {prefix}{no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    monitor = None
    if snapshots and os.environ.get(RUN_DIR_ENV):
        monitor = AppMonitor(app, snapshot_dir=os.environ[RUN_DIR_ENV], worker=link.name)
    with _operations(monitor, None):
        try:
            link.run(app)
        except Exception as exc:
            crashed(app, exc, prefix)
