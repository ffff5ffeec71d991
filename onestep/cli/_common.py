"""What every `onestep` command shares: the click group, the logging options, loading
the TARGET and the exits for a bad target or a crash. Imported by the command modules."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import click

from .._exit_codes import EXIT_BAD_TARGET, EXIT_CRASHED
from .._extras import MissingExtra
from .._onestep_app import OneStepApp, load_app
from .._version import __version__
from ..core import TargetError
from ..core._logging import LOG_FORMATS, LOG_LEVELS
from ..processes import MAX_PROCESSES, resolve_processes

logger = logging.getLogger("onestep.cli")


TARGET_HELP = "TARGET is module:attr or path/to/file.py[:attr]; attr defaults to 'app'."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onestep", message="%(prog)s %(version)s")
def onestep() -> None:
    """Run onestep apps: tasks that pull from sources and publish to sinks."""


def log_options(command: Any) -> Any:
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


def load_target(target: str, prefix: str = "") -> OneStepApp:
    try:
        return load_app(target)
    except TargetError as exc:
        if exc.__cause__ is not None:
            logger.debug("loading %r failed", target, exc_info=exc.__cause__)
        fail(f"Error: {prefix}{exc}", EXIT_BAD_TARGET)


def missing_extras(app: OneStepApp) -> list[str]:
    """What `run` would miss: a MissingExtra message for each task whose executor needs
    an optional dependency that is not installed (`onestep check` reports them)."""
    problems = []
    for spec in app.tasks.values():
        process = getattr(spec, "process", None)
        if process is None:
            continue
        try:
            process.require(spec.name)
        except MissingExtra as exc:
            problems.append(str(exc))
    return problems


def no_tasks(app: OneStepApp) -> str:
    return f"app {app.name!r} has no tasks (register one with @app.task)"


def missing_dependency(exc: BaseException | None) -> MissingExtra | None:
    """The MissingExtra behind `exc` (itself, or in its chain of causes), if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MissingExtra):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def crashed(app: OneStepApp, exc: Exception, prefix: str = "") -> NoReturn:
    """Exit 1 for a crash; exit 2 when a missing optional dependency is the reason (a
    configuration error: restarting will not fix it)."""
    logger.debug("app %r crashed", app.name, exc_info=exc)
    missing = missing_dependency(exc)
    if missing is not None:
        fail(f"Error: {prefix}app {app.name!r} cannot start: {missing}", EXIT_BAD_TARGET)
    message = " ".join(str(exc).split())
    fail(
        f"Error: {prefix}app {app.name!r} crashed: {type(exc).__name__}: {message}",
        EXIT_CRASHED,
    )


def fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    raise click.exceptions.Exit(code)


def processes_option(value: Any) -> int:
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
