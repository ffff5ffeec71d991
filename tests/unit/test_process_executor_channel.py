"""The data channel of `executor="process"` (onestep.executor._channel.accept): the app's
end accepts a worker's connection only once the peer proved it holds the key, and
unpickles nothing a peer sends before that. In one process: the peer is a thread."""

from __future__ import annotations

import os
import socket
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection

import pytest
import thespian  # noqa: F401  (the test extra has it: missing, it fails, never skips)

from onestep.executor._channel import accept as _accept


class Marker:
    """Unpickling this creates the file `path` (what a hostile pickle could do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def listening(tmp_path):
    path = str(tmp_path / "w1")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    yield path, sock
    sock.close()


def peer(target, *args):
    """Run `target(*args)` on a thread; its result or exception in the returned dict."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = target(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_worker_with_the_key_is_accepted_and_messages_flow_both_ways(listening):
    path, sock = listening
    key = os.urandom(32)
    thread, outcome = peer(Client, path, "AF_UNIX", key)
    conn = _accept(sock, key, os.getpid())
    thread.join(10)
    worker = outcome["value"]
    conn.send({"run": 1})
    assert worker.recv() == {"run": 1}
    worker.send(("done", 1))
    assert conn.poll(10) and conn.recv() == ("done", 1)
    worker.close()
    assert conn.poll(10)
    with pytest.raises(EOFError):  # a worker that dies closes its end: "crashed"
        conn.recv()
    conn.close()


def test_a_peer_with_another_key_is_refused_on_both_sides(listening):
    path, sock = listening
    thread, outcome = peer(Client, path, "AF_UNIX", os.urandom(32))
    with pytest.raises(RuntimeError, match=r"pid \d+\) failed the channel's authentication"):
        _accept(sock, os.urandom(32), os.getpid())
    thread.join(10)
    assert isinstance(outcome.get("error"), AuthenticationError | EOFError | OSError)


def test_nothing_a_peer_without_the_key_sends_is_unpickled(listening, tmp_path):
    path, sock = listening
    marker = tmp_path / "unpickled"

    def intruder():
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        conn = Connection(raw.detach())
        try:
            conn.send(Marker(str(marker)))  # a pickle in place of the challenge's answer
            conn.send(Marker(str(marker)))
            conn.recv_bytes()
        finally:
            conn.close()

    thread, _ = peer(intruder)
    with pytest.raises(RuntimeError, match="failed the channel's authentication"):
        _accept(sock, os.urandom(32), os.getpid())
    thread.join(10)
    assert not marker.exists()
