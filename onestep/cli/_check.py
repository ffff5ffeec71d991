"""`onestep check TARGET` (the task graph as text or JSON; `--connect` opens every endpoint)
and `onestep graph TARGET` (Mermaid, DOT or JSON)."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from .._exit_codes import EXIT_BAD_TARGET, EXIT_CRASHED
from ..flow import format_limits
from ..ops import (
    GRAPH_FORMATS,
    check_connections,
    render_graph,
)
from ..processes import (
    ProcessesRefused,
    check_processes,
)
from ._common import (
    TARGET_HELP,
    fail,
    load_target,
    missing_extras,
    no_tasks,
    onestep,
    processes_option,
)

logger = logging.getLogger("onestep.cli")


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
    callback=lambda ctx, param, value: processes_option(value),
    help="Also say what running in N worker processes means for this app "
    "(and refuse it as `onestep run --processes N` would).",
)
def check(target: str, as_json: bool, connect: bool, processes: int) -> None:
    """Load the app TARGET and print its task graph without running it.

    Exits 2 (after printing the graph) if the app has no tasks, or if it cannot run in
    --processes N processes: `run` would refuse it. With --connect, exits 1 if any source
    or sink failed to open.
    """
    app = load_target(target)
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
        fail(f"Error: {no_tasks(app)}; `onestep run` would refuse it", EXIT_BAD_TARGET)
    if refused is not None:
        fail(f"Error: {refused}", EXIT_BAD_TARGET)
    missing = missing_extras(app)
    if missing:
        fail("\n".join(f"Error: {problem}" for problem in missing), EXIT_BAD_TARGET)
    if checks is not None and not all(item.ok for item in checks):
        failed = sum(not item.ok for item in checks)
        fail(f"Error: {failed} of {len(checks)} endpoint(s) failed to open", EXIT_CRASHED)


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
    app = load_target(target)
    if not app.tasks:
        fail(f"Error: {no_tasks(app)}; there is no pipeline to draw", EXIT_BAD_TARGET)
    click.echo(render_graph(app.describe(), fmt))
