"""The read-only HTML status page served at `GET /` (onestep.http): the app, the pipeline
drawn as an SVG (onestep.ops._graph_svg), each task with its source, sinks, concurrency,
counts, rate and health. No script, no outside asset; every value is escaped; the page
reloads itself with a meta refresh."""

from __future__ import annotations

from html import escape
from typing import Any

from ..flow import format_limits
from ._graph_svg import render_pipeline_svg
from ._sparkline import RateHistory

#: Seconds between the page's reloads.
REFRESH_S = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.status { display: inline-block; padding: .1em .6em; border-radius: .3em; color: #fff; }
.ok { background: #2e7d32; } .degraded { background: #ef6c00; }
.failed, .stopped { background: #c62828; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
#graph { margin: 1em 0 0; overflow-x: auto; }
#graph svg { max-width: 100%; height: auto; }
#graph figcaption { color: #666; font-size: .85em; }
"""


def render_status_page(
    snapshot: dict[str, Any],
    description: dict[str, Any],
    rates: dict[str, float],
    history: RateHistory | None = None,
) -> str:
    """The page for a monitor's snapshot, the app's describe(), the tasks' rates and the
    monitor's rate history (the sparklines)."""
    health = snapshot["health"]
    status = str(health.get("status", "?"))
    app = escape(str(snapshot["app"]))
    described = {task["name"]: task for task in description.get("tasks", [])}
    rows = [
        _task_row(name, task, described.get(name, {}), rates.get(name))
        for name, task in snapshot["tasks"].items()
    ]
    problems = health.get("problems") or {}
    problem_items = "".join(
        f"<li><b>{escape(str(part))}</b>: {escape(str(error))}</li>"
        for part, error in problems.items()
    )
    sources = "".join(
        f"<tr><td>{escape(str(name))}</td><td>{'up' if source['up'] else 'down'}</td>"
        f"<td class=n>{'-' if source.get('depth') is None else int(source['depth'])}</td></tr>"
        for name, source in snapshot["sources"].items()
    )
    graph = render_pipeline_svg(description, snapshot, rates, history)
    figure = f'<figure id="graph">{graph}\n<figcaption>{_LEGEND}</figcaption></figure>'
    workers = health.get("workers")
    worker_note = f" &middot; {int(workers)} worker processes" if workers else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>onestep: {app}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>App <span id="app">{app}</span></h1>
<p>Health: <span id="health" class="status {escape(status)}">{escape(status)}</span>{worker_note}
&middot; ready: <span id="ready">{"yes" if snapshot.get("ready") else "no"}</span>
&middot; reloads every {REFRESH_S} s</p>
{f'<ul id="problems">{problem_items}</ul>' if problem_items else ""}
{figure if graph else ""}
<table id="tasks">
<thead><tr><th>Task</th><th>Source</th><th>Sinks</th><th>Concurrency</th><th>Succeeded</th>
<th>Failed</th><th>Retried</th><th>Dead letters</th><th>Rate (1 min)</th><th>In flight</th>
</tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
{_limits_table(snapshot, described)}
<table id="sources">
<thead><tr><th>Source</th><th>State</th><th>Depth</th></tr></thead>
<tbody>{sources}</tbody>
</table>
</body>
</html>
"""


_LEGEND = (
    "Arrows: messages; dashed red: dead letters. Each task: its rate over the last minute, "
    "messages in flight, failures (messages given up on), retries, and its rate over the "
    "last 15 minutes."
)


def _task_row(
    name: str, task: dict[str, Any], described: dict[str, Any], rate: float | None
) -> str:
    counts = task["counts"]
    # a task whose only sink is its dead-letter queue still shows where messages go
    sinks = [_endpoint(sink) for sink in described.get("emit") or []]
    sinks += [f"{_endpoint(sink)} (dead letters)" for sink in described.get("dead_letter") or []]
    shown = ", ".join(sinks) or "-"
    source = _endpoint(described["source"]) if described.get("source") else "-"
    cells = [
        f'<td class="task">{escape(name)}</td>',
        f"<td>{escape(source)}</td>",
        f"<td>{escape(shown)}</td>",
        f"<td class=n>{escape(str(described.get('concurrency', '-')))}</td>",
        *(
            f"<td class=n>{int(counts[k])}</td>"
            for k in ("succeeded", "failed", "retried", "dead_lettered")
        ),
        f"<td class=n>{'-' if rate is None else f'{rate:.1f}/s'}</td>",
        f"<td class=n>{int(task['inflight'])}</td>",
    ]
    return f'<tr data-task="{escape(name)}">{"".join(cells)}</tr>\n'


def _limits_table(snapshot: dict[str, Any], described: dict[str, Any]) -> str:
    """The tasks with flow control: their limits, messages skipped as duplicates, and
    the seconds messages waited for tokens and per-key slots (empty without any)."""
    rows = []
    for name, task in snapshot["tasks"].items():
        limits = described.get(name, {}).get("limits")
        if not limits:
            continue
        waited = task.get("waited", {})
        rows.append(
            f'<tr data-task="{escape(name)}"><td>{escape(name)}</td>'
            f"<td>{escape(format_limits(limits))}</td>"
            f"<td class=n>{int(task['counts'].get('skipped', 0))}</td>"
            f"<td class=n>{float(waited.get('rate', 0.0)):.1f}</td>"
            f"<td class=n>{float(waited.get('key', 0.0)):.1f}</td></tr>"
        )
    if not rows:
        return ""
    return (
        '<table id="limits">\n<thead><tr><th>Task</th><th>Limits</th><th>Skipped</th>'
        "<th>Waited for tokens (s)</th><th>Waited for key slots (s)</th></tr></thead>\n"
        f"<tbody>{''.join(rows)}</tbody>\n</table>"
    )


def _endpoint(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info)
    kind = str(info.get("type", "?"))
    return f"{kind} {info['name']}" if info.get("name") else kind
