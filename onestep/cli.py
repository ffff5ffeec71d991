"""The `onestep` command: `onestep run TARGET` runs an app, `onestep check TARGET` prints
its task graph. Installed as a console script; `python -m onestep` runs it too.

Commands stay thin: they parse options, call `load_app` and the app, and map errors to
exit codes: 2 for a bad target or option (an app without tasks included), 1 when the
app crashed, 0 after a clean stop.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

import click

from ._app import OneStepApp
from ._loader import TargetError, load_app
from ._logging import LOG_FORMATS, LOG_LEVELS, configure_logging
from ._version import __version__

logger = logging.getLogger("onestep.cli")

EXIT_CRASHED = 1
EXIT_BAD_TARGET = 2

TARGET_HELP = "TARGET is module:attr or path/to/file.py[:attr]; attr defaults to 'app'."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onestep", message="%(prog)s %(version)s")
def onestep() -> None:
    """Run onestep apps: tasks that pull from sources and publish to sinks."""


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Level of the log records written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="'json' writes one JSON object per log record.",
)
def run(target: str, log_level: str, log_format: str) -> None:
    """Run the app TARGET until SIGINT or SIGTERM, or until it stops by itself.

    A signal starts a graceful shutdown: sources stop fetching and in-flight work gets
    the app's shutdown_timeout_s to finish.
    """
    configure_logging(log_level, log_format)
    app = _load(target)
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; nothing to run", EXIT_BAD_TARGET)
    try:
        app.run()
    except Exception as exc:
        _crashed(app, exc)


@onestep.command(epilog=TARGET_HELP)
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the task graph as JSON.")
def check(target: str, as_json: bool) -> None:
    """Load the app TARGET and print its task graph without running it.

    Exits 2 (after printing the graph) if the app has no tasks: `run` would refuse it.
    """
    app = _load(target)
    description = app.describe()
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
    else:
        click.echo(format_graph(description))
    if not app.tasks:
        _fail(f"Error: {_no_tasks(app)}; `onestep run` would refuse it", EXIT_BAD_TARGET)


def main() -> None:
    """Entry point of the `onestep` console script and of `python -m onestep`."""
    onestep()


def _load(target: str) -> OneStepApp:
    try:
        return load_app(target)
    except TargetError as exc:
        if exc.__cause__ is not None:
            logger.debug("loading %r failed", target, exc_info=exc.__cause__)
        _fail(f"Error: {exc}", EXIT_BAD_TARGET)


def _no_tasks(app: OneStepApp) -> str:
    return f"app {app.name!r} has no tasks (register one with @app.task)"


def _crashed(app: OneStepApp, exc: Exception) -> NoReturn:
    logger.debug("app %r crashed", app.name, exc_info=exc)
    message = " ".join(str(exc).split())
    _fail(f"Error: app {app.name!r} crashed: {type(exc).__name__}: {message}", EXIT_CRASHED)


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
