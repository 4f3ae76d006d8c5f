"""SIGTERM and SIGINT during a maintenance job: end the work through its normal failure path.

Kubernetes sends SIGTERM when a Job reaches activeDeadlineSeconds, when the Job is
deleted and when its node is drained. Python's default for SIGTERM ends the process
at once, which would leave the run's lock, scratch servers and temporary files behind.
SIGKILL cannot be handled: a killed run leaves its lock until the lock expires.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Self

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobTerminated(BaseException):
    """SIGTERM or SIGINT stopped a job run.

    It derives from BaseException, as KeyboardInterrupt does, so that the checks'
    own handlers (`except Exception`, `except BackupFailed`) do not report it as a
    problem of the backup and carry on.
    """

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        # The shell's convention for a process ended by a signal: 128 + the signal number.
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {self.signal_name}")


class StopSignals:
    """Handlers for SIGTERM and SIGINT while a job runs; the previous handlers come back on exit.

    Inside `raising()`, the first signal raises JobTerminated in the main thread, so the
    work's with-blocks and finally-clauses stop its servers and delete its files. A
    signal at any other time, including a second one during that cleanup, is only
    stored in `received`, so that nothing cuts the cleanup or the job's record short.
    Install it from the main thread only, as the signal module requires.

    NOTE: a signal during the few milliseconds in which subprocess.Popen starts a
    program can leave that program running, because Popen returns no handle to stop it.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, _type: type[BaseException] | None, _value: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Raise JobTerminated for the first signal received inside the block, or at once for an earlier one."""
        if self.received:
            raise JobTerminated(self.received[0])
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._armed:
            self._armed = False
            raise JobTerminated(signum)
