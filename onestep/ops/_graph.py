"""The pipeline as a graph: sources, tasks and sinks as nodes, message flow as edges, made
from `app.describe()`, with its Mermaid, Graphviz DOT and JSON forms. Called by `onestep
graph` (onestep.cli) and by the status page's drawing (onestep.ops._graph_svg)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The `--format` values of `onestep graph`.
FORMATS = ("mermaid", "dot", "json")

#: Node kinds: a task; an endpoint only read from (`source`), only written to (`sink`),
#: or both, such as a MemoryQueue between two tasks (`queue`).
TASK, SOURCE, SINK, QUEUE = "task", "source", "sink", "queue"
#: Edge kinds: messages (a source feeding a task, a task's emit) and dead letters.
FLOW, DEAD_LETTER = "flow", "dead_letter"


@dataclass
class Node:
    """One node. `id` is safe in Mermaid and DOT whatever the names (`t1`, `e1`, ...: in
    order of appearance, so the output is stable); `info` is the task's or the
    endpoint's describe() dict; `roles` says how tasks use an endpoint (`source`,
    `emit`, `dead_letter`)."""

    id: str
    kind: str
    name: str
    type: str
    info: dict[str, Any]
    roles: set[str] = field(default_factory=set)

    @property
    def dead_letter_only(self) -> bool:
        """An endpoint that only receives dead letters (drawn as such)."""
        return self.roles == {DEAD_LETTER}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able; a task's describe() without its endpoints (the edges say them)."""
        info = self.info
        if self.kind == TASK:
            info = {k: v for k, v in info.items() if k not in ("source", "emit", "dead_letter")}
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "type": self.type,
            "roles": sorted(self.roles),
            "describe": info,
        }


@dataclass(frozen=True)
class Edge:
    """Messages go from node `source` to node `target` (ids); `kind` FLOW or DEAD_LETTER."""

    source: str
    target: str
    kind: str = FLOW

    def as_dict(self) -> dict[str, str]:
        return {"from": self.source, "to": self.target, "kind": self.kind}


@dataclass
class Graph:
    """The nodes (tasks and endpoints, in order of appearance) and the edges of an app."""

    app: str
    nodes: list[Node]
    edges: list[Edge]

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.id == node_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "nodes": [node.as_dict() for node in self.nodes],
            "edges": [edge.as_dict() for edge in self.edges],
        }


def build_graph(description: Mapping[str, Any]) -> Graph:
    """The graph of an `app.describe()` dict (runs on the calling thread).

    Endpoints whose describe() dicts are equal are one node: a MemoryQueue that is one
    task's emit and another's source, a dead-letter sink shared by tasks, two objects
    for the same broker queue."""
    nodes: list[Node] = []
    endpoints: dict[str, Node] = {}
    edges: list[Edge] = []

    def endpoint(info: Any, role: str) -> Node:
        data = dict(info) if isinstance(info, Mapping) else {"type": str(info), "name": ""}
        key = json.dumps(data, sort_keys=True, default=str)
        node = endpoints.get(key)
        if node is None:
            name = str(data.get("name") or data.get("type") or "?")
            node = Node(f"e{len(endpoints) + 1}", SINK, name, str(data.get("type", "?")), data)
            endpoints[key] = node
            nodes.append(node)
        node.roles.add(role)
        return node

    def connect(edge: Edge) -> None:
        if edge not in edges:
            edges.append(edge)

    for number, task in enumerate(description.get("tasks") or [], start=1):
        node = Node(f"t{number}", TASK, str(task.get("name", "?")), "task", dict(task))
        nodes.append(node)
        if task.get("source"):
            connect(Edge(endpoint(task["source"], "source").id, node.id))
        for sink in task.get("emit") or []:
            connect(Edge(node.id, endpoint(sink, "emit").id))
        for sink in task.get("dead_letter") or []:
            connect(Edge(node.id, endpoint(sink, DEAD_LETTER).id, DEAD_LETTER))
    for node in endpoints.values():
        read, written = "source" in node.roles, bool(node.roles - {"source"})
        node.kind = QUEUE if read and written else SOURCE if read else SINK
    return Graph(str(description.get("app", "")), nodes, edges)


def render_graph(description: Mapping[str, Any], fmt: str = "mermaid") -> str:
    """`onestep graph`'s output for an `app.describe()` dict: `fmt` is one of FORMATS
    (ValueError naming it otherwise)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    graph = build_graph(description)
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "json":
        return json.dumps(graph.as_dict(), indent=2, default=str, ensure_ascii=False)
    return to_mermaid(graph)


# -- Mermaid ------------------------------------------------------------------------------

#: Mermaid's shape brackets by node kind: a rounded box for a task, a cylinder for a
#: queue, a stadium for a source only read from, a flag for a sink only written to.
_MERMAID_SHAPES = {TASK: ("(", ")"), QUEUE: ("[(", ")]"), SOURCE: ("([", "])"), SINK: (">", "]")}
_MERMAID_CLASSES = (
    "classDef task fill:#e8eaf6,stroke:#3949ab,color:#1a237e",
    "classDef endpoint fill:#f5f5f5,stroke:#757575,color:#212121",
    "classDef deadletter fill:#ffebee,stroke:#c62828,color:#b71c1c",
)


def mermaid_text(text: str) -> str:
    """`text` made safe inside a double-quoted Mermaid label: Mermaid's own entity codes
    (`#34;`) for the quote, `#` (which starts such a code), the characters an HTML label
    would read as markup, and the backtick (which opens a Markdown label); control
    characters become spaces. Unicode stays as it is."""
    out = []
    for char in text:
        if char in '"#<>&`':
            out.append(f"#{ord(char)};")
        elif char < " " or char == "\x7f":
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def label_lines(node: Node) -> list[str]:
    """What a node's box says: a task's name; an endpoint's name and type."""
    if node.kind == TASK or not node.type or node.type == node.name:
        return [node.name]
    return [node.name, node.type]


def to_mermaid(graph: Graph) -> str:
    """A Mermaid `flowchart LR`: tasks, sources and sinks in distinct shapes, solid
    arrows for messages, dashed ones labelled `dead letter`."""
    lines = ["flowchart LR"]
    for node in graph.nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        label = "<br/>".join(mermaid_text(line) for line in label_lines(node))
        lines.append(f'    {node.id}{opening}"{label}"{closing}')
    for edge in graph.edges:
        arrow = "-.->|dead letter|" if edge.kind == DEAD_LETTER else "-->"
        lines.append(f"    {edge.source} {arrow} {edge.target}")
    lines.extend(f"    {line}" for line in _MERMAID_CLASSES)
    groups = {
        "task": [n.id for n in graph.nodes if n.kind == TASK],
        "endpoint": [n.id for n in graph.nodes if n.kind != TASK and not n.dead_letter_only],
        "deadletter": [n.id for n in graph.nodes if n.dead_letter_only],
    }
    lines.extend(f"    class {','.join(ids)} {name}" for name, ids in groups.items() if ids)
    return "\n".join(lines)


# -- Graphviz DOT -------------------------------------------------------------------------

_DOT_SHAPES = {
    TASK: 'shape=box, style="rounded,filled", fillcolor="#e8eaf6", color="#3949ab"',
    QUEUE: 'shape=cylinder, style=filled, fillcolor="#f5f5f5"',
    SOURCE: 'shape=oval, style=filled, fillcolor="#f5f5f5"',
    SINK: 'shape=cds, style=filled, fillcolor="#f5f5f5"',
}


def dot_text(text: str) -> str:
    """`text` as a double-quoted DOT string: backslashes and quotes escaped (so none of
    DOT's `\\N`-style escapes applies), control characters as spaces."""
    cleaned = "".join(" " if char < " " or char == "\x7f" else char for char in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    """A Graphviz `digraph` (left to right) with the same nodes and edges as the Mermaid
    form; dead-letter edges dashed and red."""
    lines = [
        f"digraph {dot_text(graph.app or 'onestep')} {{",
        "    rankdir=LR;",
        '    node [fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in graph.nodes:
        # the line break between name and type is DOT's own \n, added after escaping
        text = "\\n".join(dot_text(line)[1:-1] for line in label_lines(node))
        attrs = _DOT_SHAPES[node.kind]
        if node.dead_letter_only:
            attrs = attrs.replace('"#f5f5f5"', '"#ffebee", color="#c62828"')
        lines.append(f'    {node.id} [label="{text}", {attrs}];')
    dead = ' [style=dashed, color="#c62828", label="dead letter"]'
    for edge in graph.edges:
        attrs = dead if edge.kind == DEAD_LETTER else ""
        lines.append(f"    {edge.source} -> {edge.target}{attrs};")
    lines.append("}")
    return "\n".join(lines)
