"""Metric files whose disk blocks are allocated before prometheus_client maps them.

In multiprocess mode prometheus_client keeps each process's samples in a file in
PROMETHEUS_MULTIPROC_DIR, which it sizes with truncate() and writes through mmap.
truncate() allocates no blocks, so it succeeds on a full file system, and the first
write to a page without a block then kills the process with SIGBUS. On a full
directory every new worker died that way before it served a request, and gunicorn
started the next one at once, thousands of times in ten minutes, with a stack dump
each and no line naming the cause.

AllocatedMmapedDict allocates a file's blocks with posix_fallocate() before they are
mapped, when the file is created and before it grows, and raises MetricFileFull
where that fails. open_metric_file, which install() makes prometheus_client use, keeps
the process serving then: the samples that have no room stay in the process's
memory, out of /metrics, and metric_file_full is logged at most once a minute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import structlog
from prometheus_client import values
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict

log = structlog.get_logger(__name__)

# How often each process logs metric_file_full while samples are being lost.
REPORT_INTERVAL_SECONDS = 60.0
_last_report = float("-inf")
_unreported = 0


class MetricFileFull(OSError):
    """The blocks of a metric file could not be allocated, as on a full PROMETHEUS_MULTIPROC_DIR."""


def _allocate(filename: str, size: int) -> None:
    # A descriptor of its own without O_APPEND: MmapedDict opens the file with "a+b", and
    # where the file system lacks fallocate(2) (ramfs, NFS before 4.2), glibc emulates it
    # by writing, which fails with EBADF on an O_APPEND descriptor.
    try:
        fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.posix_fallocate(fd, 0, max(size, os.fstat(fd).st_size))
        finally:
            os.close(fd)
    except OSError as exc:
        raise MetricFileFull(exc.errno, f"cannot allocate {size} bytes for the metric file {filename} in "
                                        f"PROMETHEUS_MULTIPROC_DIR: {exc.strerror}") from None


class AllocatedMmapedDict(MmapedDict):
    """prometheus_client's MmapedDict with every mapped byte of its file allocated on disk first."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            _allocate(filename, _INITIAL_MMAP_SIZE)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        # The entry's size as MmapedDict._init_value packs it: the key's length (4 bytes),
        # the key padded to 8-byte alignment, the value and the timestamp (8 bytes each).
        encoded = key.encode("utf-8")
        entry = 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16
        capacity = self._capacity
        while self._used + entry > capacity:
            capacity *= 2
        if capacity != self._capacity:
            _allocate(self._fname, capacity)
        super()._init_value(key)

    def read_value(self, key: str) -> tuple[float, float]:
        try:
            return super().read_value(key)
        except MetricFileFull as exc:
            _report(exc)
            return 0.0, 0.0

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        try:
            super().write_value(key, value, timestamp)
        except MetricFileFull as exc:
            _report(exc)


class UnsavedValues:
    """The values of a metric file that could not be created: kept in memory, left out of /metrics."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}

    def read_value(self, key: str) -> tuple[float, float]:
        return self._values.get(key, (0.0, 0.0))

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        self._values[key] = (value, timestamp)

    def read_all_values(self) -> Iterator[tuple[str, float, float]]:
        for key, (value, timestamp) in self._values.items():
            yield key, value, timestamp

    def close(self) -> None:
        self._values.clear()


def open_metric_file(filename: str, read_mode: bool = False) -> AllocatedMmapedDict | UnsavedValues:
    """Open a metric file as AllocatedMmapedDict, or keep its values in memory when it has no room."""
    try:
        return AllocatedMmapedDict(filename, read_mode)
    except MetricFileFull as exc:
        _report(exc)
        return UnsavedValues()


def _report(exc: MetricFileFull) -> None:
    """Log metric_file_full at most once per REPORT_INTERVAL_SECONDS, counting the losses between."""
    global _last_report, _unreported
    now = time.monotonic()
    if now - _last_report < REPORT_INTERVAL_SECONDS:
        _unreported += 1
        return
    log.error("metric_file_full", error=exc.strerror, samples_lost_unreported=_unreported,
              hint="free space in PROMETHEUS_MULTIPROC_DIR or give it a volume of its own; "
                   "the samples that have no room are missing from /metrics")
    _last_report, _unreported = now, 0


def install() -> None:
    """Make prometheus_client open its metric files with open_metric_file."""
    # NOTE: replaces a module global of prometheus_client.values, where MultiProcessValue
    # looks the class up each time it opens a file. If an upgrade opens its files another
    # way, tests/test_metric_files.py finds them sparse and fails.
    values.MmapedDict = open_metric_file  # type: ignore[misc, assignment]
