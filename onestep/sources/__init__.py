"""Built-in sources: MemoryQueue and the schedules (interval, cron). Imports the core and
the state stores; imported by the public package, the dead-letter tooling and the
preflight checks of `--processes`.
"""

from ._cron import CronSource
from ._interval import IntervalSource
from ._memory import MemoryQueue
from ._schedule import ScheduleSource

__all__ = ["CronSource", "IntervalSource", "MemoryQueue", "ScheduleSource"]
