"""The exit codes of `onestep` commands, one table for the CLI (onestep.cli) and the
`--processes` parent (onestep.processes), which exits with its first worker's code."""

from __future__ import annotations

#: A clean stop (a signal drained the app, or it stopped by itself).
EXIT_OK = 0
#: The app crashed, a worker died too often, or an endpoint failed to open.
EXIT_CRASHED = 1
#: A configuration error: a bad target or option, an app without tasks, an address for
#: `--http` that cannot be resolved or bound. Restarting will not help (a systemd unit
#: lists it in RestartPreventExitStatus).
EXIT_BAD_TARGET = 2
