"""Metric files whose disk blocks are allocated before prometheus_client maps them.

In multiprocess mode prometheus_client keeps each process's samples in a file in
PROMETHEUS_MULTIPROC_DIR, which it sizes with truncate() and writes through mmap.
truncate() allocates no blocks, so it succeeds on a full file system, and the first
write to a page without a block then kills the process with SIGBUS. On a full
directory every new worker died that way before it served a request, and gunicorn
started the next one at once, thousands of times in ten minutes, with a stack dump
each and no line naming the cause.

AllocatedMmapedDict allocates a file's blocks with posix_fallocate() before they are
mapped, when the file is created and before it grows, so a full directory raises
MetricFileFull (an OSError) naming the file instead. install() makes
prometheus_client use it; service.metrics calls it before it defines any metric.
"""

from __future__ import annotations

import os

from prometheus_client import values
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict


class MetricFileFull(OSError):
    """The blocks of a metric file could not be allocated, as on a full PROMETHEUS_MULTIPROC_DIR."""


def _allocate(fd: int, size: int, filename: str) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise MetricFileFull(exc.errno, f"cannot allocate {size} bytes for the metric file {filename} in "
                                        f"PROMETHEUS_MULTIPROC_DIR: {exc.strerror}") from None


class AllocatedMmapedDict(MmapedDict):
    """prometheus_client's MmapedDict with every mapped byte of its file allocated on disk first."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            with open(filename, "a+b") as file:
                # A new file gets its first size here; an existing one keeps its size.
                _allocate(file.fileno(), max(os.fstat(file.fileno()).st_size, _INITIAL_MMAP_SIZE), filename)
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
            _allocate(self._f.fileno(), capacity, self._fname)
        super()._init_value(key)


def install() -> None:
    """Make prometheus_client open its metric files as AllocatedMmapedDict."""
    # NOTE: replaces a module global of prometheus_client.values, where MultiProcessValue
    # looks the class up each time it opens a file. If an upgrade opens its files another
    # way, tests/test_metric_files.py finds them sparse and fails.
    values.MmapedDict = AllocatedMmapedDict  # type: ignore[misc]
