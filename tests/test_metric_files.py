"""Metric files on a full file system: an error that names the file, never SIGBUS, and requests go on.

A tmpfs of 256 KiB serves as a full PROMETHEUS_MULTIPROC_DIR. Mounting it needs
root, or the test is skipped. Each case runs in a forked child, so that a SIGBUS would
end the child rather than pytest.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict

from service import metric_files
from service.metric_files import AllocatedMmapedDict, MetricFileFull
from tests.helpers import captured_logs, full_tmpfs

FILESYSTEM_BYTES = 256 * 1024


@pytest.fixture
def full_directory(tmp_path) -> Iterator[Path]:
    """Yield a directory on a tmpfs whose space is used up but for 4 KiB."""
    with full_tmpfs(tmp_path, FILESYSTEM_BYTES) as directory:
        yield directory


def outcome_in_child(action: Callable[[], None]) -> str:
    """Run action in a forked child; return "ok", the OSError's errno name, or the signal that ended the child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = "ok"
        try:
            os.close(read_end)
            # A SIGBUS is the expected outcome of one case, so no stack dump for it.
            faulthandler.disable()
            action()
        except MetricFileFull as exc:
            report = f"MetricFileFull {errno.errorcode[exc.errno]} {exc.strerror}"
        except BaseException as exc:
            report = f"{type(exc).__name__} {exc}"
        finally:
            os.write(write_end, report.encode())
            os._exit(0)

    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return report


def test_new_file_on_full_directory_kept_in_memory(full_directory, monkeypatch):
    """prometheus_client's entry point: the process goes on, its samples stay out of /metrics, and one line gives the reason."""
    path = full_directory / "counter_5.db"
    monkeypatch.setattr(metric_files, "_last_report", float("-inf"))

    with captured_logs(metric_files) as logs:
        metric_file = metric_files.open_metric_file(str(path))
        metric_file.write_value("key", 2.0, 0.0)

    assert isinstance(metric_file, metric_files.UnsavedValues)
    assert metric_file.read_value("key") == (2.0, 0.0)
    assert [entry["event"] for entry in logs] == ["metric_file_full"]
    assert str(path) in logs[0]["error"]


def test_new_file_on_full_directory_raises(full_directory):
    path = full_directory / "counter_1.db"

    outcome = outcome_in_child(lambda: AllocatedMmapedDict(str(path)).write_value("key", 1.0, 0.0))

    assert outcome.startswith("MetricFileFull ENOSPC"), outcome
    assert str(path) in outcome
    assert "PROMETHEUS_MULTIPROC_DIR" in outcome


def test_growing_file_on_full_directory_raises(tmp_path, full_directory):
    # A file made while there was room, then filled past its first size.
    path = full_directory / "counter_2.db"
    os.remove(full_directory / "filler")
    metric_file = AllocatedMmapedDict(str(path))
    with open(full_directory / "filler", "wb") as filler:
        filler.write(b"\0" * (FILESYSTEM_BYTES - 2 * 64 * 1024))

    def add_many_keys() -> None:
        for number in range(10_000):
            metric_file._init_value(f"gatehouse_example{{label=\"{number:040d}\"}}")

    outcome = outcome_in_child(add_many_keys)
    # Through prometheus_client's calls, the keys without room are left out instead.
    with captured_logs(metric_files):
        for number in range(10_000):
            metric_file.write_value(f"gatehouse_example{{label=\"{number:040d}\"}}", 1.0, 0.0)
    stored = list(metric_file.read_all_values())

    assert outcome.startswith("MetricFileFull ENOSPC"), outcome
    assert 0 < len(stored) < 10_000
    metric_file.close()


def test_file_system_without_fallocate_works(tmp_path):
    """On ramfs, as on NFS before 4.2, glibc emulates fallocate by writing, which needs a descriptor without O_APPEND."""
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(tmp_path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs: {mounted.stderr.strip()}")
    try:
        metric_file = AllocatedMmapedDict(str(tmp_path / "counter_6.db"))
        for number in range(3_000):
            metric_file.write_value(f"gatehouse_example{{label=\"{number:040d}\"}}", float(number), 0.0)
        assert len(list(metric_file.read_all_values())) == 3_000
        metric_file.close()
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


def test_library_class_dies_of_sigbus_on_full_directory(full_directory):
    """Why the class exists: prometheus_client's own one kills the process."""
    path = full_directory / "counter_3.db"
    with open(full_directory / "filler", "ab") as filler:
        filler.write(b"\0" * 4096)

    outcome = outcome_in_child(lambda: MmapedDict(str(path)).write_value("key", 1.0, 0.0))

    assert outcome == "SIGBUS"


def test_prometheus_client_files_allocated(tmp_path, monkeypatch):
    """A metric value of prometheus_client's multiprocess mode opens its file through the installed class."""
    import service.metrics  # noqa: F401 - installs the class

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class = values.MultiProcessValue(lambda: 424242)
    value_class("counter", "gatehouse_example_total", "gatehouse_example_total", (), (), "Example.").inc(1)

    [path] = tmp_path.glob("counter_424242.db")
    # prometheus_client's own class leaves the file sparse: no blocks behind its pages.
    assert os.stat(path).st_blocks * 512 >= os.stat(path).st_size >= 64 * 1024
    metric_files.install()
    assert values.MmapedDict is metric_files.open_metric_file


def test_file_keeps_values_across_growth(tmp_path):
    path = tmp_path / "counter_4.db"
    metric_file = AllocatedMmapedDict(str(path))
    keys = [f"gatehouse_example{{label=\"{number:040d}\"}}" for number in range(3_000)]
    for number, key in enumerate(keys):
        metric_file.write_value(key, float(number), 0.0)
    metric_file.close()

    read = {key: value for key, value, _ in AllocatedMmapedDict(str(path), read_mode=True).read_all_values()}

    assert read == {key: float(number) for number, key in enumerate(keys)}
    assert os.stat(path).st_blocks * 512 >= os.stat(path).st_size
