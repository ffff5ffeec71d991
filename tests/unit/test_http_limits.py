"""The operations endpoint (`onestep.http.HttpServer`) on the guarded server it shares
with the webhook (onestep/_serving.py), over real sockets: a request that does not arrive
in time and an idle connection are cut off, a body is never read, bad settings are named."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from onestep import OneStepApp
from onestep.http import HttpServer, serve_http

TIMEOUT = 10.0


@pytest.fixture
def server() -> Iterator[HttpServer]:
    app = OneStepApp("http-limits")
    with serve_http(app, "127.0.0.1", 0, read_timeout_s=0.5, idle_timeout_s=0.5) as running:
        yield running


def connect(server: HttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed `sock`; the socket's timeout bounds each
    read (a timeout raises: the server did not close it)."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def test_a_request_that_does_not_arrive_within_read_timeout_s_is_cut_off(
    server: HttpServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        # the client stays active: only the read deadline (0.5 s) can end it
        sock.sendall(b"a")
        assert closed_by_server(sock) == b""


def test_an_idle_connection_is_closed_after_idle_timeout_s(server: HttpServer) -> None:
    with connect(server) as sock:
        assert closed_by_server(sock) == b""


def test_a_request_body_is_refused_unread_and_the_connection_closed(
    server: HttpServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        answer = closed_by_server(sock)  # answered without the million bytes
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 405"), answer[:200]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("connection_limit", 0),
        ("threads", 1),
        ("read_timeout_s", 0),
        ("idle_timeout_s", -1.0),
    ],
)
def test_bad_settings_are_named(setting: str, value: object) -> None:
    app = OneStepApp("http-limits-bad")
    with pytest.raises(ValueError, match=setting):
        serve_http(app, "127.0.0.1", 0, **{setting: value})


def test_a_host_that_cannot_be_resolved_raises_oserror_naming_it() -> None:
    app = OneStepApp("http-limits-host")
    with pytest.raises(OSError):
        serve_http(app, "nosuch.invalid", 0)
