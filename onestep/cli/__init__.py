"""The `onestep` command: `onestep run TARGET` runs an app, `onestep check TARGET` prints
its task graph (`--connect`: and opens every source and sink), `onestep dlq list|replay|
discard TARGET --task NAME` handles a task's dead letters, `onestep graph TARGET` draws
the pipeline (Mermaid, DOT or JSON). Installed as a console
script; `python -m onestep` runs it too.

Commands stay thin: they parse options, call `load_app` and the app (or, for `run
--processes N`, `onestep._processes.ProcessSupervisor`), and map errors to exit codes
(onestep._exit_codes): 2 for a bad target or option (an app without tasks, an `--http`
address that cannot be resolved or bound included), 1 when the app crashed (or an
endpoint failed, for `check --connect` and `dlq`), 0 after a clean stop. The hidden
`_worker` command is what that supervisor starts in each worker process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from .._exit_codes import EXIT_BAD_TARGET, EXIT_CRASHED
from .._onestep_app import OneStepApp, load_app
from .._version import __version__
from ..core import TargetError
from ..core._logging import LOG_FORMATS, LOG_LEVELS, configure_logging
from ..flow import format_limits
from ..ops import (
    GRAPH_FORMATS,
    AppMonitor,
    DeadLetter,
    DeadLetters,
    Monitor,
    NotBrowsable,
    NotReplayable,
    WorkersMonitor,
    check_connections,
    render_graph,
)
from ..processes import (
    MAX_PROCESSES,
    RUN_DIR_ENV,
    START_TIMEOUT_S,
    ProcessesRefused,
    ProcessSupervisor,
    WorkerLink,
    check_processes,
    resolve_processes,
)

logger = logging.getLogger("onestep.cli")

TARGET_HELP = "TARGET is module:attr or path/to/file.py[:attr]; attr defaults to 'app'."


def _processes_option(value: Any) -> int:
    """`--processes`: an integer from 1 to MAX_PROCESSES, or `auto` (one per CPU)."""
    if isinstance(value, int):
        return value
    try:
        return resolve_processes(str(value).strip().lower())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a number of processes: give an integer from 1 to "
            f"{MAX_PROCESSES}, or 'auto' for one per CPU"
        ) from None


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onestep", message="%(prog)s %(version)s")
def onestep() -> None:
    """Run onestep apps: tasks that pull from sources and publish to sinks."""


def _log_options(command: Any) -> Any:
    command = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="'json' writes one JSON object per log record.",
    )(command)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="INFO",
        show_default=True,
        help="Level of the log records written to stderr.",
    )(command)


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@_log_options
@click.option(
    "--processes",
    metavar="N|auto",
    default="1",
    show_default=True,
    callback=lambda ctx, param, value: _processes_option(value),
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
    app = _load(target)
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    monitor = None
    if http is not None or status_interval > 0:
        monitor = AppMonitor(app, status_interval_s=status_interval)
    with _operations(monitor, http):
        try:
            app.run()
        except Exception as exc:
            _crashed(app, exc)


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
        _fail(f"Error: cannot serve --http on {shown}:{port}: {exc}", EXIT_BAD_TARGET)
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
    app = _load(target)
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
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
        _fail(f"Error: {exc}", EXIT_BAD_TARGET)
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
        _fail(f"Error: {supervisor.error}", code)


@onestep.command("_worker", hidden=True)
@click.argument("target")
@_log_options
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
    app = _load(target, prefix)
    if not app.tasks:
        _fail(f"Error: {prefix}{_no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    monitor = None
    if snapshots and os.environ.get(RUN_DIR_ENV):
        monitor = AppMonitor(app, snapshot_dir=os.environ[RUN_DIR_ENV], worker=link.name)
    with _operations(monitor, None):
        try:
            link.run(app)
        except Exception as exc:
            _crashed(app, exc, prefix)


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the task graph as JSON.")
@click.option(
    "--connect",
    is_flag=True,
    help="Also open and close every source and sink as a run would (connect, declare "
    "queues, create tables, bind webhook ports) and print one line per endpoint.",
)
@click.option(
    "--processes",
    metavar="N|auto",
    default="1",
    show_default=True,
    callback=lambda ctx, param, value: _processes_option(value),
    help="Also say what running in N worker processes means for this app "
    "(and refuse it as `onestep run --processes N` would).",
)
def check(target: str, as_json: bool, connect: bool, processes: int) -> None:
    """Load the app TARGET and print its task graph without running it.

    Exits 2 (after printing the graph) if the app has no tasks, or if it cannot run in
    --processes N processes: `run` would refuse it. With --connect, exits 1 if any source
    or sink failed to open.
    """
    app = _load(target)
    description = app.describe()
    refused: str | None = None
    if processes > 1:
        try:
            notes = check_processes(app, processes)
        except ProcessesRefused as exc:
            notes, refused = [], str(exc)
        description["processes"] = {"workers": processes, "notes": notes}
    checks = check_connections(app) if connect and app.tasks else None
    if as_json:
        if checks is not None:
            description["connections"] = [item.as_dict() for item in checks]
        click.echo(json.dumps(description, indent=2, default=str))
    else:
        click.echo(format_graph(description))
        if checks is not None:
            click.echo("")
            for item in checks:
                click.echo(item.line())
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; `onestep run` would refuse it", EXIT_BAD_TARGET)
    if refused is not None:
        _fail(f"Error: {refused}", EXIT_BAD_TARGET)
    if checks is not None and not all(item.ok for item in checks):
        failed = sum(not item.ok for item in checks)
        _fail(f"Error: {failed} of {len(checks)} endpoint(s) failed to open", EXIT_CRASHED)


# -- dead letters ------------------------------------------------------------------------


@onestep.group(epilog=TARGET_HELP)
def dlq() -> None:
    """List, replay or discard the dead letters of a task of the app TARGET.

    They are read where the task's dead_letter sink keeps them (a RabbitMQ queue, a
    MySQL table queue) with the app's own queue objects; the app need not run.
    """


def _dlq_options(fn: Any) -> Any:
    fn = click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=None,
        help="Only the first N dead letters (oldest first); default: all.",
    )(fn)
    fn = click.option(
        "--sink", default=None, help="The dead_letter sink's name, when the task has several."
    )(fn)
    fn = click.option("--task", required=True, help="The task whose dead letters to handle.")(fn)
    return click.argument("target")(fn)


@dlq.command("list", epilog=TARGET_HELP)
@_dlq_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
def dlq_list(target: str, task: str, sink: str | None, limit: int | None, as_json: bool) -> None:
    """Print the dead letters of a task (id, payload, failure, original meta) without
    consuming any."""
    letters = _dead_letters(target, task, sink)
    found = _dlq_call(letters, "listing", lambda: letters.list(limit))
    if as_json:
        click.echo(json.dumps([letter.as_dict() for letter in found], indent=2, default=repr))
        return
    click.echo(f"{len(found)} dead letter(s) of task {task!r} in {letters.sink_name!r}")
    for letter in found:
        click.echo(format_dead_letter(letter))


@dlq.command("replay", epilog=TARGET_HELP)
@_dlq_options
@click.option(
    "--keep-attempts",
    is_flag=True,
    help="Keep each message's attempt count (default: it starts from 0 again).",
)
def dlq_replay(
    target: str, task: str, sink: str | None, limit: int | None, keep_attempts: bool
) -> None:
    """Put dead letters back on the task's source with their original meta; each is
    removed only after the source accepted it."""
    letters = _dead_letters(target, task, sink)
    if letters.process_local_source:
        _fail(
            f"Error: task {task!r} reads from {letters.source_name!r}, an in-memory queue of "
            "the process that runs the app: replaying into it from this command would put "
            "the messages into this command's own memory and lose them; call "
            f"app.dead_letters({task!r}).replay() inside the app's process",
            EXIT_BAD_TARGET,
        )
    count = _dlq_call(
        letters, "replaying", lambda: letters.replay(limit, keep_attempts=keep_attempts)
    )
    click.echo(
        f"replayed {count} dead letter(s) of task {task!r} from {letters.sink_name!r} "
        f"to {letters.source_name!r}"
    )


@dlq.command("discard", epilog=TARGET_HELP)
@_dlq_options
def dlq_discard(target: str, task: str, sink: str | None, limit: int | None) -> None:
    """Delete dead letters of a task for good."""
    letters = _dead_letters(target, task, sink)
    count = _dlq_call(letters, "discarding", lambda: letters.discard(limit))
    click.echo(f"discarded {count} dead letter(s) of task {task!r} from {letters.sink_name!r}")


def _dead_letters(target: str, task: str, sink: str | None) -> DeadLetters:
    """The task's DeadLetters, or exit 2 saying why there are none to handle here."""
    app = _load(target)
    try:
        letters = app.dead_letters(task, sink=sink)
    except (ValueError, NotBrowsable) as exc:
        _fail(f"Error: {exc}", EXIT_BAD_TARGET)
    if letters.process_local:
        _fail(
            f"Error: the dead_letter sink {letters.sink_name!r} of task {task!r} is a "
            f"{type(letters.sink).__name__}: it lives in the memory of the process that "
            "runs the app, so from this command (another process) it is always empty; "
            f"use app.dead_letters({task!r}) inside that process, or a RabbitMQ queue or "
            "a MySQL table queue as dead_letter",
            EXIT_BAD_TARGET,
        )
    return letters


def _dlq_call(letters: DeadLetters, doing: str, call: Any) -> Any:
    try:
        return call()
    except (NotBrowsable, NotReplayable) as exc:
        _fail(f"Error: {exc}", EXIT_BAD_TARGET)
    except Exception as exc:
        logger.debug("%s dead letters failed", doing, exc_info=exc)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        _fail(
            f"Error: {doing} the dead letters of task {letters.task!r} in "
            f"{letters.sink_name!r} failed: {message}",
            EXIT_CRASHED,
        )


def format_dead_letter(letter: DeadLetter) -> str:
    """One dead letter as text: its id and failure, then its payload and original meta."""
    failure = letter.failure
    return "\n".join(
        [
            f"- id {letter.id}: {failure.get('kind', '?')} {failure.get('exception_type', '?')}: "
            f"{failure.get('message', '')} (after {letter.attempts} execution(s))",
            f"    payload {_compact(letter.payload)}",
            f"    meta    {_compact(letter.meta)}",
        ]
    )


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except ValueError:  # a circular structure (only possible in-process)
        return repr(value)


def main() -> None:
    """Entry point of the `onestep` console script and of `python -m onestep`."""
    onestep()


def _load(target: str, prefix: str = "") -> OneStepApp:
    try:
        return load_app(target)
    except TargetError as exc:
        if exc.__cause__ is not None:
            logger.debug("loading %r failed", target, exc_info=exc.__cause__)
        _fail(f"Error: {prefix}{exc}", EXIT_BAD_TARGET)


def _no_tasks(app: OneStepApp) -> str:
    return f"app {app.name!r} has no tasks (register one with @app.task)"


def _crashed(app: OneStepApp, exc: Exception, prefix: str = "") -> NoReturn:
    logger.debug("app %r crashed", app.name, exc_info=exc)
    message = " ".join(str(exc).split())
    _fail(
        f"Error: {prefix}app {app.name!r} crashed: {type(exc).__name__}: {message}",
        EXIT_CRASHED,
    )


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    raise click.exceptions.Exit(code)


# -- the text form of `check` ----------------------------------------------------------


def format_graph(description: dict[str, Any]) -> str:
    """The `app.describe()` dict as text: the app, then one block per task."""
    tasks = description.get("tasks", [])
    lines = [
        f"app {description.get('app')!r}: {len(tasks)} task(s), "
        f"state {description.get('state')}, "
        f"shutdown timeout {description.get('shutdown_timeout_s')}s",
    ]
    handlers = description.get("event_handlers") or []
    lines.append(f"event handlers: {', '.join(handlers) if handlers else 'none'}")
    for task in tasks:
        lines.append("")
        lines.extend(_task_lines(task))
    processes = description.get("processes")
    if processes:
        lines.append("")
        lines.append(f"in {processes['workers']} worker processes (each runs every task):")
        notes = processes.get("notes") or ["nothing to note"]
        lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


def _task_lines(task: dict[str, Any]) -> list[str]:
    kind = "async" if task.get("async") else "sync"
    timeout = task.get("timeout_s")
    fields = [
        ("handler", str(task.get("handler"))),
        ("source", _endpoint(task.get("source")) if task.get("source") else "none"),
        ("emit", _endpoints(task.get("emit"))),
        ("dead letter", _endpoints(task.get("dead_letter"))),
        ("retry", _policy(task.get("retry"))),
        ("timeout", "none" if timeout is None else f"{timeout}s"),
        ("concurrency", str(task.get("concurrency"))),
    ]
    if task.get("limits"):
        fields.append(("limits", format_limits(task["limits"])))
    width = max(len(label) for label, _ in fields)
    return [
        f"task {task.get('name')!r} ({kind})",
        *(f"  {label.ljust(width)}  {value}" for label, value in fields),
    ]


def _endpoints(items: Any) -> str:
    if not items:
        return "none"
    return ", ".join(_endpoint(item) for item in items)


def _endpoint(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info)
    text = str(info.get("type", "?"))
    if info.get("name"):
        text += f" {info['name']!r}"
    extra = {k: v for k, v in info.items() if k not in ("type", "name") and v is not None}
    if extra:
        text += f" ({', '.join(f'{k}={v}' for k, v in extra.items())})"
    return text


def _policy(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info)
    args = ", ".join(f"{k}={v}" for k, v in info.items() if k != "type")
    return f"{info.get('type', '?')}({args})"


# -- onestep graph -----------------------------------------------------------------------


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(GRAPH_FORMATS),
    default="mermaid",
    show_default=True,
    help="mermaid: a flowchart for Markdown; dot: a Graphviz digraph; json: nodes and edges.",
)
def graph(target: str, fmt: str) -> None:
    """Load the app TARGET and print its pipeline as a picture to render: sources, tasks
    and sinks as nodes, messages as arrows, dead letters as dashed arrows.

    Exits 2 (printing nothing) if the app has no tasks.
    """
    app = _load(target)
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; there is no pipeline to draw", EXIT_BAD_TARGET)
    click.echo(render_graph(app.describe(), fmt))
