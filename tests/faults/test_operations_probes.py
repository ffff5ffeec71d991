"""The `onestep run --http` endpoint under hostile clients, as a real process: idle
connections and clients trickling half-sent requests must not keep the liveness probe
from being answered, and a bad `--http` address is a configuration error (exit 2)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.faults.processes_support import Parent
from tests.faults.test_operations_http import OPS_APPS, get, serving_url, wait_until

IDLE_CONNECTIONS = 100
SLOW_CONNECTIONS = 150
PROBE_TIMEOUT_S = 2.0


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def probe(url: str) -> tuple[int, str, float]:
    """GET `url` on a new connection; status, body and seconds taken. Raises (a timeout)
    when no answer comes within PROBE_TIMEOUT_S."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
        body = response.read().decode()
        return response.status, body, time.monotonic() - started


def test_healthz_is_answered_while_clients_trickle_and_idle(
    parents: list[Parent], sockets: list[socket.socket]
) -> None:
    parent = Parent(f"{OPS_APPS}:fifty_and_one", "--http", "127.0.0.1:0", "--status-interval", "0")
    parents.append(parent)
    url = serving_url(parent)
    wait_until(lambda: get(url + "healthz")[0] == 200, "/healthz 200")
    address = ("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))

    for _ in range(IDLE_CONNECTIONS):  # connected, nothing sent
        sockets.append(socket.create_connection(address, timeout=5))
    slow = []
    for n in range(SLOW_CONNECTIONS):  # a request line and part of a header, no end
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(f"GET /healthz?slow={n} HTTP/1.1\r\nHost: t\r\nX-Slow: ".encode())
        slow.append(sock)
    sockets.extend(slow)

    # Each round every slow client sends one more byte (its request never ends), then
    # the probes must be answered on a new connection within the timeout.
    for _ in range(3):
        for sock in slow:
            sock.sendall(b"a")
        status, body, took = probe(url + "healthz")
        assert status == 200 and json.loads(body)["status"] == "ok", body
        assert took < PROBE_TIMEOUT_S
        status, _, _ = probe(url + "metrics")
        assert status == 200
    # the slow clients were held, not answered: none of them got a byte back
    for sock in slow[:10]:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)

    parent.signal(2)
    assert parent.wait() == 0, parent.err.tail()


@pytest.mark.parametrize("address", ["nosuch.invalid:9100", "192.0.2.1:9100"])
def test_an_http_address_that_cannot_be_resolved_or_bound_exits_2_in_one_line(
    parents: list[Parent], address: str
) -> None:
    """nosuch.invalid never resolves (RFC 6761); 192.0.2.1 (TEST-NET-1) is on no
    interface of this machine, so it cannot be bound."""
    parent = Parent(f"{OPS_APPS}:fifty_and_one", "--http", address)
    parents.append(parent)
    assert parent.wait() == 2
    lines = [line for line in parent.err.rest() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [lines[-1]], lines
    assert f"cannot serve --http on {address}" in errors[0]
    assert "Traceback" not in "\n".join(lines)
