"""The pipeline as a picture: the graph made from describe() (onestep.ops._graph), its Mermaid,
DOT and JSON forms, `onestep graph`, the status page's SVG (onestep.ops._graph_layout,
onestep.ops._graph_svg) and the rate sparklines (onestep.ops._sparkline)."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest

from onestep import MemoryQueue, OneStepApp
from onestep.http import add_routes
from onestep.ops._graph import DEAD_LETTER, FLOW, build_graph, render_graph, to_dot, to_mermaid
from onestep.ops._graph_layout import layout
from onestep.ops._graph_svg import render_pipeline_svg
from onestep.ops._metrics import AppMonitor
from onestep.ops._sparkline import RateHistory, sparkline_points
from tests.docs_blocks import parse_blocks
from tests.helpers import running, wait_until
from tests.unit.cli_apps import graph as shop

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def shop_graph() -> Any:
    return build_graph(shop.app.describe())


def names_by_kind(graph: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node in graph.nodes:
        found.setdefault(node.kind, []).append(node.name)
    return found


def hops(graph: Any) -> set[tuple[str, str, str]]:
    return {(graph.node(e.source).name, graph.node(e.target).name, e.kind) for e in graph.edges}


# -- the graph ----------------------------------------------------------------------------


def test_every_task_and_endpoint_is_one_node_and_every_hop_an_edge() -> None:
    graph = shop_graph()
    kinds = names_by_kind(graph)
    assert kinds["task"] == ["check", shop.ODD_TASK, "archive", "audit"]
    assert kinds["source"] == ["orders"]
    # emitted by one task, read by another: one node each, not a sink and a source
    assert sorted(kinds["queue"]) == sorted([shop.ODD_QUEUE, shop.UNICODE_QUEUE, "audit"])
    assert kinds["sink"] == ["orders.dead"]  # shared by two tasks: one node
    assert hops(graph) == {
        ("orders", "check", FLOW),
        ("check", shop.ODD_QUEUE, FLOW),
        ("check", "orders.dead", DEAD_LETTER),
        (shop.ODD_QUEUE, shop.ODD_TASK, FLOW),
        (shop.ODD_TASK, shop.UNICODE_QUEUE, FLOW),
        (shop.ODD_TASK, "audit", FLOW),
        (shop.ODD_TASK, "orders.dead", DEAD_LETTER),
        (shop.UNICODE_QUEUE, "archive", FLOW),
        ("audit", "audit", FLOW),
    }
    assert len(graph.edges) == 9  # no duplicates
    dead = next(node for node in graph.nodes if node.name == "orders.dead")
    assert dead.dead_letter_only and dead.roles == {DEAD_LETTER}


def test_endpoints_with_equal_descriptions_are_one_node() -> None:
    broker = {"type": "RabbitMQQueue", "name": "jobs", "url": "amqp://h/"}
    description = {
        "app": "a",
        "tasks": [
            {"name": "produce", "source": None, "emit": [dict(broker)], "dead_letter": []},
            {"name": "consume", "source": dict(broker), "emit": [], "dead_letter": []},
            {
                "name": "other",
                "source": {**broker, "url": "amqp://elsewhere/"},
                "emit": [],
                "dead_letter": [],
            },
        ],
    }
    graph = build_graph(description)
    assert [(n.name, n.kind) for n in graph.nodes if n.kind != "task"] == [
        ("jobs", "queue"),
        ("jobs", "source"),
    ]
    assert hops(graph) == {
        ("produce", "jobs", FLOW),
        ("jobs", "consume", FLOW),
        ("jobs", "other", FLOW),
    }


# -- Mermaid ------------------------------------------------------------------------------

_MERMAID_NODE = re.compile(r'^    ([te]\d+)(\(|\[\(|\(\[|>)"([^"]*)"(\)|\)\]|\]\)|\])$')
_MERMAID_EDGE = re.compile(r"^    ([te]\d+) (-->|-\.->\|dead letter\|) ([te]\d+)$")


def mermaid_unescape(label: str) -> list[str]:
    assert "<" not in label.replace("<br/>", ""), label  # no markup from a name
    assert not re.search(r"#(?!\d+;)", label), label  # every # starts an entity code
    return [
        re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), part) for part in label.split("<br/>")
    ]


def test_mermaid_flowchart_has_every_node_edge_and_escapes_every_name() -> None:
    text = render_graph(shop.app.describe())
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, tuple[str, list[str]]] = {}
    edges = []
    for line in lines[1:]:
        if node := _MERMAID_NODE.match(line):
            nodes[node.group(1)] = (node.group(2), mermaid_unescape(node.group(3)))
        elif edge := _MERMAID_EDGE.match(line):
            edges.append((edge.group(1), edge.group(2), edge.group(3)))
        else:
            assert re.match(r"^    (classDef \w+ [\w:#,]+|class [te\d,]+ \w+)$", line), line
    labels = {key: label for key, (_, label) in nodes.items()}
    names = {key: label[0] for key, label in labels.items()}
    odd_queue = shop.ODD_QUEUE.replace("\n", " ")  # a newline cannot be in a label
    tasks = ["check", shop.ODD_TASK, "archive", "audit"]
    assert sorted(names.values()) == sorted(
        [*tasks, "orders", odd_queue, "orders.dead", shop.UNICODE_QUEUE, "audit"]
    )
    shapes = {names[key]: shape for key, (shape, _) in nodes.items()}
    assert shapes["check"] == "(" and shapes["orders"] == "(["  # task, source
    assert shapes[shop.UNICODE_QUEUE] == "[(" and shapes["orders.dead"] == ">"  # queue, sink
    by_name = {(names[a], names[b], arrow) for a, arrow, b in edges}
    assert ("orders", "check", "-->") in by_name
    assert ("check", "orders.dead", "-.->|dead letter|") in by_name
    assert (shop.ODD_TASK, "orders.dead", "-.->|dead letter|") in by_name
    assert (shop.UNICODE_QUEUE, "archive", "-->") in by_name
    assert len(edges) == 9
    assert sum(arrow != "-->" for _, arrow, _ in edges) == 2  # only dead letters dashed
    assert "    class e3 deadletter" in lines


# -- DOT ----------------------------------------------------------------------------------

_DOT_STRING = r'"(?:[^"\\]|\\.)*"'
_DOT_ATTRS = rf"\[(?:\w+=(?:{_DOT_STRING}|[\w.]+)(?:, )?)+\]"
_DOT_NODE = re.compile(rf"^    ([te]\d+) {_DOT_ATTRS};$")
_DOT_EDGE = re.compile(rf"^    ([te]\d+) -> ([te]\d+)(?: ({_DOT_ATTRS}))?;$")


def test_dot_is_a_digraph_with_every_node_and_edge_and_escaped_names() -> None:
    text = to_dot(shop_graph())
    lines = text.splitlines()
    assert lines[0] == 'digraph "shop \\"main\\"" {' and lines[-1] == "}"
    labels, edges = {}, []
    for line in lines[1:-1]:
        if node := _DOT_NODE.match(line):
            label = re.search(rf"label=({_DOT_STRING})", line)
            assert label
            # DOT's escapes: \\ and \" from names, \n between name and type
            parts = label.group(1)[1:-1].split("\\n")
            labels[node.group(1)] = [re.sub(r"\\(.)", r"\1", part) for part in parts]
        elif edge := _DOT_EDGE.match(line):
            edges.append((edge.group(1), edge.group(2), edge.group(3) or ""))
        else:
            assert re.match(r"^    (rankdir=LR|(node|edge) \[.*\]);$", line), line
    names = {key: parts[0] for key, parts in labels.items()}
    assert shop.ODD_TASK in names.values()
    assert shop.ODD_QUEUE.replace("\n", " ") in names.values()
    assert shop.UNICODE_QUEUE in names.values()
    assert len(edges) == 9 and all(a in names and b in names for a, b, _ in edges)
    dashed = [(names[a], names[b]) for a, b, attrs in edges if "style=dashed" in attrs]
    assert sorted(dashed) == sorted([("check", "orders.dead"), (shop.ODD_TASK, "orders.dead")])


def test_json_lists_nodes_and_edges() -> None:
    data = json.loads(render_graph(shop.app.describe(), "json"))
    assert data["app"] == 'shop "main"'
    ids = {node["id"]: node for node in data["nodes"]}
    assert {node["name"] for node in data["nodes"] if node["kind"] == "task"} == {
        "check",
        shop.ODD_TASK,
        "archive",
        "audit",
    }
    assert all(edge["from"] in ids and edge["to"] in ids for edge in data["edges"])
    assert sum(edge["kind"] == "dead_letter" for edge in data["edges"]) == 2
    check = next(node for node in data["nodes"] if node["name"] == "check")
    assert check["describe"]["concurrency"] == 4 and "emit" not in check["describe"]


def test_an_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="format must be one of mermaid, dot, json, got 'png'"):
        render_graph(shop.app.describe(), "png")


def test_mermaid_of_an_app_whose_task_feeds_itself() -> None:
    app = OneStepApp("loop")
    again = MemoryQueue("again")

    @app.task(source=again, emit=again)
    def spin(ctx: Any, item: Any) -> None:
        return None

    text = to_mermaid(build_graph(app.describe()))
    assert "e1 --> t1" in text and "t1 --> e1" in text


# -- onestep graph ------------------------------------------------------------------------


def test_graph_command_prints_mermaid_by_default(invoke: Any) -> None:
    result = invoke("graph", "cli_apps.graph")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == render_graph(shop.app.describe()) + "\n"
    assert result.stdout.startswith("flowchart LR\n")


@pytest.mark.parametrize("fmt", ["dot", "json", "mermaid"])
def test_graph_command_formats(invoke: Any, fmt: str) -> None:
    result = invoke("graph", "cli_apps.graph", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    # the handlers' module is cli_apps.graph there, tests.unit.cli_apps.graph here
    expected = render_graph(shop.app.describe(), fmt).replace("tests.unit.cli_apps", "cli_apps")
    assert result.stdout == expected + "\n"


def test_graph_command_exit_codes(invoke: Any) -> None:
    empty = invoke("graph", "cli_apps.no_tasks")
    assert empty.exit_code == 2 and empty.stdout == ""
    assert empty.stderr == (
        "Error: app 'empty' has no tasks (register one with @app.task); "
        "there is no pipeline to draw\n"
    )
    missing = invoke("graph", "cli_apps.no_such_module")
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: module ")
    bad = invoke("graph", "cli_apps.graph", "--format", "svg")
    assert bad.exit_code == 2 and "Invalid value for '--format'" in bad.stderr


def test_graph_command_on_a_file_with_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "onestep", "graph", "examples/quickstart.py", "--format", "dot"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('digraph "quickstart" {') or done.stdout.startswith("digraph ")
    assert " -> " in done.stdout
    for task in ("ingest", "double", "add_one", "report"):
        assert f'label="{task}"' in done.stdout


# -- the SVG ------------------------------------------------------------------------------


def wide_app() -> OneStepApp:
    """Fan-out, fan-in, a long dead-letter edge and a cycle."""
    app = OneStepApp("wide")
    queues = {name: MemoryQueue(name) for name in ("in", "a", "b", "c", "joined", "dead")}

    def handle(ctx: Any, item: Any) -> None:
        return None

    fan_out = [queues["a"], queues["b"], queues["c"]]
    app.task(source=queues["in"], emit=fan_out, name="split")(handle)
    for name in ("a", "b", "c"):
        app.task(source=queues[name], emit=queues["joined"], name=f"work-{name}")(handle)
    app.task(source=queues["joined"], emit=queues["in"], dead_letter=queues["dead"], name="join")(
        handle
    )
    app.task(source=queues["dead"], dead_letter=queues["dead"], name="inspect")(handle)
    return app


@pytest.mark.parametrize("make", [wide_app, lambda: shop.app], ids=["wide", "shop"])
def test_the_layout_overlaps_no_two_boxes(make: Any) -> None:
    graph = build_graph(make().describe())
    placed = layout(graph)
    assert set(placed.boxes) == {node.id for node in graph.nodes}
    for (a_id, a), (b_id, b) in combinations(placed.boxes.items(), 2):
        apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
        assert apart, f"{a_id} {a} overlaps {b_id} {b}"
    cycles = {("join", "in"), ("inspect", "dead")}
    for edge in graph.edges:  # messages flow left to right, but for the edge closing a cycle
        start, end = placed.boxes[edge.source], placed.boxes[edge.target]
        hop = (graph.node(edge.source).name, graph.node(edge.target).name)
        assert end.column > start.column or hop in cycles, hop


def test_the_svg_names_every_node_escaped_and_draws_dead_letters_dashed() -> None:
    snapshot = {
        "tasks": {"check": {"counts": {"failed": 1, "dead_lettered": 2}, "inflight": 3}},
        "sources": {"orders": {"up": 1, "depth": 42}},
    }
    svg = render_pipeline_svg(shop.app.describe(), snapshot, {"check": 12.34})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    for name in ("check", shop.ODD_TASK, shop.ODD_QUEUE, shop.UNICODE_QUEUE, "orders.dead"):
        assert f'data-node="{html.escape(name)}"' in svg, name
    assert "<b>" not in svg and 'bill "fast"' not in svg
    assert "12.3/s</tspan> · 3 in flight" in svg and "3 failures" in svg
    assert "depth 42" in svg
    assert svg.count('class="g-dead" data-kind="dead_letter"') == 2
    assert svg.count('data-kind="flow"') == 7
    assert "<script" not in svg and "http" not in svg


# -- the sparklines -----------------------------------------------------------------------


def test_rate_history_samples_once_per_interval_and_stays_bounded() -> None:
    history = RateHistory(interval_s=10.0, size=3)
    history.add(0.0, {"t": 0})
    history.add(5.0, {"t": 40})  # too soon: no sample
    assert history.series() == {}
    history.add(10.0, {"t": 100})
    history.add(20.0, {"t": 150, "u": 20})
    assert history.series() == {"t": [10.0, 5.0], "u": [2.0]}
    history.add(30.0, {"t": 150, "u": 20})
    history.add(40.0, {"t": 10, "u": 20})  # counting restarted: no negative rate
    assert history.series() == {"t": [5.0, 0.0, 0.0], "u": [2.0, 0.0, 0.0]}
    with pytest.raises(ValueError, match="size must be at least 2"):
        RateHistory(size=1)


def test_sparkline_points_put_the_last_sample_at_the_right_and_the_peak_at_the_top() -> None:
    assert sparkline_points([], 0, 0, 100, 10) == ""
    assert sparkline_points([3.0], 0, 0, 100, 10) == ""
    assert (
        sparkline_points([0.0, 5.0, 10.0], 0, 0, 100, 10, slots=3) == "0.0,10.0 50.0,5.0 100.0,0.0"
    )
    # a young history fills the right part of the box only
    assert sparkline_points([2.0, 2.0], 0, 0, 100, 10, slots=11) == "90.0,0.0 100.0,0.0"
    assert sparkline_points([0.0, 0.0], 0, 0, 100, 10, slots=2) == "0.0,10.0 100.0,10.0"


def test_the_status_page_draws_the_pipeline_with_sparklines_after_a_few_ticks() -> None:
    app = OneStepApp("drawn")
    jobs, done, dead = MemoryQueue("jobs<1>"), MemoryQueue("done & dusted"), MemoryQueue("dead")

    @app.task(source=jobs, emit=done, dead_letter=dead, name="work")
    def work(ctx: Any, item: int) -> int:
        if item == 3:
            raise ValueError("three")
        return item

    @app.task(source=done, name="ünïcode ✓")
    def finish(ctx: Any, item: int) -> None:
        return None

    web = falcon.App()
    monitor = add_routes(web, app)
    assert isinstance(monitor, AppMonitor)
    monitor.history = RateHistory(interval_s=0.0)  # a sample at every tick
    client = falcon.testing.TestClient(web)
    with running(app):
        monitor.tick()
        for batch in range(3):
            jobs.put_many(range(batch * 4, batch * 4 + 4))
            handled = batch * 4 + 3
            wait_until(
                lambda n=handled: monitor.snapshot()["tasks"]["work"]["counts"]["succeeded"] >= n,
                TIMEOUT,
                every=0.01,
            )
            monitor.tick()
        page = client.simulate_get("/").text
    svg = page[page.index("<svg") : page.index("</svg>")]
    for name in ("work", "ünïcode ✓", "jobs&lt;1&gt;", "done &amp; dusted", "dead"):
        assert name in svg, name
    assert "jobs<1>" not in page and "done & dusted" not in page
    assert len(re.findall(r'<polyline class="spark" points="[\d., ]+">', svg)) == 2
    assert "1 failure<" in svg
    assert 'class="g-dead"' in svg
    assert "<script" not in page


def test_the_mermaid_example_in_the_docs_is_what_onestep_graph_prints() -> None:
    """docs/operations.md shows the graph of the status page screenshot's shop app."""
    script = REPO / "docs" / "scripts" / "status_page_screenshot.py"
    spec = importlib.util.spec_from_file_location("status_page_screenshot", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app, _ = module.build()
    [block] = [b for b in parse_blocks(REPO / "docs" / "operations.md") if b.lang == "mermaid"]
    assert block.code == render_graph(app.describe()) + "\n"
