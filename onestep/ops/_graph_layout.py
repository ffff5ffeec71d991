"""Where each node of the pipeline graph (onestep.ops._graph) goes in the status page's
picture: columns by depth, boxes that never overlap. Called by onestep.ops._graph_svg."""

from __future__ import annotations

from dataclasses import dataclass

from ._graph import QUEUE, SOURCE, TASK, Graph, Node

#: Box sizes and gaps, in pixels.
TASK_W, TASK_H = 196, 86
ENDPOINT_W, ENDPOINT_H = 150, 58
GAP_X, GAP_Y, MARGIN = 44, 18, 10


@dataclass(frozen=True)
class Box:
    """Where a node is drawn: top-left corner, size, and the column it is in."""

    x: float
    y: float
    w: float
    h: float
    column: int


@dataclass(frozen=True)
class Layout:
    """Every node's box, each column's left and right edges, and the lowest box edge."""

    boxes: dict[str, Box]
    columns: list[tuple[float, float]]
    bottom: float


def columns(graph: Graph) -> list[list[Node]]:
    """Nodes in columns by depth: each node one column right of the deepest node that
    sends it messages (edges that close a cycle are left out). Within a column, nodes
    follow the mean row of what feeds them, dead-letter sinks last."""
    ids = [node.id for node in graph.nodes]
    successors: dict[str, list[str]] = {i: [] for i in ids}
    for edge in graph.edges:
        successors[edge.source].append(edge.target)
    # the walk that finds cycles starts where messages enter: nodes nothing feeds, then
    # sources, so that the edge left out is the one going back to the start
    fed = {edge.target for edge in graph.edges}
    starts = [n.id for n in graph.nodes if n.id not in fed]
    starts += [n.id for n in graph.nodes if n.kind in (SOURCE, QUEUE)] + ids
    back = _back_edges(list(dict.fromkeys(starts)), successors)
    depth = dict.fromkeys(ids, 0)
    for node_id in _topological(ids, successors, back):
        for target in successors[node_id]:
            if (node_id, target) not in back:
                depth[target] = max(depth[target], depth[node_id] + 1)
    grouped: list[list[Node]] = [[] for _ in range(max(depth.values()) + 1)]
    for node in graph.nodes:
        grouped[depth[node.id]].append(node)
    row: dict[str, float] = {node.id: float(i) for i, node in enumerate(grouped[0])}
    predecessors: dict[str, list[str]] = {i: [] for i in ids}
    for edge in graph.edges:
        predecessors[edge.target].append(edge.source)
    for column in grouped[1:]:
        order = {node.id: i for i, node in enumerate(column)}

        def key(node: Node, order: dict[str, int] = order) -> tuple[bool, float, int]:
            placed = [row[p] for p in predecessors[node.id] if p in row]
            mean = sum(placed) / len(placed) if placed else float(order[node.id])
            return (node.dead_letter_only, mean, order[node.id])

        column.sort(key=key)
        row.update({node.id: float(i) for i, node in enumerate(column)})
    return grouped


def _back_edges(ids: list[str], successors: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Edges that close a cycle, found by a depth-first walk from the nodes in order."""
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    back: set[tuple[str, str]] = set()
    for start in ids:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(successors[start]))]
        while stack:
            node_id, pending = stack[-1]
            target = next(pending, None)
            if target is None:
                state[node_id] = 2
                stack.pop()
            elif state.get(target) == 1:
                back.add((node_id, target))
            elif target not in state:
                state[target] = 1
                stack.append((target, iter(successors[target])))
    return back


def _topological(
    ids: list[str], successors: dict[str, list[str]], back: set[tuple[str, str]]
) -> list[str]:
    incoming = dict.fromkeys(ids, 0)
    for source, targets in successors.items():
        for target in targets:
            if (source, target) not in back:
                incoming[target] += 1
    ready = [i for i in ids if incoming[i] == 0]
    order = []
    while ready:
        node_id = ready.pop(0)
        order.append(node_id)
        for target in successors[node_id]:
            if (node_id, target) not in back:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
    return order


def layout(graph: Graph) -> Layout:
    """Each node's box: columns left to right, each column's nodes stacked and centred
    on the tallest column, so that no two boxes overlap."""
    grouped = columns(graph)
    heights = [
        sum(_size(node)[1] for node in column) + GAP_Y * (len(column) - 1) for column in grouped
    ]
    tallest = max(heights)
    boxes: dict[str, Box] = {}
    spans: list[tuple[float, float]] = []
    # an edge into the first column closes a cycle: it comes up a gap left of it
    first = {node.id for node in grouped[0]}
    x = MARGIN + (GAP_X / 2 if any(edge.target in first for edge in graph.edges) else 0.0)
    for index, (column, column_height) in enumerate(zip(grouped, heights, strict=True)):
        column_width = max(_size(node)[0] for node in column)
        y = MARGIN + (tallest - column_height) / 2
        for node in column:
            w, h = _size(node)
            boxes[node.id] = Box(x + (column_width - w) / 2, y, w, h, index)
            y += h + GAP_Y
        spans.append((x, x + column_width))
        x += column_width + GAP_X
    return Layout(boxes, spans, MARGIN + tallest)


def _size(node: Node) -> tuple[int, int]:
    return (TASK_W, TASK_H) if node.kind == TASK else (ENDPOINT_W, ENDPOINT_H)
