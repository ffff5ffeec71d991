"""The monitoring recipes in the docs hold to what onestep exports: the Grafana dashboard
(docs/grafana/onestep-dashboard.json) and the Kubernetes autoscaling recipe in
docs/deploying.md query only metrics and labels that `/metrics` serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from onestep import MemoryQueue, OneStepApp
from onestep.ops._collector import OnestepCollector
from onestep.ops._metrics import AppMonitor, Monitor
from tests.docs_blocks import parse_blocks

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "onestep-dashboard.json"
#: Words in PromQL that are not label names: functions, aggregations, keywords.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}


class SnapshotMonitor(Monitor):
    """A monitor that returns a given snapshot (one where every metric has a sample)."""

    def __init__(self, app: OneStepApp, snapshot: dict[str, Any]) -> None:
        super().__init__(app)
        self._snapshot = snapshot

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot


def exported() -> tuple[set[str], set[str]]:
    """(series names, label names) of `/metrics` as the real collector renders it, for an
    app whose snapshot has every kind of sample: counts, durations, a depth, a restart."""
    app = OneStepApp("shop")
    jobs = MemoryQueue("jobs")

    @app.task(source=jobs, emit=MemoryQueue("done"))
    def work(ctx: Any, item: Any) -> Any:
        return item

    snapshot = AppMonitor(app).snapshot()
    snapshot["sources"]["jobs"]["depth"] = 3
    snapshot["restarts"] = {"source 'jobs'": 1}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OnestepCollector(SnapshotMonitor(app, snapshot)))
    names, labels = set(), set()
    for line in generate_latest(registry).decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series = line.rsplit(" ", 1)[0]
        names.add(series.split("{", 1)[0])
        labels.update(re.findall(r'(\w+)="', series))
    return names, labels


def metric_names(query: str) -> set[str]:
    return set(re.findall(r"\bonestep_\w+", query))


def label_names(query: str) -> set[str]:
    """Label names a PromQL query matches on or groups by."""
    inside_braces = re.findall(r"\{([^}]*)\}", query)
    matched = {m for part in inside_braces for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", part)}
    grouped = {
        name.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query)
        for name in group.split(",")
    }
    return (matched | grouped) - _PROMQL_WORDS - {""}


def test_the_exporter_serves_what_the_recipes_rely_on() -> None:
    names, labels = exported()
    assert {
        "onestep_messages_total",
        "onestep_handler_duration_seconds_bucket",
        "onestep_handler_duration_seconds_sum",
        "onestep_handler_duration_seconds_count",
        "onestep_inflight",
        "onestep_source_up",
        "onestep_queue_depth",
        "onestep_actor_restarts_total",
    } <= names
    assert {"app", "task", "outcome", "source", "actor", "le"} <= labels


# -- the Grafana dashboard ----------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(
                (f"panel {panel['title']!r}", target["expr"]) for target in panel.get("targets", [])
            )
            walk(panel.get("panels", []))

    walk(board["panels"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["query"]["query"]))
    return found


def test_the_dashboard_queries_only_metrics_and_labels_onestep_exports() -> None:
    names, labels = exported()
    queries = dashboard_queries()
    used = set()
    for where, query in queries:
        assert metric_names(query), f"{where} queries no onestep metric: {query}"
        assert metric_names(query) <= names, f"{where}: {metric_names(query) - names}"
        assert label_names(query) <= labels, f"{where}: {label_names(query) - labels}"
        used |= metric_names(query)
    # every metric is on the board: rates by outcome, in flight, depth, durations, restarts
    assert used == names
    whole = DASHBOARD.read_text()
    assert set(re.findall(r"\bonestep_\w+", whole)) <= names  # descriptions included


def test_the_dashboard_is_a_grafana_dashboard_with_distinct_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(target["refId"] for target in panel["targets"])
    cells = [
        (panel["gridPos"]["y"] + dy, panel["gridPos"]["x"] + dx)
        for panel in panels
        for dy in range(panel["gridPos"]["h"])
        for dx in range(panel["gridPos"]["w"])
    ]
    assert len(cells) == len(set(cells)), "two panels overlap"
    assert "grafana/onestep-dashboard.json" in (DOCS / "operations.md").read_text()


# -- the Kubernetes autoscaling recipe ----------------------------------------------------


def autoscaling_blocks() -> list[tuple[str, str]]:
    """(title, YAML) of the blocks in docs/deploying.md's autoscaling section."""
    blocks = [b for b in parse_blocks(DOCS / "deploying.md") if b.lang == "yaml"]
    return [(b.title or "", b.code) for b in blocks if "onestep_queue_depth" in b.code]


def test_the_autoscaling_recipe_scales_on_the_queue_depth_onestep_exports() -> None:
    names, labels = exported()
    blocks = autoscaling_blocks()
    titles = [title for title, _ in blocks]
    assert "keda-scaledobject.yaml" in titles and "hpa.yaml" in titles, titles
    for title, code in blocks:
        for query in re.findall(r"(?:query|seriesQuery|metricsQuery): *'?(.+?)'?$", code, re.M):
            assert metric_names(query) <= names, f"{title}: {query}"
            assert label_names(query.replace("<<.LabelMatchers>>", "")) <= labels | {"namespace"}, (
                f"{title}: {query}"
            )
        # the structure that matters, also without a YAML parser
        assert "onestep_queue_depth" in code
    keda = dict(blocks)["keda-scaledobject.yaml"]
    for line in (
        "apiVersion: keda.sh/v1alpha1",
        "kind: ScaledObject",
        "  scaleTargetRef:",
        "    - type: prometheus",
    ):
        assert line in keda.splitlines(), line


def test_the_autoscaling_recipe_is_valid_yaml_with_the_right_shape() -> None:
    import yaml  # the test extra

    documents = {
        title: [doc for doc in yaml.safe_load_all(code) if doc is not None]
        for title, code in autoscaling_blocks()
    }
    [scaled] = documents["keda-scaledobject.yaml"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "billing"  # the Deployment of the same page
    assert spec["minReplicaCount"] >= 1  # the workers report the depth: never scale to 0
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    # KEDA reads trigger metadata as strings
    assert all(isinstance(value, str) for value in metadata.values()), metadata
    assert metadata["query"].startswith("max(onestep_queue_depth{")
    assert float(metadata["threshold"]) > 0
    [hpa] = documents["hpa.yaml"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "onestep_queue_depth"
    assert metric["external"]["target"]["type"] == "AverageValue"
    adapter = documents["prometheus-adapter-values.yaml"][0]
    [rule] = adapter["rules"]["external"]
    assert rule["name"]["as"] == "onestep_queue_depth"
    assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
