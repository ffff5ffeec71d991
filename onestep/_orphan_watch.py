"""A watchdog process for `executor="process"`: when the app that started it is gone, it
kills the thespian admin's process tree (admin, logger, worker processes), removes the
directory of the workers' channel sockets, and exits.

Started by `onestep._thespian_pool` as
`python -m onestep._orphan_watch ADMIN_PID START CHANNELS_DIR`,
with a pipe from the app on stdin. The kernel closes that pipe when the app exits however
it exits (SIGKILL, the OOM killer), so end of input is the signal, with no polling. The
admin is started by thespian and cannot watch its parent itself; a normal `app.stop()`
shuts the ActorSystem down first and then closes the pipe, and this finds nothing left.
Linux only (it reads /proc); elsewhere it exits without killing anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3 on of /proc/PID/stat (state, ppid, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields is not None:
                parents[int(name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def kill_tree(admin_pid: int, start_time: str) -> None:
    """SIGKILL the admin and everything under it, if the admin is still the process that
    started at `start_time` (not a later one that reused its pid)."""
    fields = proc_stat(admin_pid)
    if fields is None or fields[19] != start_time:
        return
    # Stop the tree first, then look again: a stopped process forks nothing, so the
    # second look finds every process (once the admin is dead its children would be
    # re-parented and no longer found under it).
    for pid in {admin_pid, *_descendants(admin_pid)}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    for pid in {admin_pid, *_descendants(admin_pid)}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    admin_pid, start_time = int(argv[1]), argv[2]
    for signum in (signal.SIGINT, signal.SIGTERM):  # signals to the app's group: wait for EOF
        signal.signal(signum, signal.SIG_IGN)
    sys.stdin.buffer.read()
    if os.path.isdir("/proc"):
        kill_tree(admin_pid, start_time)
    if len(argv) > 3 and argv[3]:
        shutil.rmtree(argv[3], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
