"""What the operations endpoints read: an app's counters, health and queue depths as one
snapshot, and the Prometheus collector over it.

`AppMonitor` reads an app in this process (`app.serve_http`, `onestep run --http`, the
status line); in a worker of `onestep run --processes N` it also writes its snapshot to
a file every second, and the parent's `WorkersMonitor` sums those files. Both keep a
background thread ("onestep-monitor") that refreshes queue depths, samples rates and
logs the status line, so a scrape never queries a broker. The Prometheus side is in
onestep.ops._collector (imported only by onestep.http).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors import DURATION_BUCKETS

from ._sparkline import RateHistory
from ._status_line import StatusLine, handled

if TYPE_CHECKING:
    from ..core import AppCore

logger = logging.getLogger("onestep.metrics")

#: The `outcome` label values of `onestep_messages_total`; each message settles with
#: one of them per execution (`failed`: given up on with no dead letter stored).
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered", "cancelled", "skipped")
#: How often the monitor thread wakes (rates, snapshot files).
TICK_S = 1.0
#: How often queue depths are asked for (a RabbitMQ or MySQL round trip each).
DEPTH_REFRESH_S = 5.0
#: The window of the rates on the status page.
RATE_WINDOW_S = 60.0
#: Prefix of the snapshot files a worker writes into ONESTEP_RUN_DIR.
SNAPSHOT_PREFIX = "stats-"


def flow_waited(gate: Any) -> dict[str, float]:
    """The seconds a task's messages waited for rate-limit tokens (`rate`) and per-key
    slots (`key`), cumulative (onestep.flow.Gate.snapshot)."""
    snap = gate.snapshot()
    return {limit: float(snap[limit]["waited_s"]) for limit in ("rate", "key")}


def _empty_task(source: str | None) -> dict[str, Any]:
    return {
        "source": source,
        "counts": dict.fromkeys(OUTCOMES, 0),
        "duration": {"buckets": [0] * (len(DURATION_BUCKETS) + 1), "sum": 0.0, "count": 0},
        "inflight": 0,
    }


class Monitor:
    """The common part: a snapshot to read, rates over the last minute, a thread."""

    def __init__(self, app: AppCore, *, status_interval_s: float = 0.0) -> None:
        self.app = app
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._samples_lock = threading.Lock()
        #: each task's rate over the last 15 minutes (the status page's sparklines)
        self.history = RateHistory()
        self._status = StatusLine(status_interval_s) if status_interval_s > 0 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._users = 0
        self._users_lock = threading.Lock()

    # -- what the endpoints read (any thread) ---------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`{"app", "running", "health", "ready", "tasks": {name: {"source", "counts",
        "duration", "inflight"}}, "sources": {name: {"up", "depth"}}, "restarts":
        {actor: n}}`; JSON-able."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return self.app.describe()

    def rates(self) -> dict[str, float]:
        """Messages handled per second over the last minute, by task (`{}` until two
        samples are a second apart)."""
        with self._samples_lock:
            if len(self._samples) < 2:
                return {}
            (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 - t0 < 1.0:
            return {}
        return {task: (n - first.get(task, 0)) / (t1 - t0) for task, n in last.items()}

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor thread (once however many users call it)."""
        with self._users_lock:
            self._users += 1
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="onestep-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread once its last user stopped; a last tick runs first."""
        with self._users_lock:
            self._users = max(0, self._users - 1)
            thread = self._thread
            if self._users or thread is None:
                return
            self._thread = None
        self._stop.set()
        thread.join(10.0)

    def _run(self) -> None:
        """The monitor thread: one tick a second, and a last one at stop."""
        while True:
            stopping = self._stop.wait(TICK_S)
            try:
                self.tick(final=stopping)
            except Exception:
                logger.exception("metrics monitor tick failed")
            if stopping:
                return

    def tick(self, final: bool = False) -> dict[str, Any]:
        """Runs on the monitor thread: sample the counts for the rates, log the status
        line when it is due; returns the snapshot it sampled."""
        snapshot = self.snapshot()
        now = time.monotonic()
        totals = {name: handled(task["counts"]) for name, task in snapshot["tasks"].items()}
        with self._samples_lock:
            self._samples.append((now, totals))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()
        self.history.add(now, totals)
        if self._status is not None and not final:
            self._status.maybe_log(now, snapshot)
        return snapshot


class AppMonitor(Monitor):
    """Reads an app of this process; turns its counters on (before it starts).

    With `snapshot_dir` (a worker of `--processes N`), each tick also writes the
    snapshot to `<snapshot_dir>/stats-<worker>-<pid>.json` (atomically), and stop()
    writes a last one once the app stopped."""

    def __init__(
        self,
        app: AppCore,
        *,
        status_interval_s: float = 0.0,
        snapshot_dir: str | None = None,
        worker: str = "",
    ) -> None:
        super().__init__(app, status_interval_s=status_interval_s)
        self.stats = app.internals.enable_stats()
        self._depths: dict[str, int | None] = {}
        self._depths_at = -math.inf
        self._snapshot_path: Path | None = None
        if snapshot_dir:
            self._snapshot_path = (
                Path(snapshot_dir) / f"{SNAPSHOT_PREFIX}{worker}-{os.getpid()}.json"
            )

    def snapshot(self) -> dict[str, Any]:
        app = self.app
        health = app.health()
        running = health["status"] != "stopped"
        problems = health["problems"]
        system = app.internals.system
        inflight = (
            {} if system is None else {rt.task.name: len(rt.ledger) for rt in system.runtimes}
        )
        counted = self.stats.tasks()
        tasks: dict[str, Any] = {}
        sources: dict[str, Any] = {}
        for name, spec in app.tasks.items():
            source = spec.source_name if spec.source is not None else None
            task = _empty_task(source)
            stats = counted.get(name)
            if stats is not None:
                raw = stats.snapshot()
                counts = raw["counts"]
                task["counts"] = {outcome: counts[outcome] for outcome in OUTCOMES}
                task["duration"] = raw["duration"]
            task["inflight"] = inflight.get(name, 0)
            if spec.gate is not None:  # flow control: seconds messages waited, by limit
                task["waited"] = flow_waited(spec.gate)
            tasks[name] = task
            if source is not None:
                up = running and f"source {source!r}" not in problems
                sources[source] = {"up": int(up), "depth": self._depths.get(source)}
        return {
            "app": app.name,
            "pid": os.getpid(),
            "running": running,
            "health": health,
            "ready": running and not problems and health["status"] == "ok",
            "tasks": tasks,
            "sources": sources,
            "restarts": self.stats.restarts(),
        }

    def tick(self, final: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if self.app.running and now - self._depths_at >= DEPTH_REFRESH_S:
            self._depths_at = now
            self._refresh_depths()
        snapshot = super().tick(final)
        if self._snapshot_path is not None:
            self._write_snapshot(self._snapshot_path, snapshot)
        return snapshot

    def _refresh_depths(self) -> None:
        """Runs on the monitor thread: ask each source that can tell (`depth()`)."""
        for spec in self.app.tasks.values():
            depth = getattr(spec.source, "depth", None)
            if spec.source is None or not callable(depth):
                continue
            try:
                self._depths[spec.source_name] = int(depth())
            except Exception as exc:
                logger.debug("depth of source %r failed: %s", spec.source_name, exc)
                self._depths[spec.source_name] = None

    @staticmethod
    def _write_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
        """Write the snapshot file atomically (a reader never sees half of one)."""
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(snapshot))
            os.replace(temporary, path)
        except OSError as exc:
            logger.warning("cannot write the metrics snapshot %s: %s", path, exc)


class WorkersMonitor(Monitor):
    """The parent of `onestep run --processes N`: sums the snapshot files its workers
    write. Counts of a worker that died stay (its last file is kept; a restarted worker
    writes a file of its own), gauges come from live workers only. A worker killed with
    SIGKILL loses at most its last second of counts."""

    def __init__(
        self,
        app: AppCore,
        workers: Callable[[], list[tuple[str, int | None, bool]]],
        run_dir: Callable[[], str],
        running: Callable[[], bool],
        *,
        stalled: Callable[[], str | None] = lambda: None,
        status_interval_s: float = 0.0,
    ) -> None:
        """`stalled()` says why the workers fail as a whole (none has been ready for too
        long), or None: health "failed" then, and /healthz answers 503."""
        super().__init__(app, status_interval_s=status_interval_s)
        self._workers = workers
        self._run_dir = run_dir
        self._running = running
        self._stalled = stalled

    def _files(self) -> Iterator[dict[str, Any]]:
        directory = self._run_dir()
        if not directory:
            return
        with contextlib.suppress(OSError):
            for path in Path(directory).glob(f"{SNAPSHOT_PREFIX}*.json"):
                try:
                    yield json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    logger.debug("skipping metrics snapshot %s: %s", path, exc)

    def snapshot(self) -> dict[str, Any]:
        workers = self._workers()
        live = {pid for _, pid, _ in workers if pid is not None}
        tasks = {
            name: _empty_task(spec.source_name if spec.source is not None else None)
            for name, spec in self.app.tasks.items()
        }
        sources: dict[str, dict[str, Any]] = {
            t["source"]: {"up": 0, "depth": None} for t in tasks.values() if t["source"]
        }
        restarts: dict[str, int] = {}
        problems: dict[str, str] = {}
        live_snapshots = []
        for snap in self._files():
            alive = snap.get("pid") in live
            if alive:
                live_snapshots.append(snap)
            for name, task in snap.get("tasks", {}).items():
                if name in tasks:
                    _add_task(tasks[name], task, gauges=alive)
            for label, n in snap.get("restarts", {}).items():
                restarts[label] = restarts.get(label, 0) + n
        for name, source in sources.items():
            views = [s["sources"][name] for s in live_snapshots if name in s.get("sources", {})]
            source["up"] = int(
                bool(views) and len(views) == len(live) and all(v["up"] for v in views)
            )
            depths = [v["depth"] for v in views if v.get("depth") is not None]
            source["depth"] = max(depths) if depths else None
        running = self._running()
        for worker, pid, ready in workers:
            if pid is None:
                problems[worker] = "not running"
            elif not ready:
                problems[worker] = "starting"
        for snap in live_snapshots:
            worker = next((w for w, pid, _ in workers if pid == snap.get("pid")), "?")
            for part, error in snap.get("health", {}).get("problems", {}).items():
                problems[f"{worker}: {part}"] = error
        stalled = self._stalled() if running else None
        if stalled is not None:
            problems["workers"] = stalled
        status = "stopped" if not running else "degraded" if problems else "ok"
        if stalled is not None:
            status = "failed"
        return {
            "app": self.app.name,
            "pid": os.getpid(),
            "running": running,
            "health": {"status": status, "problems": problems, "workers": len(workers)},
            "ready": running and not problems,
            "tasks": tasks,
            "sources": sources,
            "restarts": restarts,
        }


def _add_task(total: dict[str, Any], task: dict[str, Any], *, gauges: bool) -> None:
    for outcome in OUTCOMES:
        total["counts"][outcome] += task.get("counts", {}).get(outcome, 0)
    duration = task.get("duration", {})
    buckets = duration.get("buckets", [])
    if len(buckets) == len(total["duration"]["buckets"]):
        total["duration"]["buckets"] = [
            a + b for a, b in zip(total["duration"]["buckets"], buckets, strict=True)
        ]
        total["duration"]["sum"] += duration.get("sum", 0.0)
        total["duration"]["count"] += duration.get("count", 0)
    if "waited" in task:
        waited = total.setdefault("waited", {"rate": 0.0, "key": 0.0})
        for limit in waited:
            waited[limit] += task["waited"].get(limit, 0.0)
    if gauges:
        total["inflight"] += task.get("inflight", 0)
