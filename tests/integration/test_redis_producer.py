"""RedisStream.put and put_many against a real Redis: four threads without an app, then
one app consumes exactly those; bodies and meta that cannot be encoded are refused
before anything is added; a wrong password is one clean line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.redis import BODY
from adapters.redis._codec import unpack_delayed
from onestep import EncodeError, OneStepApp, RedisConnector
from tests.helpers import running
from tests.integration.redis_support import (  # noqa: F401
    URL,
    Keys,
    keys_fixture,
    redis_connector_fixture,
    wait_until,
)

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def consume_exactly(
    keys: Keys, connector: RedisConnector, name: str, count: int
) -> list[tuple[Any, dict[str, Any]]]:
    """Run an app on `name` until it handled `count` messages; then nothing may wait or
    be pending (a duplicate would still be in the stream, or would have been handled)."""
    seen: list[tuple[Any, dict[str, Any]]] = []
    lock = threading.Lock()
    done = threading.Event()
    app = OneStepApp("consumer")
    stream = connector.stream(name, poll_interval_s=0.1)

    @app.task(source=stream, concurrency=8)
    def collect(ctx: Any, item: Any) -> None:
        with lock:
            seen.append((item, ctx.current.meta))
            if len(seen) == count:
                done.set()

    with running(app):
        assert done.wait(TIMEOUT), f"handled {len(seen)} of {count}"
    assert len(seen) == count
    assert stream.depth() == 0
    assert keys.pending(name) == 0
    return seen


def test_four_threads_put_a_thousand_with_meta_without_an_app_and_an_app_consumes_them(
    keys: Keys,
) -> None:
    name = keys.name("put")
    connector = RedisConnector(URL)
    jobs = connector.stream(name)
    errors: list[BaseException] = []

    def produce(thread: int) -> None:
        try:
            for n in range(250):
                jobs.put({"thread": thread, "n": n}, {"from": f"{thread}-{n}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors, errors
    assert keys.client.xlen(name) == 1000  # every put returned once the server had it
    seen = consume_exactly(keys, connector, name, 1000)
    assert {(item["thread"], item["n"]) for item, _ in seen} == {
        (t, n) for t in range(4) for n in range(250)
    }
    for item, meta in seen:
        assert meta == {"from": f"{item['thread']}-{item['n']}"}
    connector.close()


def test_put_many_adds_a_thousand_with_their_meta(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    name = keys.name("many")
    jobs = redis_connector.stream(name)
    assert jobs.put_many(({"n": n} for n in range(1000)), {"batch": "b1"}) == 1000
    assert jobs.put_many([]) == 0
    assert jobs.depth() == 1000
    seen = consume_exactly(keys, redis_connector, name, 1000)
    assert Counter(item["n"] for item, _ in seen) == Counter(range(1000))
    assert all(meta == {"batch": "b1"} for _, meta in seen)


@pytest.mark.parametrize(
    ("body", "meta", "error", "problem"),
    [
        ({"bad": object()}, None, EncodeError, "is not valid JSON"),
        (float("nan"), None, EncodeError, "NaN and Infinity are not JSON"),
        ({"n": 1}, {"bad": {1, 2}}, EncodeError, "meta is not valid JSON"),
        ({"n": 1}, ["not", "a", "dict"], TypeError, "meta must be a dict or None"),
    ],
)
def test_what_cannot_be_encoded_is_refused_before_anything_is_added(
    keys: Keys, redis_connector: RedisConnector, body: Any, meta: Any, error: Any, problem: str
) -> None:
    name = keys.name("bad")
    jobs = redis_connector.stream(name)
    with pytest.raises(error, match=problem):
        jobs.put(body, meta)
    with pytest.raises(error, match=problem):
        jobs.put_many([{"fine": 1}, body], meta)
    assert keys.client.xlen(name) == 0


def test_put_arguments_are_checked(redis_connector: RedisConnector) -> None:
    jobs = redis_connector.stream("never-written")
    with pytest.raises(ValueError, match="delay_s"):
        jobs.put(1, delay_s=-1)
    with pytest.raises(ValueError, match="attempts"):
        jobs.put(1, attempts=-1)
    with pytest.raises(TypeError, match="bodies must be an iterable"):
        jobs.put_many("abc")


def test_a_delayed_put_many_waits_in_the_delay_set_in_order(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    name = keys.name("later")
    jobs = redis_connector.stream(name)
    assert jobs.put_many(range(5), delay_s=0.2) == 5
    members = keys.client.zrange(f"{name}:delayed", 0, -1)
    # due at the same time, they are moved in the order they were put
    assert [unpack_delayed(m)[BODY] for m in members] == [b"0", b"1", b"2", b"3", b"4"]
    assert jobs.depth() == 5
    seen = consume_exactly(keys, redis_connector, name, 5)
    assert sorted(item for item, _ in seen) == [0, 1, 2, 3, 4]


PUT_SCRIPT = """
from onestep import RedisConnector

try:
    RedisConnector({url!r}).stream({stream!r}).put({{"n": 1}})
except ConnectionError as exc:
    print("refused:", exc)
"""


def test_a_put_with_a_wrong_password_raises_one_clean_error(keys: Keys, tmp_path: Path) -> None:
    script = tmp_path / "put.py"
    url = "redis://nobody:Sekr3t-pw@127.0.0.1:6379/0"
    script.write_text(PUT_SCRIPT.format(url=url, stream=keys.name("jobs")))
    repo = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.startswith("refused: cannot add to Redis stream 'onestep-test-jobs-"), (
        completed.stdout
    )
    assert "at 127.0.0.1:6379 db 0 as user 'nobody': AuthenticationError" in completed.stdout
    assert "Sekr3t-pw" not in completed.stdout


def test_the_size_limit_is_the_servers_proto_max_bulk_len_unless_configured(
    keys: Keys, redis_connector: RedisConnector
) -> None:
    server_limit = int(keys.client.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    assert redis_connector.max_message_bytes() == server_limit
    assert RedisConnector(URL, max_message_bytes=1000).max_message_bytes() == 1000
    with pytest.raises(ValueError, match="max_message_bytes"):
        RedisConnector(URL, max_message_bytes=0)


def test_an_oversize_message_is_refused_before_sending_and_fails_alone_as_a_result(
    keys: Keys,
) -> None:
    from onestep.kit import MessageTooLarge

    server = RedisConnector(URL, max_message_bytes=1000)
    name = keys.name("oversize")
    stream = server.stream(name)
    try:
        with pytest.raises(MessageTooLarge) as caught:
            stream.put("x" * 2000)
        assert str(caught.value) == (
            f"Redis stream {name!r}: body is 2,002 bytes, over the limit of 1,000 bytes "
            "(max_message_bytes, Redis's proto-max-bulk-len)"
        )
        with pytest.raises(MessageTooLarge, match=r"bodies\[1\] is 1,001 bytes"):
            stream.put_many([b"ok", b"y" * 1001])
        with pytest.raises(MessageTooLarge, match="meta is"):
            stream.put(1, {"big": "z" * 1000})
        assert keys.client.xlen(name) == 0
        stream.put("fits")  # the next put works
        # as a sink's results: the oversize one fails alone, the others are added
        refused = stream.publish_batch([(1, None), ("x" * 2000, None), (3, None)])
        assert refused is not None and list(refused) == [1]
        assert isinstance(refused[1], MessageTooLarge)
        assert [fields[BODY] for _, fields in keys.entries(name)] == [b'"fits"', b"1", b"3"]
    finally:
        server.close()
