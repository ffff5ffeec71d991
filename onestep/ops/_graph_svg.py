"""The pipeline drawn as an inline SVG for the status page (onestep.ops._status_page): the
graph of onestep.ops._graph in columns by depth, each task with its live rate, in-flight
count, failures and a rate sparkline, each source with its depth. Made on the server:
no script, no outside asset, every text escaped."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from ._graph import DEAD_LETTER, QUEUE, SOURCE, TASK, Graph, Node, build_graph, label_lines
from ._graph_layout import GAP_X, MARGIN, TASK_W, Box, Layout, layout
from ._sparkline import RateHistory, sparkline_points

#: The distance between the lanes under the boxes where long edges run.
LANE_GAP = 9
#: The sparkline's box inside a task node.
SPARK_X, SPARK_Y, SPARK_W, SPARK_H = 10, 60, TASK_W - 20, 18
#: Rough advance of a character at the node font sizes, to shorten long names.
_CHAR_PX = {13: 7.6, 12: 6.9, 11: 6.4}

_COLORS = {
    "task": ("#e8eaf6", "#3949ab"),
    "endpoint": ("#f7f7f7", "#8a8a8a"),
    "dead": ("#ffebee", "#c62828"),
    "down": ("#fff3e0", "#e65100"),
}
_STYLE = (
    ".g-name{font:600 13px system-ui,sans-serif;fill:#1a237e}"
    ".g-ep{font:600 12px system-ui,sans-serif;fill:#212121}"
    ".g-sub{font:11px system-ui,sans-serif;fill:#616161}"
    ".g-live{font:12px system-ui,sans-serif;fill:#212121}"
    ".g-bad{font:12px system-ui,sans-serif;fill:#c62828}"
    ".g-ok{font:12px system-ui,sans-serif;fill:#2e7d32}"
    ".g-edge{fill:none;stroke:#78909c;stroke-width:1.4;stroke-linejoin:round}"
    ".g-dead{fill:none;stroke:#c62828;stroke-width:1.4;stroke-dasharray:5 4;"
    "stroke-linejoin:round}"
    ".spark{fill:none;stroke:#3949ab;stroke-width:1.5}"
    ".spark-bg{fill:#fff;stroke:#c5cae9;stroke-width:.8}"
)


def render_pipeline_svg(
    description: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    rates: Mapping[str, float],
    history: RateHistory | None = None,
) -> str:
    """The `<svg>` element for an app's describe(), a monitor's snapshot, the tasks'
    rates and the monitor's rate history ("" for an app without tasks). Runs on the HTTP
    server's thread."""
    graph = build_graph(description)
    if not graph.nodes:
        return ""
    placed = layout(graph)
    boxes = placed.boxes
    edges = _edges(graph, placed)
    lanes = sum(1 for _, lane in edges if lane)
    width = placed.columns[-1][1] + MARGIN + (GAP_X / 2 if lanes else 0)
    height = placed.bottom + MARGIN + (LANE_GAP * (lanes + 1) if lanes else 0)
    # inline in HTML, an <svg> needs no xmlns (and the page names no URL at all)
    parts = [
        f'<svg id="pipeline" role="img" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'aria-label="{escape(f"pipeline of app {graph.app}")}">',
        f"<style>{_STYLE}</style>",
        _markers(),
    ]
    parts.extend(path for path, _ in edges)
    series = {} if history is None else history.series()
    tasks = snapshot.get("tasks") or {}
    sources = snapshot.get("sources") or {}
    for node in graph.nodes:
        box = boxes[node.id]
        if node.kind == TASK:
            live, rate = tasks.get(node.name), rates.get(node.name)
            parts.append(_task(node, box, live, rate, series.get(node.name), history))
        else:
            # the snapshot knows sources by name: a sink of the same name is not one
            source = sources.get(node.name) if "source" in node.roles else None
            parts.append(_endpoint(node, box, source))
    parts.append("</svg>")
    return "\n".join(parts)


# -- drawing ------------------------------------------------------------------------------


def _markers() -> str:
    return (
        "<defs>"
        '<marker id="g-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#78909c"/></marker>'
        '<marker id="g-arrow-dead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c62828"/></marker>'
        "</defs>"
    )


def _edges(graph: Graph, placed: Layout) -> list[tuple[str, bool]]:
    """Each edge's <path>, and whether it runs in a lane under the boxes. An edge to the
    next column is a curve across the gap between them; any other (over a column, or
    back to an earlier one in a cycle) runs down the gap after its start, along a lane
    of its own under every box and up the gap before its end, so no line crosses a box."""
    drawn = []
    lane = 0
    for edge in graph.edges:
        start, end = placed.boxes[edge.source], placed.boxes[edge.target]
        x1, y1 = start.x + start.w, start.y + start.h / 2
        x2, y2 = end.x - 1, end.y + end.h / 2
        if end.column == start.column + 1:
            reach = max(16.0, (x2 - x1) / 2)
            shape = f"M{x1:.1f},{y1:.1f} C{x1 + reach:.1f},{y1:.1f} {x2 - reach:.1f},{y2:.1f} "
            shape += f"{x2:.1f},{y2:.1f}"
            drawn.append((_path(shape, edge.kind), False))
            continue
        lane += 1
        # lanes that share a gap run down it side by side, not on top of each other
        shift = (lane % 3 - 1) * 5
        down = placed.columns[start.column][1] + GAP_X / 2 + shift
        up = placed.columns[end.column][0] - GAP_X / 2 + shift
        level = placed.bottom + LANE_GAP * lane
        # below the middle, where the edges to and from the next columns are
        y1 += min(12.0, start.h / 2 - 6)
        y2 += min(12.0, end.h / 2 - 6)
        shape = f"M{x1:.1f},{y1:.1f} H{down:.1f} V{level:.1f} H{up:.1f} V{y2:.1f} H{x2:.1f}"
        drawn.append((_path(shape, edge.kind), True))
    return drawn


def _path(shape: str, kind: str) -> str:
    dead = kind == DEAD_LETTER
    return (
        f'<path class="{"g-dead" if dead else "g-edge"}" data-kind="{kind}" d="{shape}" '
        f'marker-end="url(#{"g-arrow-dead" if dead else "g-arrow"})"/>'
    )


def _task(
    node: Node,
    box: Box,
    live: Mapping[str, Any] | None,
    rate: float | None,
    samples: Sequence[float] | None,
    history: RateHistory | None,
) -> str:
    fill, stroke = _COLORS["task"]
    counts = (live or {}).get("counts") or {}
    failed, dead = int(counts.get("failed", 0)), int(counts.get("dead_lettered", 0))
    retried = int(counts.get("retried", 0))
    inflight = int((live or {}).get("inflight", 0))
    rate_text = "-/s" if rate is None else f"{rate:.1f}/s"
    # failures: messages given up on (dead-lettered, or failed without a dead letter)
    if failed + dead:
        failure_text, failure_class = f"{_plural(failed + dead, 'failure')}", "g-bad"
    else:
        failure_text, failure_class = "no failures", "g-ok"
    if retried:
        failure_text += f" · {_plural(retried, 'retry', 'retries')}"
    details = f"{dead} dead-lettered, {failed} failed, {retried} retried"
    spark = _spark(box, samples or [], history)
    x, y = box.x, box.y
    return (
        f'<g class="node task" data-node="{escape(node.name)}">'
        f"<title>task {escape(node.name)}: {escape(rate_text)}, {inflight} in flight, "
        f"{details}</title>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{box.w}" height="{box.h}" rx="9" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        f'<text class="g-name" x="{x + 10:.1f}" y="{y + 19:.1f}">{_fit(node.name, box.w - 20, 13)}'
        f"</text>"
        f'<text class="g-live" x="{x + 10:.1f}" y="{y + 37:.1f}"><tspan font-weight="600">'
        f"{escape(rate_text)}</tspan> · {inflight} in flight</text>"
        f'<text class="{failure_class}" x="{x + 10:.1f}" y="{y + 53:.1f}">'
        f"{_fit(failure_text, box.w - 20, 12)}</text>"
        f"{spark}</g>"
    )


def _spark(box: Box, samples: Sequence[float], history: RateHistory | None) -> str:
    x, y = box.x + SPARK_X, box.y + SPARK_Y
    background = (
        f'<rect class="spark-bg" x="{x:.1f}" y="{y:.1f}" width="{SPARK_W}" height="{SPARK_H}" '
        f'rx="2"/>'
    )
    if history is None:
        return background
    slots = history.size
    points = sparkline_points(samples, x + 2, y + 2, SPARK_W - 4, SPARK_H - 4, slots)
    if not points:
        return background
    peak = max(samples)
    span = len(samples) * history.interval_s
    return (
        f'{background}<polyline class="spark" points="{points}">'
        f"<title>rate every {history.interval_s:g} s over the last {span:g} s, "
        f"peak {peak:.1f}/s</title>"
        f"</polyline>"
    )


def _endpoint(node: Node, box: Box, source: Mapping[str, Any] | None) -> str:
    down = source is not None and not source.get("up", 1)
    palette = "down" if down else "dead" if node.dead_letter_only else "endpoint"
    fill, stroke = _COLORS[palette]
    lines = label_lines(node)
    kind_text = lines[1] if len(lines) > 1 else ""
    if node.kind in (SOURCE, QUEUE):
        depth = None if source is None else source.get("depth")
        status = "down" if down else f"depth {'-' if depth is None else int(depth)}"
    else:
        status = "dead letters" if node.dead_letter_only else "sink"
    dash = ' stroke-dasharray="5 3"' if node.dead_letter_only else ""
    x, y = box.x, box.y
    subtitle = f"{kind_text} · {status}" if kind_text else status
    roles = ", ".join(sorted(role.replace("_", " ") for role in node.roles))
    return (
        f'<g class="node {escape(node.kind)}" data-node="{escape(node.name)}">'
        f"<title>{escape(node.kind)} {escape(node.name)} ({escape(roles)}): "
        f"{escape(subtitle)}</title>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{box.w}" height="{box.h}" rx="4" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.2"{dash}/>'
        f'<text class="g-ep" x="{x + 9:.1f}" y="{y + 18:.1f}">{_fit(node.name, box.w - 18, 12)}'
        f"</text>"
        f'<text class="g-sub" x="{x + 9:.1f}" y="{y + 34:.1f}">{_fit(kind_text, box.w - 18, 11)}'
        f"</text>"
        f'<text class="{"g-bad" if down else "g-live"}" x="{x + 9:.1f}" y="{y + 50:.1f}">'
        f"{_fit(status, box.w - 18, 12)}</text></g>"
    )


def _plural(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _fit(text: str, width_px: float, font_px: int) -> str:
    """`text`, shortened with an ellipsis to about `width_px`, escaped for SVG. (The full
    text is in the node's <title>.)"""
    budget = width_px / _CHAR_PX[font_px]
    used, kept = 0.0, list[str]()
    for char in text:
        cost = 2.0 if unicodedata.east_asian_width(char) in ("W", "F") else 1.0
        if char < " ":
            char, cost = " ", 1.0
        if used + cost > budget:
            while kept and used + 1 > budget:
                used -= 2.0 if unicodedata.east_asian_width(kept.pop()) in ("W", "F") else 1.0
            return escape("".join(kept) + "…")
        kept.append(char)
        used += cost
    return escape("".join(kept))
