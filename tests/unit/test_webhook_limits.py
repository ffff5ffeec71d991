"""The standalone webhook server under hostile or heavy clients, over real sockets: bodies
refused before they are read (size, auth, route), slow and many connections, result
requests that must not starve the others, server settings shared by sources, and a
server loop that dies. Exercises the waitress hooks of onestep/_serving.py on
the installed waitress."""

from __future__ import annotations

import http.client
import json
import queue
import resource
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapters.webhook import BearerToken, HmacSignature, WebhookSource
from adapters.webhook._limits import (
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_RESULT_THREADS,
    DEFAULT_THREADS,
    FD_RESERVE,
)
from onestep import OneStepApp
from tests.helpers import running

TIMEOUT = 5.0
GIGABYTE = 1 << 30


def port_of(source: WebhookSource) -> int:
    assert source.url is not None
    port = urlsplit(source.url).port
    assert port is not None
    return port


def connect(source: WebhookSource, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(source)), timeout=timeout)


def head(path: str, *lines: str) -> bytes:
    """A POST request head (request line and headers, no body); JSON unless `lines` give
    a Content-Type."""
    if not any(line.lower().startswith("content-type:") for line in lines):
        lines = (*lines, "Content-Type: application/json")
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: test", *lines, "", ""]).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the next response on `sock`; the
    socket's timeout bounds each read."""
    reader = sock.makefile("rb")
    status_line = reader.readline()
    assert status_line, "the server closed the connection without answering"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return status, headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed `sock` (EOF or reset) within its timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def post(source: WebhookSource, path: str, body: bytes = b"{}", **headers: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(source), timeout=TIMEOUT)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.getheader("Retry-After"), response.read()
    finally:
        conn.close()


@pytest.fixture
def collected() -> queue.Queue[Any]:
    return queue.Queue()


def collecting_app(*sources: WebhookSource, items: queue.Queue[Any]) -> OneStepApp:
    app = OneStepApp("limits")
    for source in sources:

        @app.task(source=source, name=f"record-{source.path}")
        def record(ctx: Any, item: Any) -> None:
            items.put(item)

    return app


# -- bodies refused before they are read ------------------------------------------------------


def test_a_gigabyte_content_length_is_answered_413_without_sending_the_body(collected) -> None:
    source = WebhookSource("/in", port=0, max_body_bytes=1000)
    # The body is never sent: a server that waited for it would time the socket out.
    with running(collecting_app(source, items=collected)), connect(source, timeout=1.0) as sock:
        sock.sendall(head("/in", f"Content-Length: {GIGABYTE}", "Content-Type: text/plain"))
        status, headers, body = read_response(sock)
        assert closed_by_server(sock)  # the unread body makes the connection unusable
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["title"] == "Payload too large"
    assert collected.empty()


def test_expect_100_continue_over_the_limit_gets_413_never_100(collected) -> None:
    source = WebhookSource("/in", port=0, max_body_bytes=1000)
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/in", "Content-Length: 1001", "Expect: 100-continue"))
            assert read_response(sock)[0] == 413
        with connect(source) as sock:  # within the limit the client is invited to send
            sock.sendall(head("/in", "Content-Length: 2", "Expect: 100-continue"))
            assert read_response(sock)[0] == 100
            sock.sendall(b"{}")
            assert read_response(sock)[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == {}


def test_a_content_length_of_exactly_max_body_bytes_is_read_and_one_more_is_not(
    collected,
) -> None:
    """The pre-body check at its boundary (issue 24): the headers alone decide, so with
    `Expect: 100-continue` the server either invites the body (100) or answers 413
    without it; a Content-Length equal to max_body_bytes is within the limit."""
    source = WebhookSource("/in", port=0, max_body_bytes=1000)
    at_limit = json.dumps("x" * 998).encode()
    assert len(at_limit) == 1000
    with running(collecting_app(source, items=collected)):
        with connect(source, timeout=1.0) as sock:  # the body is never sent
            sock.sendall(head("/in", "Content-Length: 1001", "Expect: 100-continue"))
            status, headers, _ = read_response(sock)
            assert status == 413 and headers["connection"] == "close"
        with connect(source) as sock:
            sock.sendall(head("/in", "Content-Length: 1000", "Expect: 100-continue"))
            assert read_response(sock)[0] == 100  # invited: the check let it through
            sock.sendall(at_limit)
            assert read_response(sock)[0] == 202
        with connect(source) as sock:  # and without Expect, the plain way
            sock.sendall(head("/in", "Content-Length: 1000") + at_limit)
            assert read_response(sock)[0] == 202
        bodies = [collected.get(timeout=TIMEOUT)["body"] for _ in range(2)]
    assert bodies == ["x" * 998, "x" * 998]
    assert collected.empty()


def test_bearer_auth_fails_before_the_body_is_read(collected) -> None:
    source = WebhookSource("/in", port=0, auth=BearerToken("s3cret"))
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/in", "Content-Length: 200000000", "Authorization: Bearer nope"))
            status, headers, _ = read_response(sock)  # answered with the body unsent
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert post(source, "/in", Authorization="Bearer s3cret")[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == {}


def test_hmac_auth_reads_the_body_only_up_to_the_limit(collected) -> None:
    auth = HmacSignature("k3y")
    source = WebhookSource("/in", port=0, auth=auth, max_body_bytes=100)
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/in", f"Content-Length: {GIGABYTE}", "X-Signature: sha256=00"))
            assert read_response(sock)[0] == 413
        body = b'{"signed": true}'
        assert post(source, "/in", body, **{"X-Signature": auth.sign(body)})[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == {"signed": True}


def test_a_chunked_body_stops_at_the_limit(collected) -> None:
    source = WebhookSource("/in", port=0, max_body_bytes=1000)
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/in", "Transfer-Encoding: chunked", "Content-Type: text/plain"))
            # 1001 bytes and no last chunk: the server answers without waiting for more.
            sock.sendall(b"3e9\r\n" + b"x" * 1001 + b"\r\n")
            status, _, body = read_response(sock)
        assert status == 413 and b"1000 bytes" in body
        with connect(source) as sock:
            sock.sendall(head("/in", "Transfer-Encoding: chunked", "Content-Type: text/plain"))
            sock.sendall(b"3e8\r\n" + b"y" * 1000 + b"\r\n0\r\n\r\n")
            assert read_response(sock)[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == "y" * 1000


def test_sources_of_one_server_keep_their_own_body_limits(collected) -> None:
    small = WebhookSource("/small", port=0, max_body_bytes=10)
    large = WebhookSource("/large", port=0, max_body_bytes=1000)
    with running(collecting_app(small, large, items=collected)):
        assert port_of(small) == port_of(large)
        body = json.dumps("x" * 98).encode()  # 100 bytes
        assert post(small, "/small", body)[0] == 413
        assert post(large, "/large", body)[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == "x" * 98


def test_unknown_paths_and_methods_are_answered_without_reading_the_body(collected) -> None:
    source = WebhookSource("/in", port=0)
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/elsewhere", f"Content-Length: {GIGABYTE}"))
            assert read_response(sock)[0] == 404
        with connect(source) as sock:
            request = f"PUT /in HTTP/1.1\r\nHost: t\r\nContent-Length: {GIGABYTE}\r\n\r\n"
            sock.sendall(request.encode())
            status, headers, _ = read_response(sock)
        assert status == 405 and headers["allow"] == "POST"


def test_the_bytes_of_a_refused_body_are_never_taken_for_a_request(collected) -> None:
    source = WebhookSource("/in", port=0, max_body_bytes=10)
    smuggled = b"POST /in HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    with running(collecting_app(source, items=collected)):
        with connect(source) as sock:
            sock.sendall(head("/in", f"Content-Length: {len(smuggled)}") + smuggled)
            assert read_response(sock)[0] == 413
            assert closed_by_server(sock)  # no second response
        assert post(source, "/in")[0] == 202  # the server still serves others
        collected.get(timeout=TIMEOUT)
    assert collected.empty()  # the smuggled request was never queued


# -- slow and many clients ----------------------------------------------------------------------


class Trickler:
    """`count` connections that each send one header byte every `interval_s`, driven by
    one thread with a selector (a slow-loris client); `closed` counts those the server
    closed."""

    def __init__(self, port: int, count: int, interval_s: float) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        for sock in self.sockets:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.interval_s = interval_s
        self.closed = 0
        self.all_closed = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-trickler")
        self.thread.start()

    def _run(self) -> None:
        trickle = iter(b"POST /in HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 100_000)
        open_sockets = set(self.sockets)
        while not self.stop.is_set() and open_sockets:
            byte = bytes([next(trickle)])
            for sock in list(open_sockets):
                try:
                    sock.send(byte)
                except OSError:
                    open_sockets.discard(sock)  # closed by the server
            # Wait out the interval, noticing the connections the server closes meanwhile.
            for key, _ in self.selector.select(self.interval_s):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    closed = closed_by_server(sock)
                except BlockingIOError:
                    continue
                if closed:
                    self.selector.unregister(sock)
                    open_sockets.discard(sock)
        self.closed = len(self.sockets) - len(open_sockets)
        if not open_sockets:
            self.all_closed.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        self.selector.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def trickle() -> Iterator[Any]:
    tricklers: list[Trickler] = []

    def start(source: WebhookSource, count: int, interval_s: float) -> Trickler:
        tricklers.append(Trickler(port_of(source), count, interval_s))
        return tricklers[-1]

    yield start
    for trickler in tricklers:
        trickler.close()


def test_normal_clients_are_served_while_150_slow_ones_trickle_headers(collected, trickle) -> None:
    source = WebhookSource("/in", port=0)
    with running(collecting_app(source, items=collected)):
        slow = trickle(source, 150, 0.2)
        for n in range(5):
            # http.client's timeout (5 s) bounds each answer.
            assert post(source, "/in", str(n).encode())[0] == 202
        assert sorted(collected.get(timeout=TIMEOUT)["body"] for _ in range(5)) == list(range(5))
        assert not slow.all_closed.is_set()  # they were all still connected
        slow.close()
    assert slow.closed == 0


def test_a_request_that_does_not_arrive_within_read_timeout_s_is_cut_off(
    collected, trickle
) -> None:
    source = WebhookSource("/in", port=0, read_timeout_s=0.5)
    with running(collecting_app(source, items=collected)):
        slow = trickle(source, 3, 0.1)  # active all the time: only the deadline stops it
        assert slow.all_closed.wait(10)
        assert post(source, "/in")[0] == 202


def test_an_idle_connection_is_closed_after_idle_timeout_s(collected) -> None:
    source = WebhookSource("/in", port=0, idle_timeout_s=0.5)
    with running(collecting_app(source, items=collected)), connect(source, timeout=10) as sock:
        sock.sendall(head("/in", "Content-Length: 2") + b"{}")
        assert read_response(sock)[0] == 202
        assert closed_by_server(sock)  # within the socket's 10 s


# -- respond="result" keeps threads free for the others -----------------------------------------


def test_waiting_result_requests_leave_threads_for_the_others(collected) -> None:
    accepted = WebhookSource("/accepted", port=0)
    results = WebhookSource("/result", port=0, respond="result", server_threads=4)
    app = OneStepApp("reserve")
    release, running_handlers = threading.Event(), threading.Semaphore(0)

    @app.task(source=accepted)
    def record(ctx: Any, item: Any) -> None:
        collected.put(item)

    @app.task(source=results, concurrency=3)
    def slow(ctx: Any, item: Any) -> Any:
        running_handlers.release()
        release.wait(TIMEOUT)
        return {"n": item["body"]}

    answers: queue.Queue[Any] = queue.Queue()
    with running(app):
        # 4 threads, a quarter kept back: 3 result requests may wait at once.
        waiting = [
            threading.Thread(target=lambda n=n: answers.put(post(results, "/result", b"%d" % n)))
            for n in range(3)
        ]
        for thread in waiting:
            thread.start()
        for _ in range(3):
            assert running_handlers.acquire(timeout=TIMEOUT)
        status, retry_after, _ = post(results, "/result", b"4")
        assert (status, retry_after) == (503, "1")
        for n in range(3):  # accepted requests are served meanwhile
            assert post(accepted, "/accepted", str(n).encode())[0] == 202
        assert [collected.get(timeout=TIMEOUT)["body"] for _ in range(3)] == [0, 1, 2]
        release.set()
        for thread in waiting:
            thread.join(TIMEOUT)
        bodies = sorted(json.loads(answers.get(timeout=TIMEOUT)[2])["n"] for _ in range(3))
        assert bodies == [0, 1, 2]
        assert post(results, "/result", b"5")[2] == b'{"n": 5}'  # the threads came back


# -- server settings ----------------------------------------------------------------------------


def test_server_settings_default_and_follow_the_sources() -> None:
    accepted = WebhookSource("/a", port=0)
    accepted.open()
    try:
        server = accepted._server
        assert server is not None
        assert server.server.adj.connection_limit == DEFAULT_CONNECTION_LIMIT
        assert server.settings.threads == DEFAULT_THREADS
        result = WebhookSource("/r", port=0, respond="result", read_timeout_s=2.5)
        result.open()
        assert result._server is server
        assert server.settings.threads == DEFAULT_RESULT_THREADS
        assert len(server.server.task_dispatcher.threads) == DEFAULT_RESULT_THREADS
        assert server.server.read_timeout_s == 2.5
        result.close()
        assert server.settings.threads == DEFAULT_THREADS
    finally:
        accepted.close()


def test_conflicting_server_settings_on_one_server_name_both_sources() -> None:
    first = WebhookSource("/a", port=0, connection_limit=300, name="first")
    agrees = WebhookSource("/b", port=0, connection_limit=300, name="agrees")
    silent = WebhookSource("/c", port=0, name="silent")  # None: takes the server's
    differs = WebhookSource("/d", port=0, connection_limit=400, name="differs")
    first.open()
    try:
        agrees.open()
        silent.open()
        with pytest.raises(ValueError, match="connection_limit=400 of 'differs' conflicts with"):
            differs.open()
        assert differs.url is None
        assert first._server is not None and first._server.server.adj.connection_limit == 300
        agrees.close()
        silent.close()
    finally:
        first.close()


def test_a_connection_limit_over_the_file_limit_is_refused_at_open() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE is unlimited here: no connection limit can exceed it")
    source = WebhookSource("/a", port=0, connection_limit=soft - FD_RESERVE + 1)
    with pytest.raises(ValueError, match=r"connection_limit=.*ulimit -n"):
        source.open()
    assert source.url is None


# -- a dying server -----------------------------------------------------------------------------


class LoopKiller:
    """Put in waitress's socket map, it ends the server loop: the loop calls readable()
    outside any try."""

    def readable(self) -> bool:
        raise RuntimeError("server loop killed by the test")

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class ReopenedSource(WebhookSource):
    """Reports each open() with the URL it got."""

    keepalive_interval_s = 0.05

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: queue.Queue[str | None] = queue.Queue()

    def open(self) -> None:
        super().open()
        self.opened.put(self.url)


def test_a_dead_server_loop_is_noticed_and_the_source_restarted(collected, caplog) -> None:
    source = ReopenedSource("/in", port=0)
    with running(collecting_app(source, items=collected)):
        first_url = source.opened.get(timeout=TIMEOUT)
        server = source._server
        assert server is not None
        waitress_server = server.server
        waitress_server.trigger.pull_trigger(
            lambda: waitress_server._map.__setitem__(-1, LoopKiller())
        )
        server.thread.join(TIMEOUT)
        assert not server.thread.is_alive()
        second_url = source.opened.get(timeout=15)  # the supervisor restarted the source
        assert second_url is not None and second_url != first_url  # a new server (port 0)
        assert source._server is not server and source._server is not None
        assert post(source, "/in", b'"after"')[0] == 202
        assert collected.get(timeout=TIMEOUT)["body"] == "after"
    assert any("server loop killed by the test" in r.getMessage() for r in caplog.records)
