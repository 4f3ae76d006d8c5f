"""This process's shutdown state, which /ready reports.

A worker turns not ready when the master announces a shutdown, before it stops
accepting connections, so that load balancers and Kubernetes endpoints stop sending
new traffic while the drain delay runs.
"""

from __future__ import annotations

import time

_shutdown_started: float | None = None


def begin_shutdown() -> None:
    """Mark this process as shutting down; idempotent."""
    global _shutdown_started
    if _shutdown_started is None:
        _shutdown_started = time.monotonic()


def shutting_down() -> bool:
    return _shutdown_started is not None
