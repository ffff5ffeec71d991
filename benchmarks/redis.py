"""Throughput and peak memory of onestep on Redis Streams against raw redis-py, same run,
same server.

Needs Redis at 127.0.0.1:6379 (or set ONESTEP_REDIS_URL). Run from the repository root:

    python benchmarks/redis.py                    # every case, 50,000 messages
    python benchmarks/redis.py --repeat 3 --json  # best of 3, one JSON object per case

Cases:
- `stream`: drain 50,000 preloaded entries (small JSON bodies) with a no-op handler
  that returns None. Baseline: a raw loop of `XREADGROUP COUNT 100` that decodes each
  body (json.loads) and sends one `XACK` per batch.
- `pipeline`: stream -> no-op task (returns its item) -> stream. Baseline: the same raw
  loop that adds every decoded-and-encoded body to the output stream and acks the batch,
  in one pipelined round trip per batch.
- `put`: `put_many` of N bodies. Baseline: `json.dumps` each body and `XADD` them in
  pipelines of 5,000.

Each side runs in its own child process (peak RSS is that side's alone) on its own
fresh streams, preloaded before the clock starts. For `stream` and `pipeline` the rate is
(N - 1) / (time the last entry was settled - time the first was seen): onestep's end is
when its handler saw every entry and the group has nothing pending (and, for
`pipeline`, the output stream holds N entries), polled every 5 ms from another
connection. It never asserts anything: it only reports (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

# This file is named redis.py: Python put its directory first on sys.path, where it
# would shadow the redis package. Move the directory last (for _common) instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

from _common import (  # noqa: E402  (after the sys.path fix above)
    CountingEvent,
    add_common_args,
    emit_child_result,
    parse_common_args,
    print_results,
    run_cases,
)

URL = os.environ.get("ONESTEP_REDIS_URL", "redis://127.0.0.1:6379/0")
CASES = ("stream", "pipeline", "put")
DEFAULT_MESSAGES = 50_000
BATCH = 100
CONCURRENCY = 32
GROUP = "onestep"
CHUNK = 5000


def _client() -> Any:
    import redis

    return redis.Redis.from_url(URL)


def prepare(messages: int, *, preload: bool) -> tuple[str, str, Any]:
    """Fresh input and output stream names, the input preloaded with N small JSON
    entries (in onestep's format: a `body` field with JSON) and its group made at 0."""
    client = _client()
    tag = uuid.uuid4().hex[:8]
    source, sink = f"bench-in-{tag}", f"bench-out-{tag}"
    if preload:
        for start in range(0, messages, CHUNK):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(messages, start + CHUNK)):
                pipe.xadd(source, {"body": b'{"n":%d}' % i})
            pipe.execute()
        client.xgroup_create(source, GROUP, id="0", mkstream=True)
    return source, sink, client


def cleanup(client: Any, *streams: str) -> None:
    for name in streams:
        client.delete(name, f"{name}:delayed")
    client.close()


def wait_settled(
    client: Any, source: str, sink: str | None, count: int, wait_s: float
) -> float | None:
    """Time at which nothing of `source` is pending (and `sink` holds `count`)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        done = client.xpending(source, GROUP)["pending"] == 0
        if done and sink is not None:
            done = client.xlen(sink) >= count
        if done:
            return time.perf_counter()
        time.sleep(0.005)
    return None


def measure_onestep(case: str, messages: int, wait_s: float) -> dict[str, Any]:
    from onestep import OneStepApp, RedisConnector

    if case == "put":
        return measure_put_onestep(messages)
    source_name, sink_name, client = prepare(messages, preload=True)
    server = RedisConnector(URL)
    app = OneStepApp("bench", shutdown_timeout_s=5.0)
    counter = CountingEvent(messages)
    hit = counter.hit
    source = server.stream(source_name, batch_size=BATCH)
    try:
        if case == "stream":

            @app.task(source=source, concurrency=CONCURRENCY)
            def consume(ctx: Any, item: Any) -> None:
                hit()

            sink: str | None = None
        else:

            @app.task(source=source, emit=server.stream(sink_name), concurrency=CONCURRENCY)
            def forward(ctx: Any, item: Any) -> Any:
                hit()
                return item

            sink = sink_name
        app.start()
        try:
            if not counter.done.wait(wait_s):
                return {"error": f"not all {messages} messages handled in {wait_s:g} s"}
            last = wait_settled(client, source_name, sink, messages, wait_s)
        finally:
            app.stop()
        if last is None or counter.first_at is None:
            return {"error": f"not all {messages} messages settled in {wait_s:g} s"}
        return {"rate": (messages - 1) / (last - counter.first_at)}
    finally:
        server.close()
        cleanup(client, source_name, sink_name)


def measure_put_onestep(messages: int) -> dict[str, Any]:
    from onestep import RedisConnector

    name, _, client = prepare(messages, preload=False)
    server = RedisConnector(URL)
    bodies = [{"n": i} for i in range(messages)]
    try:
        stream = server.stream(name)
        started = time.perf_counter()
        stream.put_many(bodies)
        elapsed = time.perf_counter() - started
        if client.xlen(name) != messages:
            return {"error": "put_many did not add every body"}
        return {"rate": messages / elapsed}
    finally:
        server.close()
        cleanup(client, name)


def measure_baseline(case: str, messages: int, wait_s: float) -> dict[str, Any]:
    if case == "put":
        return measure_put_baseline(messages)
    source, sink, client = prepare(messages, preload=True)
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + wait_s
    loads, dumps = json.loads, json.dumps
    try:
        while seen < messages and time.monotonic() < deadline:
            response = client.xreadgroup(GROUP, "raw", {source: ">"}, count=BATCH, block=100)
            if not response:
                continue
            entries = response[0][1]
            if not seen:
                first = time.perf_counter()
            ids = []
            if case == "stream":
                for entry_id, fields in entries:
                    loads(fields[b"body"])
                    ids.append(entry_id)
                client.xack(source, GROUP, *ids)
            else:
                pipe = client.pipeline(transaction=False)
                for entry_id, fields in entries:
                    pipe.xadd(sink, {"body": dumps(loads(fields[b"body"]))})
                    ids.append(entry_id)
                pipe.xack(source, GROUP, *ids)
                pipe.execute()
            seen += len(entries)
        last = time.perf_counter()
    finally:
        cleanup(client, source, sink)
    if seen < messages:
        return {"error": f"baseline handled {seen} of {messages} in {wait_s:g} s"}
    return {"rate": (messages - 1) / (last - first)}


def measure_put_baseline(messages: int) -> dict[str, Any]:
    name, _, client = prepare(messages, preload=False)
    bodies = [{"n": i} for i in range(messages)]
    dumps = json.dumps
    try:
        started = time.perf_counter()
        for start in range(0, messages, CHUNK):
            pipe = client.pipeline(transaction=False)
            for body in bodies[start : start + CHUNK]:
                pipe.xadd(name, {"body": dumps(body)})
            pipe.execute()
        elapsed = time.perf_counter() - started
        return {"rate": messages / elapsed}
    finally:
        cleanup(client, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="onestep on Redis Streams against raw redis-py: draining a stream, a "
        "stream -> task -> stream pipeline and put_many; each side in its own child process."
    )
    add_common_args(parser, messages=DEFAULT_MESSAGES)
    args = parse_common_args(parser, argv, CASES)
    if args.child:
        kind, case = args.child
        measure = measure_onestep if kind == "onestep" else measure_baseline
        emit_child_result(**measure(case, args.messages, args.timeout))
        return 0
    results = run_cases(
        os.path.abspath(__file__),
        args.cases,
        repeat=args.repeat,
        child_args=["--messages", str(args.messages), "--timeout", str(args.timeout)],
        timeout_s=args.timeout + 60.0,
    )
    title = (
        f"Redis Streams: onestep against raw redis-py, {args.messages:,} messages, batch "
        f"{BATCH}, concurrency {CONCURRENCY}, best of {args.repeat}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
    )
    print_results(results, as_json=args.json, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
