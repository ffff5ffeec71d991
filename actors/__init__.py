"""The actor engine under onestep: source, task, sink, supervisor and event actors on pykka.

It imports only pykka and the standard library; `onestep` drives it through the
protocols in `actors._ports`.
"""

from ._admission import AdmissionRefused
from ._atomic import GIL_ATOMIC
from ._failure import EncodeError, HandlerFailed, RemoteFailure, failure_from, timeout_failure
from ._failure_log import FAILURES, FailureLog
from ._loop import EventLoopThread
from ._ports import (
    AdmissionPort,
    EventRecord,
    ExecutorPort,
    Failure,
    RetryPort,
    SinkPort,
    SourcePort,
    TaskPort,
)
from ._sink import PublishJob, SinkRoute
from ._stats import DURATION_BUCKETS, RuntimeStats, TaskStats
from ._supervisor import AppFailed, RestartPolicy
from ._system import ActorSystem, StartupError
from ._timer import Timer

__all__ = [
    "DURATION_BUCKETS",
    "FAILURES",
    "GIL_ATOMIC",
    "ActorSystem",
    "AdmissionPort",
    "AdmissionRefused",
    "AppFailed",
    "EncodeError",
    "EventLoopThread",
    "EventRecord",
    "ExecutorPort",
    "Failure",
    "FailureLog",
    "HandlerFailed",
    "PublishJob",
    "RemoteFailure",
    "RestartPolicy",
    "RetryPort",
    "RuntimeStats",
    "SinkPort",
    "SinkRoute",
    "SourcePort",
    "StartupError",
    "TaskPort",
    "TaskStats",
    "Timer",
    "failure_from",
    "timeout_failure",
]
