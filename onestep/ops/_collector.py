"""The Prometheus collector of `GET /metrics`: turns a monitor's snapshot
(onestep.ops._metrics) into metric families at scrape time; used by onestep.http."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from actors import DURATION_BUCKETS

from ._metrics import OUTCOMES, Monitor


class OnestepCollector(Collector):
    """The Prometheus collector: reads a monitor's snapshot at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        snap = self.monitor.snapshot()
        app = snap["app"]
        messages = CounterMetricFamily(
            "onestep_messages",
            "Messages settled by task and outcome (one per handler execution; failed: "
            "given up on with no dead letter stored).",
            labels=["app", "task", "outcome"],
        )
        durations = HistogramMetricFamily(
            "onestep_handler_duration_seconds",
            "Handler execution time, by task.",
            labels=["app", "task"],
        )
        waited = CounterMetricFamily(
            "onestep_flow_wait_seconds",
            "Time messages waited for a rate-limit token (limit=rate) or a per-key slot "
            "(limit=key), by task; only tasks with flow control.",
            labels=["app", "task", "limit"],
        )
        inflight = GaugeMetricFamily(
            "onestep_inflight", "Messages taken and not yet settled.", labels=["app", "task"]
        )
        for name, task in snap["tasks"].items():
            for outcome in OUTCOMES:
                messages.add_metric([app, name, outcome], task["counts"][outcome])
            duration = task["duration"]
            cumulative, buckets = 0, []
            for bound, n in zip((*DURATION_BUCKETS, math.inf), duration["buckets"], strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            durations.add_metric([app, name], buckets, duration["sum"])
            inflight.add_metric([app, name], task["inflight"])
            for limit, seconds in task.get("waited", {}).items():
                waited.add_metric([app, name, limit], seconds)
        up = GaugeMetricFamily(
            "onestep_source_up", "1 while the source is open and working.", labels=["app", "source"]
        )
        depth = GaugeMetricFamily(
            "onestep_queue_depth",
            "Messages waiting in the source (refreshed every few seconds).",
            labels=["app", "source"],
        )
        for name, source in snap["sources"].items():
            up.add_metric([app, name], source["up"])
            if source.get("depth") is not None:
                depth.add_metric([app, name], source["depth"])
        restarts = CounterMetricFamily(
            "onestep_actor_restarts",
            "Restarts of a failed actor (a lost connection), by actor.",
            labels=["app", "actor"],
        )
        for label, n in snap["restarts"].items():
            restarts.add_metric([app, label], n)
        yield from (messages, durations, inflight, waited, up, depth, restarts)


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)
