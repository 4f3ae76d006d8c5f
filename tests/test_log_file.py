"""The log file settings: validated at start, and a handler only when a file is set."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import log_file
from service.config import InvalidConfiguration, Settings, load_settings
from service.setting_checks import log_lock_file
from tests.helpers import call_under_modes, directory_for_modes


def log_file_error(path: Path | str) -> str:
    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"log_file": str(path)})
    return str(excinfo.value)


@pytest.fixture
def mode_dir(tmp_path) -> Iterator[Path]:
    with directory_for_modes(tmp_path) as directory:
        yield directory


def log_file_error_under_modes(path: Path) -> str:
    """Return log_file_error(path) as a user whom file modes bind; for root, from a forked unprivileged child."""
    if os.geteuid() != 0:
        return log_file_error(path)

    # The keys directory of the test profile is private to root; any directory passes its
    # check. The Redis URL check imports redis-py lazily, which the child could not read.
    overrides = {"log_file": str(path), "keys_dir": str(path.parent.parent)}
    return call_under_modes(lambda: invalid_configuration(overrides))


def invalid_configuration(overrides: dict[str, str]) -> str:
    """Return the message of the InvalidConfiguration that load_settings(overrides) raises, or '' when none."""
    try:
        load_settings(overrides, parse_redis_url=False)
    except InvalidConfiguration as exc:
        return str(exc)
    return ""


def test_log_file_in_missing_directory_is_refused(tmp_path):
    missing = tmp_path / "no-such-dir" / "gatehouse.log"

    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"log_file": str(missing)})

    assert "GATEHOUSE_LOG_FILE" in str(excinfo.value)
    assert "does not exist" in str(excinfo.value)


def test_log_file_that_is_directory_rejected(tmp_path):
    message = log_file_error(tmp_path)

    assert message.startswith("GATEHOUSE_LOG_FILE is invalid (")
    assert f"{tmp_path} is a directory" in message


def test_log_file_that_is_fifo_rejected(tmp_path):
    fifo = tmp_path / "gatehouse.log"
    os.mkfifo(fifo)

    message = log_file_error(fifo)

    assert message.startswith("GATEHOUSE_LOG_FILE is invalid (")
    assert "is not a regular file" in message


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_log_file_in_sysfs_rejected():
    # Creating a file in sysfs fails for root too, although os.access() reports /sys as writable.
    message = log_file_error("/sys/gatehouse.log")

    assert message.startswith("GATEHOUSE_LOG_FILE is invalid (")
    assert "cannot create a file in directory /sys" in message
    assert "\n" not in message


def test_log_file_in_read_only_directory_rejected(mode_dir):
    directory = mode_dir / "logs"
    directory.mkdir()
    directory.chmod(0o555)

    message = log_file_error_under_modes(directory / "gatehouse.log")

    assert "GATEHOUSE_LOG_FILE is invalid" in message
    assert f"cannot create a file in directory {directory}" in message


def test_read_only_log_file_rejected(mode_dir):
    path = mode_dir / "gatehouse.log"
    path.touch()
    path.chmod(0o444)

    message = log_file_error_under_modes(path)

    assert "GATEHOUSE_LOG_FILE is invalid" in message
    assert f"cannot open {path} to write" in message


def test_read_only_lock_file_rejected(mode_dir):
    lock_file = mode_dir / ".__gatehouse.lock"
    lock_file.touch()
    lock_file.chmod(0o444)

    message = log_file_error_under_modes(mode_dir / "gatehouse.log")

    assert "GATEHOUSE_LOG_FILE is invalid" in message
    assert f"cannot open {lock_file} to write" in message


def test_lock_file_that_is_directory_rejected(tmp_path):
    (tmp_path / ".__gatehouse.lock").mkdir()

    message = log_file_error(tmp_path / "gatehouse.log")

    assert "GATEHOUSE_LOG_FILE is invalid" in message
    assert ".__gatehouse.lock exists and is not a regular file" in message


def test_writable_log_file_accepted_without_side_effects(tmp_path):
    path = tmp_path / "gatehouse.log"
    path.write_text("old line\n")

    assert load_settings({"log_file": str(path)}).log_file == path
    assert path.read_text() == "old line\n"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["gatehouse.log"]


@pytest.mark.parametrize("name", ["gatehouse.log", "gatehouse.json", "gatehouse.log.txt", "log"])
def test_lock_file_named_like_handler(tmp_path, name):
    settings = load_settings({"log_file": str(tmp_path / name)})
    handler = log_file.build_handler(settings)
    try:
        assert log_lock_file(settings.log_file) == Path(handler.clh.lockFilename)
    finally:
        handler.close()


def test_empty_log_file_means_none():
    assert load_settings({"log_file": ""}).log_file is None
    assert log_file.build_handler(load_settings({"log_file": ""})) is None


@contextlib.contextmanager
def attached_logger(settings: Settings, name: str) -> Iterator[logging.Logger]:
    """Yield a logger with the log file handler of `settings`, and close its handlers afterwards."""
    logger = logging.getLogger(name)
    try:
        log_file.attach(settings, logger)
        yield logger
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def test_attach_replaces_earlier_handler(tmp_path):
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log")})
    with attached_logger(settings, "tests.log_file") as logger:
        log_file.attach(settings, logger)
        logger.warning("written_once")

        file_handlers = [handler for handler in logger.handlers if isinstance(handler, logging.FileHandler)]
        assert len(file_handlers) == 1
        assert (tmp_path / "gatehouse.log").read_text().count("written_once") == 1


def test_lock_file_mode_750_corrected(tmp_path):
    lock_file = tmp_path / ".__gatehouse.lock"
    lock_file.touch()
    lock_file.chmod(0o750)
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log")})
    with attached_logger(settings, "tests.log_file.old_lock") as logger:
        logger.warning("written")

    assert lock_file.stat().st_mode & 0o777 == 0o640


def test_log_files_not_readable_by_others(tmp_path):
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log"), "log_file_max_bytes": 1024})
    with attached_logger(settings, "tests.log_file.mode") as logger:
        for index in range(200):
            logger.warning("line_%d", index)

    files = [path for path in tmp_path.iterdir() if path.is_file()]
    assert any(path.name.endswith(".gz") for path in files), [path.name for path in files]
    assert (tmp_path / ".__gatehouse.lock") in files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o640, path.name


def test_lost_log_file_reported_once_as_json(tmp_path, capsys):
    directory = tmp_path / "logs"
    directory.mkdir()
    settings = load_settings({"log_file": str(directory / "gatehouse.log")})
    with attached_logger(settings, "tests.log_file.lost") as logger:
        logger.warning("before")
        shutil.rmtree(directory)
        for number in range(5):
            logger.warning("after_%d", number)

    errors = capsys.readouterr().err
    assert "--- Logging error ---" not in errors
    lines = [line for line in errors.splitlines() if line.startswith("{")]
    reports = [json.loads(line) for line in lines]
    assert len(reports) == 1
    # Compact, as every other line the service writes.
    assert lines[0] == json.dumps(reports[0], separators=(",", ":"))
    assert reports[0]["event"] == "log_file_write_failed"
    assert reports[0]["path"] == str(directory / "gatehouse.log")
    assert reports[0]["records_lost"] == 1
    assert "FileNotFoundError" in reports[0]["error"] or "No such file" in reports[0]["error"]


def deleted_open_files(name: str) -> list[str]:
    """Return the targets of this process's open descriptors that name a removed file called name."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(f"/{name} (deleted)"):
                targets.append(target)
    return targets


def test_lock_file_reopened_after_directory_recreated(tmp_path):
    """A process that outlives its log directory locks the same file as the processes started after it."""
    directory = tmp_path / "logs"
    directory.mkdir()
    settings = load_settings({"log_file": str(directory / "gatehouse.log")})
    lock_file = directory / ".__gatehouse.lock"
    with attached_logger(settings, "tests.log_file.running") as running:
        running.warning("before")
        shutil.rmtree(directory)
        running.warning("lost")
        directory.mkdir()
        with attached_logger(settings, "tests.log_file.started_later") as started_later:
            started_later.warning("from_new_process")
            running.warning("after")

            assert deleted_open_files(lock_file.name) == []
            open_locks = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                          if os.path.realpath(f"/proc/self/fd/{fd}") == str(lock_file)]
            assert len(open_locks) == 2, open_locks

    lines = (directory / "gatehouse.log").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["from_new_process", "after"]
