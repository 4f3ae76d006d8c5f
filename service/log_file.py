"""The optional log file: the same JSON lines as stdout, rotated by size and time, archives gzipped.

concurrent-log-handler's ConcurrentTimedRotatingFileHandler does the work: the
gunicorn master and every worker write the one file, and its lock file serialises
writes and rotations across processes. It notices a fork and reopens its lock, so a
handler created in the master stays safe in the workers that inherit it. It also
reopens the log file when its path names another file, and the handler here does the
same for the lock file, so that all processes lock one file again after the log
directory was removed and made anew.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

from service.config import Settings
from service.logs import json_formatter

# Set on our handlers so that attaching again (a second create_app, a reload) replaces them.
_MARK = "_gatehouse_log_file"


# rw-r----- for the log, its lock file and its archives: a log shipper can read them
# through the group, and other users cannot read client addresses and account ids.
LOG_FILE_MODE = 0o640
LOG_FILE_UMASK = 0o027
# A log file that cannot be written (its directory removed, the disk full) is reported on
# stderr at most once per this many seconds in each process, with the records lost since.
WRITE_FAILURE_REPORT_SECONDS = 60.0


class _WriteFailures:
    """Report a log file's failed writes as one JSON line on stderr per interval.

    logging's default prints a traceback to stderr for every record that fails, which
    is neither JSON nor bounded. stdout still gets every record, so the line only needs
    to say that the file misses them.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._last_report = float("-inf")
        self._lost = 0

    def record(self, error: BaseException | None) -> None:
        self._lost += 1
        now = time.monotonic()
        if now - self._last_report < WRITE_FAILURE_REPORT_SECONDS:
            return

        line = {"event": "log_file_write_failed", "level": "error", "path": self._path,
                "error": f"{type(error).__name__}: {error}" if error else "unknown", "records_lost": self._lost,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        try:
            sys.stderr.write(json.dumps(line, separators=(",", ":")) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            return
        self._last_report = now
        self._lost = 0


_WRITE_FAILURES: dict[str, _WriteFailures] = {}


def _handler_class() -> type[logging.Handler]:
    """Import the handler class without letting its lock library import redis.

    portalocker, which concurrent-log-handler locks with, imports redis when it is
    installed, for a Redis lock this service does not use. The gunicorn master must
    not import redis before it forks: gevent patches sockets in the workers only after
    the fork. A None entry in sys.modules makes that one import fail, and portalocker
    goes on without its Redis lock.
    """
    blocked = "redis" not in sys.modules
    if blocked:
        sys.modules["redis"] = None  # type: ignore[assignment]
    try:
        from concurrent_log_handler import ConcurrentTimedRotatingFileHandler
    finally:
        if blocked and sys.modules.get("redis", False) is None:
            del sys.modules["redis"]

    return ConcurrentTimedRotatingFileHandler


def _close_replaced_lock(handler: logging.Handler) -> None:
    """Close a handler's lock file when its path names another file now, or none.

    The handler keeps its lock file open. When the log directory is removed and made
    again, a process started afterwards creates a new lock file, while the running ones
    would keep locking the removed one, and their writes and rotations would no longer
    exclude each other's. Once closed, the next write opens the file the path names.
    """
    lock = handler.stream_lock
    if lock is None or lock.closed:
        return
    try:
        on_disk, opened = os.stat(handler.lockFilename), os.fstat(lock.fileno())
        replaced = (on_disk.st_ino, on_disk.st_dev) != (opened.st_ino, opened.st_dev)
    except OSError:
        replaced = True
    if replaced:
        # With the handler's thread lock, no other thread of this process holds the file lock.
        with handler._thread_lock:
            if handler.stream_lock is lock and not handler.is_locked:
                lock.close()
                handler.stream_lock = None


def _archive_name(default_name: str) -> str:
    """Add the UTC time of day in microseconds to an archive name: NAME.PERIOD.HHMMSSffffff.

    The handler names every archive of one period NAME.PERIOD (NAME.YYYY-MM-DD for daily
    rotation), adding .1, .2 and so on for further size rotations, and reuses the lowest
    free number once retention has deleted its file. Retention deletes the lowest numbers first, so a reused number made
    it delete the newest archive and keep older ones. A number that grows with the time of
    rotation sorts archives in the order they were written.
    """
    now = datetime.now(UTC)
    return f"{default_name}.{now:%H%M%S%f}"


def build_handler(settings: Settings) -> logging.Handler | None:
    """Return a rotating file handler for GATEHOUSE_LOG_FILE, or None when no file is configured."""
    if settings.log_file is None:
        return None

    # One per path in a process: a worker's root logger and gunicorn's loggers have handlers of their own.
    failures = _WRITE_FAILURES.setdefault(str(settings.log_file), _WriteFailures(str(settings.log_file)))

    class Handler(_handler_class()):  # type: ignore[misc, valid-type]
        def emit(self, record: logging.LogRecord) -> None:
            # NOTE: relies on concurrent-log-handler 0.9's attributes of the inner handler
            # (stream_lock, lockFilename, is_locked, _thread_lock); tests/test_log_file.py
            # fails when they change.
            _close_replaced_lock(self.clh)
            super().emit(record)

        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
            failures.record(sys.exc_info()[1])

    handler = Handler(
        str(settings.log_file),
        when=settings.log_file_rotate_when,
        interval=settings.log_file_rotate_interval,
        backupCount=settings.log_file_backups,
        maxBytes=settings.log_file_max_bytes,
        use_gzip=True,
        utc=True,
        encoding="utf-8",
        # concurrent-log-handler 0.9.31 creates the lock file with os.open's default mode
        # 0o777, so the umask alone leaves it rwxr-x---. chmod sets every file the handler
        # opens to LOG_FILE_MODE, which also corrects a lock file left with mode 750.
        chmod=LOG_FILE_MODE,
        umask=LOG_FILE_UMASK,
    )
    handler.namer = _archive_name
    handler.setFormatter(json_formatter())
    setattr(handler, _MARK, True)
    return handler


def attach(settings: Settings, *loggers: logging.Logger) -> None:
    """Add one log file handler to each logger, replacing any added before; no-op without a file."""
    handler = build_handler(settings)
    for logger in loggers:
        for old in [existing for existing in logger.handlers if getattr(existing, _MARK, False)]:
            logger.removeHandler(old)
            old.close()
        if handler is not None:
            logger.addHandler(handler)
