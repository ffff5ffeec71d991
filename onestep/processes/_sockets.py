"""Listening sockets shared by the worker processes of `onestep run --processes N`.

The parent (`onestep.processes._supervisor`) binds each server address once with `bind()` and hands
the sockets to its workers; in a worker, `adopt_inherited()` takes them over at start and
a standalone server (the webhook adapter's) asks `inherited_socket(host, port)` for the
one to serve instead of binding its own. Every worker then accepts on the same port.
"""

from __future__ import annotations

import json
import os
import socket
import threading

#: Environment variable by which the parent passes `[[host, port, fd], ...]` (JSON).
ENV_VAR = "ONESTEP_LISTEN_FDS"
#: waitress's default listen backlog; the server sets its own again when it starts.
BACKLOG = 1024

_lock = threading.Lock()
_inherited: dict[tuple[str, int], socket.socket] = {}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first address `host` resolves to, as a waitress
    server would bind it (SO_REUSEADDR; IPv6 only on an IPv6 address). Port 0 binds a
    free port: `getsockname()` tells which. Raises OSError (address in use...)."""
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
    )
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def encode(sockets: dict[tuple[str, int], socket.socket]) -> str:
    """The value of ENV_VAR for a worker that inherits `sockets` (by their fds)."""
    return json.dumps([[host, port, sock.fileno()] for (host, port), sock in sockets.items()])


def adopt_inherited() -> int:
    """In a worker, at start: take over the sockets named in ENV_VAR (and remove it, so
    that processes this worker starts do not look for descriptors they lack). Returns how
    many were adopted."""
    text = os.environ.pop(ENV_VAR, None)
    if not text:
        return 0
    entries = json.loads(text)
    with _lock:
        for host, port, fd in entries:
            os.set_inheritable(fd, False)  # not passed on to processes the app starts
            _inherited[(str(host), int(port))] = socket.socket(fileno=int(fd))
    return len(entries)


def inherited_socket(host: str, port: int) -> socket.socket | None:
    """A new socket object on the listening socket the parent bound for `(host, port)`
    (the address as the source gives it, so port 0 too), or None when there is none: a
    single process, or an address the parent did not bind. The caller owns and closes
    the returned object; the inherited one stays open for a server that replaces it."""
    with _lock:
        sock = _inherited.get((host, port))
        return None if sock is None else sock.dup()
