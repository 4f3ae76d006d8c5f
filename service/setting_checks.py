"""Checks of settings that reach beyond the value itself, such as whether a path can be written.

service.config calls them from its validators, so a failure becomes a ValueError that
names the variable in the one-line start-up error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def log_lock_file(log_file: Path) -> Path:
    """Return the lock file that concurrent-log-handler keeps beside a log file: .__NAME.lock.

    NAME is the file name without a final ".log", as the handler's baseLockFilename
    (concurrent-log-handler 0.9.31) builds it.
    """
    name = log_file.name.removesuffix(".log")
    return log_file.with_name(f".__{name}.lock")


def check_can_create_file(directory: Path) -> None:
    """Raise ValueError unless this process can create a file in directory.

    The check creates a temporary file because os.access() reports directories such
    as /sys as writable for root, although creating a file there fails. TemporaryFile
    deletes the file before it returns.
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"cannot create a file in directory {directory}: {exc.strerror}") from None


def check_can_open(path: Path, flags: int) -> None:
    """Raise ValueError when path exists but is not a regular file or does not open with the os.open flags."""
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file")

    try:
        os.close(os.open(path, flags))
    except OSError as exc:
        raise ValueError(f"cannot open {path} to write: {exc.strerror}") from None
