"""What a `onestep run --processes N` parent holds for its run besides the workers: the
listening sockets they share, the run's private directory and the wake-up the parent
sleeps on. Built and released by ProcessSupervisor (onestep.processes) on its thread.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
from typing import TYPE_CHECKING

from . import _sockets as _listen
from ._wakeup import Wakeup

if TYPE_CHECKING:
    from ..core import AppCore as OneStepApp

logger = logging.getLogger("onestep.processes")


class ListenFailed(Exception):
    """A server address of the app cannot be bound; the message names the task."""


class RunResources:
    """The sockets (`sockets`, by address as the sources give it), the run directory
    (`run_dir`, '' when there is none) and the `wakeup`. `release()` gives them all back,
    and removes the directory even when closing something else failed."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.run_dir = ""
        self.wakeup = Wakeup()

    def bind(self, app: OneStepApp, workers: int) -> None:
        """Bind every standalone server address of `app`'s sources once (a
        WebhookSource's `listen_address`), for `workers` workers to share. Raises
        ListenFailed when one cannot be bound."""
        for name, spec in app.tasks.items():
            address = getattr(spec.source, "listen_address", None)
            if address is None or tuple(address) in self.sockets:
                continue
            host, port = address
            try:
                sock = _listen.bind(host, port)
            except OSError as exc:
                raise ListenFailed(f"task {name!r} cannot listen on {host}:{port}: {exc}") from exc
            self.sockets[(host, port)] = sock
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            logger.info(
                "listening on http://%s:%d (task %r), shared by the %d workers",
                shown,
                bound_port,
                name,
                workers,
            )

    def make_run_dir(self) -> str:
        self.run_dir = tempfile.mkdtemp(prefix="onestep-run-")
        return self.run_dir

    def release(self) -> None:
        """Close the sockets and the wake-up, remove the run directory. Idempotent."""
        try:
            for sock in self.sockets.values():
                sock.close()
            self.sockets.clear()
            with contextlib.suppress(OSError):  # closed already
                self.wakeup.close()
        finally:
            if self.run_dir:
                run_dir, self.run_dir = self.run_dir, ""
                shutil.rmtree(run_dir, ignore_errors=True)
