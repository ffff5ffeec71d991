"""Killing what `executor="process"` started, whatever happens to the app: a worker with
everything it started (a timeout, a crash, a stop), and the whole thespian tree, by the
watchdog process when the app dies without stopping it (SIGKILL, the OOM killer).

Used by `onestep.executor._thespian` and `onestep.executor._pool` (the app's side), and
run by the former as
`python -m onestep.executor._watchdog APP_PID MARKER_INODE TOKEN CHANNELS_DIR`
BEFORE the ActorSystem is created, so that it guards the admin from the moment the admin
exists. The admin, its logger and the workers cannot be found by their parent (thespian
daemonizes the admin: it runs in a new session under init), so they carry a marker
instead: the app creates a pipe just before it creates the ActorSystem and closes its own
ends just after, so the processes that fork from the admin (fork start method) hold that
pipe's read end and nothing else does; spawned ones (spawn start method) have TOKEN in
their environment (set in the app's environment while the admin starts). The watchdog
waits for the app to exit (a pidfd: no polling) or for `stop` on its stdin (a normal stop,
where the app killed the tree itself), then kills every marked process, the process group
each worker leads and what is still under them, removes the channels directory and exits.
Linux only (it reads /proc); elsewhere it exits without killing anything.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3 on of /proc/PID/stat (state, ppid, pgrp, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not): /proc on Linux, kill(0) elsewhere."""
    fields = proc_stat(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X")
    if os.path.isdir("/proc"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _table() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, pgid)} of every running process (zombies left out), from /proc."""
    table: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                fields = proc_stat(int(name))
                if fields is not None and fields[0] not in ("Z", "X"):
                    table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _closure(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    """`roots`, every process in a group one of them leads, and every descendant."""
    found = {pid for pid in roots if pid in table}
    found |= {pid for pid, (_, pgid) in table.items() if pgid in roots}
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _stop_then_kill(roots: set[int], more: set[int] | None = None) -> None:
    """SIGKILL `roots`, the groups they lead and their descendants (and `more`). Stopped
    first, then looked for again: a stopped process forks nothing, so the second look
    finds every process (once a parent is dead its children are re-parented and no
    longer found under it)."""
    if not os.path.isdir("/proc"):
        for pid in roots:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return
    stopped: set[int] = set()
    for _ in range(3):  # until a look finds nothing new (a fork races the first SIGSTOP)
        table = _table()
        found = _closure(roots, table) | {pid for pid in more or () if pid in table}
        new = found - stopped
        if not new:
            break
        for pid in new:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped | roots:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for group in roots:  # a group whose leader is gone (a crashed worker's children)
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)


def kill_worker(pid: int) -> None:
    """SIGKILL a worker process and what its handler started: the worker leads its own
    process group (set as it starts), so the group is killed, and so is every descendant
    still under it (a child that called setsid but has not left the tree). Any thread."""
    _stop_then_kill({pid})


def _marked(inode: int, token: bytes) -> set[int]:
    """Processes holding the marker pipe (inode) or with `token` in their environment."""
    me = os.getpid()
    link = f"pipe:[{inode}]"
    found: set[int] = set()
    names: list[str] = []
    with contextlib.suppress(OSError):
        names = [n for n in os.listdir("/proc") if n.isdigit() and int(n) != me]
    for name in names:
        with contextlib.suppress(OSError):
            if token:
                with open(f"/proc/{name}/environ", "rb") as env:
                    if token in env.read().split(b"\0"):
                        found.add(int(name))
                        continue
            for fd in os.listdir(f"/proc/{name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{name}/fd/{fd}") == link:
                        found.add(int(name))
                        break
    return found


def kill_marked(inode: int, token: bytes) -> None:
    """SIGKILL every process of the executor's thespian tree: the marked ones (admin,
    logger, workers, the processes their handlers forked), the groups the workers lead
    and everything under them. The app calls it as it stops; the watchdog when the app
    died."""
    if not os.path.isdir("/proc"):
        return
    roots = _marked(inode, token)
    _stop_then_kill(roots)
    # a marked process forked between the look and the SIGSTOP: one more pass
    late = _marked(inode, token)
    if late:
        _stop_then_kill(late)


def _wait_for_app(app_pid: int) -> None:
    """Return once the app exited, or its stdin said `stop` (then exit at once)."""
    try:
        pidfd = os.pidfd_open(app_pid)
    except (OSError, AttributeError):
        return  # already gone (or no pidfd: see the loop below)
    if os.getppid() != app_pid:  # it died, and the pid was reused, before the open
        return
    stdin = sys.stdin.buffer.fileno()
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(stdin, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == pidfd:
                return
            data = os.read(stdin, 64)
            if b"stop" in data:
                sys.exit(0)
            if not data:  # the app closed its end without a word: treat it as gone
                return


def main(argv: list[str]) -> int:
    app_pid, inode, token, channels = int(argv[1]), int(argv[2]), argv[3], argv[4]
    for signum in (signal.SIGINT, signal.SIGTERM):  # signals to the app's group: not ours
        signal.signal(signum, signal.SIG_IGN)
    if not os.path.isdir("/proc"):
        sys.stdin.buffer.read()
    else:
        _wait_for_app(app_pid)
        if os.getppid() == app_pid and not hasattr(os, "pidfd_open"):
            while os.getppid() == app_pid:  # no pidfd (old Python): watch the parent
                time.sleep(0.2)
        kill_marked(inode, token.encode())
    if channels:
        shutil.rmtree(channels, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
