"""`onestep dlq list|replay|discard TARGET --task NAME`: a task's dead letters, through the
same Source and Sink objects as a run."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from .._exit_codes import EXIT_BAD_TARGET, EXIT_CRASHED
from ..ops import (
    DeadLetter,
    DeadLetters,
    NotBrowsable,
    NotReplayable,
)
from ._common import TARGET_HELP, fail, load_target, onestep

logger = logging.getLogger("onestep.cli")


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
        fail(
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
    app = load_target(target)
    try:
        letters = app.dead_letters(task, sink=sink)
    except (ValueError, NotBrowsable) as exc:
        fail(f"Error: {exc}", EXIT_BAD_TARGET)
    if letters.process_local:
        fail(
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
        fail(f"Error: {exc}", EXIT_BAD_TARGET)
    except Exception as exc:
        logger.debug("%s dead letters failed", doing, exc_info=exc)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        fail(
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
