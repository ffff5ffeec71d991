"""Requests/s of a WebhookSource against a raw falcon app on the same waitress settings.

Run from the repository root:

    python benchmarks/webhook.py                  # both cases, 20,000 requests each
    python benchmarks/webhook.py --repeat 3       # best of 3
    python benchmarks/webhook.py --json           # one JSON object per case
    python benchmarks/webhook.py --waiting 8,32,100   # accepted latency under result load

Cases:
- `accepted`: `WebhookSource(respond="accepted")` feeding a no-op task, against a raw
  falcon app whose resource appends the body to a list and answers 202.
- `result`: `WebhookSource(respond="result")` with a task returning `{"ok": true}`
  (the client waits for the handler), against the same raw baseline; also reports
  latency p50/p99 of the onestep side.

Each side runs in its own child process (peak RSS is the server's alone: the child starts
the server, then a separate load process). The load process opens `--clients` keep-alive
connections on loopback (http.client, one thread each) and posts a small JSON body
until `--messages` requests are answered or `--max-seconds` pass. The rate counts 2xx
answers over the load's wall time. The baseline's waitress runs `SERVER_THREADS` (8)
threads; onestep's server runs its defaults (8 threads, 32 when a source has
respond="result"). Nothing is asserted (DESIGN.md section 6).

`--waiting N,M,...` measures something else: for each N, the latency of 5 sequential
accepted POSTs while N respond="result" requests (one connection each) wait on a
handler that sleeps `HANDLER_S`, on one server; it prints one JSON line per N with the
median and worst latency and the statuses the result requests got (503 once the threads
that waiting requests may hold are taken).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _common import (  # noqa: E402
    add_common_args,
    emit_child_result,
    parse_common_args,
    print_results,
    run_cases,
)

CASES = ("accepted", "result")
DEFAULT_MESSAGES = 20_000
BODY = b'{"event": "push", "n": 1}'


# -- the load process -----------------------------------------------------------------------


def load(port: int, path: str, total: int, clients: int, max_seconds: float) -> dict[str, Any]:
    """Post `total` requests over `clients` keep-alive connections; runs in its own process."""
    counter = iter(range(total))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[dict[int, int]] = [{} for _ in range(clients)]
    deadline = time.monotonic() + max_seconds
    headers = {"Content-Type": "application/json"}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, seen = latencies[index], statuses[index]
        perf = time.perf_counter
        for _ in counter:
            if time.monotonic() > deadline:
                break
            start = perf()
            conn.request("POST", path, BODY, headers)
            response = conn.getresponse()
            response.read()
            mine.append(perf() - start)
            seen[response.status] = seen.get(response.status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    merged: dict[int, int] = {}
    for seen in statuses:
        for status, count in seen.items():
            merged[status] = merged.get(status, 0) + count
    ok = sum(count for status, count in merged.items() if 200 <= status < 300)
    all_latencies = sorted(x for mine in latencies for x in mine)

    def percentile(p: float) -> float | None:
        if not all_latencies:
            return None
        return all_latencies[min(len(all_latencies) - 1, int(p * len(all_latencies)))] * 1e3

    return {
        "rate": ok / elapsed if elapsed else 0.0,
        "statuses": {str(k): v for k, v in merged.items()},
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    }


def run_load(port: int, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `load` in a fresh interpreter so its threads compete with the server only for
    CPU cores, not for this process's GIL."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--load",
        str(port),
        path,
        str(args.messages),
        str(args.clients),
        str(args.max_seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.max_seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load process failed: {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- accepted latency while result requests wait ------------------------------------------

HANDLER_S = 3.0


def measure_waiting(waiting: int) -> dict[str, Any]:
    """The accepted-POST latency while `waiting` result requests wait; runs in the
    benchmark process (the clients here only wait, they do not compete for the CPU)."""
    from adapters.webhook import WebhookSource
    from onestep import OneStepApp

    app = OneStepApp("bench-waiting")
    accepted = WebhookSource("/accepted", port=0)
    results = WebhookSource("/result", port=0, respond="result", reply_timeout_s=HANDLER_S * 10)

    @app.task(source=accepted)
    def noop(ctx: Any, item: Any) -> None:
        return None

    @app.task(source=results, concurrency=4)
    def slow(ctx: Any, item: Any) -> Any:
        time.sleep(HANDLER_S)
        return {"ok": True}

    app.start()
    try:
        assert accepted.url is not None
        port = int(accepted.url.split(":")[2].split("/")[0])
        statuses: dict[str, int] = {}
        lock = threading.Lock()

        def post(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANDLER_S * 10)
            try:
                conn.request("POST", path, BODY, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        def wait_for_result() -> None:
            try:
                status = str(post("/result"))
            except OSError as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        clients = [threading.Thread(target=wait_for_result) for _ in range(waiting)]
        for client in clients:
            client.start()
        time.sleep(0.5)  # let the result requests reach the server and start waiting
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            status = post("/accepted")
            latencies.append((time.perf_counter() - started) * 1e3)
            if status != 202:
                raise RuntimeError(f"an accepted POST got {status}")
        for client in clients:
            client.join()
    finally:
        app.stop()
    latencies.sort()
    return {
        "waiting": waiting,
        "accepted_median_ms": round(latencies[2], 1),
        "accepted_worst_ms": round(latencies[-1], 1),
        "result_statuses": statuses,
    }


# -- the two servers ------------------------------------------------------------------------


def measure_onestep(case: str, args: argparse.Namespace) -> dict[str, Any]:
    from adapters.webhook import WebhookSource
    from onestep import OneStepApp

    app = OneStepApp("bench")
    source = WebhookSource("/hook", port=0, respond=case, queue_maxsize=100_000, reply_timeout_s=60)

    if case == "accepted":

        @app.task(source=source, concurrency=1)
        def noop(ctx: Any, item: Any) -> None:
            return None

    else:

        @app.task(source=source, concurrency=args.clients)
        def answer(ctx: Any, item: Any) -> Any:
            return {"ok": True}

    app.start()
    try:
        assert source.url is not None
        port = int(source.url.split(":")[2].split("/")[0])
        return run_load(port, "/hook", args)
    finally:
        app.stop()


def measure_baseline(case: str, args: argparse.Namespace) -> dict[str, Any]:
    import falcon
    import waitress

    from adapters.webhook import SERVER_THREADS

    received: list[bytes] = []

    class Collect:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            received.append(req.bounded_stream.read())
            resp.status = falcon.HTTP_202
            resp.media = {"accepted": True}

    falcon_app = falcon.App()
    falcon_app.add_route("/hook", Collect())
    server = waitress.create_server(
        falcon_app, host="127.0.0.1", port=0, threads=SERVER_THREADS, ident="onestep"
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        return run_load(server.effective_port, "/hook", args)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    parser.add_argument("--clients", type=int, default=16, help="keep-alive connections")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop a load after this long"
    )
    parser.add_argument(
        "--waiting",
        metavar="N,M,...",
        help="measure accepted latency while N result requests wait (see above)",
    )
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    args = parse_common_args(parser, None, CASES)
    if args.waiting:
        try:
            counts = [int(n) for n in args.waiting.split(",")]
        except ValueError:
            parser.error(f"--waiting takes comma-separated counts, got {args.waiting!r}")
        for count in counts:
            print(json.dumps(measure_waiting(count)), flush=True)
        return
    if args.load:
        port, path, total, clients, max_seconds = args.load
        print(json.dumps(load(int(port), path, int(total), int(clients), float(max_seconds))))
        return
    import logging

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if args.child:
        kind, case = args.child
        measure = measure_onestep if kind == "onestep" else measure_baseline
        emit_child_result(**measure(case, args))
        return
    cases = args.cases
    child_args = [
        "--messages",
        str(args.messages),
        "--clients",
        str(args.clients),
        "--max-seconds",
        str(args.max_seconds),
    ]
    results = run_cases(
        os.path.abspath(__file__),
        cases,
        repeat=args.repeat,
        child_args=child_args,
        timeout_s=args.timeout,
    )
    if args.json:
        for result in results:
            line = result.as_json()
            best = max(result.onestep.extra, key=lambda x: x["rate"], default={})
            line["p50_ms"] = best.get("p50_ms")
            line["p99_ms"] = best.get("p99_ms")
            print(json.dumps(line), flush=True)
        return
    print_results(results, as_json=False, title="webhook: requests/s (2xx answers)")
    for result in results:
        for extra in result.onestep.extra[:1]:
            print(
                f"{result.case} onestep latency p50 {extra['p50_ms']:.2f} ms, "
                f"p99 {extra['p99_ms']:.2f} ms, statuses {extra['statuses']}"
            )
        for extra in result.baseline.extra[:1]:
            print(
                f"{result.case} baseline latency p50 {extra['p50_ms']:.2f} ms, "
                f"p99 {extra['p99_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()
