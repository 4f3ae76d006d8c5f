"""The master's exclusive claim on PROMETHEUS_MULTIPROC_DIR, held for the master's lifetime.

prometheus_client sums every metric file (*.db) in the directory, so the master deletes
them at start: files left by an earlier run would be added to this run's counters. It
deletes nothing else, so a mistaken value such as a home directory loses no data. A
second server started with the same directory would delete them under the first one,
whose /metrics would then lose its counters without any error. So the master takes
an flock on a lock file inside the directory before it deletes anything, and a
master that cannot take the lock stops instead.

The lock file sits inside the directory because the directory may be a volume
mount point whose parent is read-only (the chart mounts an emptyDir there). The
kernel releases an flock when its last file descriptor closes, so the file that a
killed master leaves behind does not block the next start. Workers close the
descriptor they inherit at fork, so only the master keeps the lock, and a killed
master's lock is gone at once, even while its orphaned workers still run.
"""

from __future__ import annotations

import fcntl
import os

# prometheus_client's multiprocess mode reads and writes only files with this suffix.
METRIC_FILE_SUFFIX = ".db"
# Not a *.db file, so prometheus_client never reads it as metrics.
LOCK_FILE_NAME = ".gatehouse-master.lock"

_lock_fd: int | None = None


class MetricsDirInUse(RuntimeError):
    """Another live gunicorn master holds the lock on the metrics directory."""

    def __init__(self, path: str, holder_pid: int | None) -> None:
        holder = f"gunicorn master {holder_pid}" if holder_pid else "another gunicorn master"
        super().__init__(
            f"PROMETHEUS_MULTIPROC_DIR={path} is in use by {holder}, which is still running. "
            "Give each server its own PROMETHEUS_MULTIPROC_DIR."
        )
        self.path = path
        self.holder_pid = holder_pid


def claim_metrics_dir(path: str) -> None:
    """Lock the metrics directory for this process, then delete the metric files in it.

    Raise MetricsDirInUse when another live master holds the lock. The lock stays until
    this process exits. It is taken before any file is deleted, so that a master that
    loses the race deletes nothing.
    """
    global _lock_fd

    os.makedirs(path, exist_ok=True)
    # O_CLOEXEC: a program this master executes, such as the new master of a USR2
    # upgrade, does not inherit the lock.
    fd = os.open(os.path.join(path, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder_pid = _read_pid(fd)
        os.close(fd)
        raise MetricsDirInUse(path, holder_pid) from None

    # The pid only names the holder in the error of a master that finds the directory locked.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _lock_fd = fd
    _delete_metric_files(path)


def close_inherited_lock() -> None:
    """Close the lock's file descriptor in a forked worker, leaving the master's lock in place.

    close() rather than flock(LOCK_UN): an unlock through any copy of the descriptor
    would release the master's lock too.
    """
    global _lock_fd

    if _lock_fd is not None:
        os.close(_lock_fd)
        _lock_fd = None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def _delete_metric_files(path: str) -> None:
    """Delete the metric files that prometheus_client writes (*.db), and leave every other entry alone."""
    for entry in os.scandir(path):
        if not entry.name.endswith(METRIC_FILE_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
