"""Crash diagnostics: faulthandler for fatal signals, greenlet stacks for aborted workers."""

from __future__ import annotations

import faulthandler
import sys

import structlog

log = structlog.get_logger("gatehouse.lifecycle")


def enable_faulthandler() -> None:
    """Print the Python stack of every thread to stderr on SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL.

    A fatal signal leaves no chance to log through Python, so faulthandler writes
    plain text straight to the file descriptor. It is the one output that is not JSON.
    """
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)


def log_greenlet_stacks(worker_pid: int, reason: str) -> None:
    """Log the stack of every greenlet and thread of this worker as one event.

    Runs inside the signal handler of a worker that the master is about to kill,
    usually because its event loop stopped turning. The stack of the greenlet that
    blocked the loop shows the cause.
    """
    from gevent.util import format_run_info

    try:
        stacks = "\n".join(format_run_info(thread_stacks=True, greenlet_stacks=True))
    except Exception as exc:  # a failing dump must not hide the abort itself
        stacks = f"stack dump failed: {exc!r}"
    log.critical("worker_stacks_dumped", worker_pid=worker_pid, reason=reason, stacks=stacks)
