"""The log file settings: validated at start, and a handler only when a file is set."""

from __future__ import annotations

import logging

import pytest

from service import log_file
from service.config import InvalidConfiguration, load_settings


def test_log_file_in_missing_directory_is_refused(tmp_path):
    missing = tmp_path / "no-such-dir" / "gatehouse.log"

    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"log_file": str(missing)})

    assert "GATEHOUSE_LOG_FILE" in str(excinfo.value)
    assert "does not exist" in str(excinfo.value)


def test_empty_log_file_means_none():
    assert load_settings({"log_file": ""}).log_file is None
    assert log_file.build_handler(load_settings({"log_file": ""})) is None


def test_attach_replaces_earlier_handler(tmp_path):
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log")})
    logger = logging.getLogger("tests.log_file")
    try:
        log_file.attach(settings, logger)
        log_file.attach(settings, logger)
        logger.warning("written_once")

        file_handlers = [handler for handler in logger.handlers if isinstance(handler, logging.FileHandler)]
        assert len(file_handlers) == 1
        assert (tmp_path / "gatehouse.log").read_text().count("written_once") == 1
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def test_lock_file_mode_750_corrected(tmp_path):
    lock_file = tmp_path / ".__gatehouse.lock"
    lock_file.touch()
    lock_file.chmod(0o750)
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log")})
    logger = logging.getLogger("tests.log_file.old_lock")
    try:
        log_file.attach(settings, logger)
        logger.warning("written")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()

    assert lock_file.stat().st_mode & 0o777 == 0o640


def test_log_files_not_readable_by_others(tmp_path):
    settings = load_settings({"log_file": str(tmp_path / "gatehouse.log"), "log_file_max_bytes": 1024})
    logger = logging.getLogger("tests.log_file.mode")
    try:
        log_file.attach(settings, logger)
        for index in range(200):
            logger.warning("line_%d", index)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()

    files = [path for path in tmp_path.iterdir() if path.is_file()]
    assert any(path.name.endswith(".gz") for path in files), [path.name for path in files]
    assert (tmp_path / ".__gatehouse.lock") in files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o640, path.name
