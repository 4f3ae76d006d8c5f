"""Structured JSON logging for the app and for gunicorn's own loggers."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog
from pydantic_core import to_json
from gunicorn.glogging import Logger as GunicornBaseLogger

# Keys whose values never reach a log line, whatever the caller passes.
SECRET_KEYS = frozenset(
    {"password", "new_password", "current_password", "token", "access_token", "refresh_token",
     "authorization", "secret", "mysql_password", "redis_url", "redis_password",
     "redis_sentinel_password"}
)

_second = -1
_second_text = ""


def add_timestamp(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Add the UTC time as ISO 8601 with microseconds, formatting the date and time once per second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    event["timestamp"] = f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"
    return event


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    add_timestamp,
]


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of any secret-looking key with a marker."""
    for key in SECRET_KEYS.intersection(event):
        event[key] = "**redacted**"

    return event


class RenderedLine(str):
    """A log line that structlog already rendered as JSON; the formatter passes it through."""

    __slots__ = ()


def render_json(_logger: Any, _method: str, event: dict[str, Any]) -> str:
    """Render an event as one JSON line; values JSON has no type for appear as their repr()."""
    return to_json(event, ensure_ascii=True, fallback=repr).decode()


def _write_line(logger: Any, method: str, event: dict[str, Any]) -> str:
    """Render the event and write it to every handler that would receive it, then stop structlog.

    The standard library's path for one line (a LogRecord, the logger and handler
    locks, the handler chain) cost more than rendering it. The line goes straight to
    stdout (or stderr) instead; any other handler (the log file, a test's capture) still gets a
    record, built once. Handlers are found the way logging finds them: the logger's
    own, then its ancestors' while propagate is set.
    """
    if logger.disabled:
        raise structlog.DropEvent
    line = RenderedLine(render_json(logger, method, event))
    levelno = _LEVELS.get(method, logging.INFO)
    record = None
    current = logger
    while current is not None:
        for handler in current.handlers:
            if levelno < handler.level:
                continue
            if type(handler) is _ConsoleHandler:
                stream = handler.stream
                stream.write(line + "\n")
                stream.flush()
                continue
            if record is None:
                record = logger.makeRecord(logger.name, levelno, "(unknown file)", 0, line, None, None)
            handler.handle(record)
        current = current.parent if current.propagate else None
    raise structlog.DropEvent


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL,
           "fatal": logging.CRITICAL}
# The end of every chain: secrets removed, exceptions as text, one JSON line.
_RENDER_PROCESSORS: list[Any] = [redact_secrets, structlog.processors.format_exc_info]


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """Render records of the standard library's loggers as JSON lines, and pass structlog's through.

    structlog renders its own events in its processor chain, once, so a record that
    several handlers format is not rendered again per handler and is not copied.
    """

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, RenderedLine):
            return record.msg
        return super().format(record)


def json_formatter() -> logging.Formatter:
    """Build the formatter that renders both structlog and stdlib records as one JSON line."""
    return JsonFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_RENDER_PROCESSORS,
            render_json,
        ],
    )


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler bound to whatever sys.stdout (or sys.stderr) is when a record is emitted.

    Test runners and gunicorn's capture_output swap sys.stdout after start-up; a
    handler holding the old object would write to a closed file.
    """

    def __init__(self, stream_name: str) -> None:
        self._stream_name = stream_name
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def stdout_handler() -> logging.Handler:
    """Build a stdout handler with the JSON formatter."""
    handler = _ConsoleHandler("stdout")
    handler.setFormatter(json_formatter())
    return handler


def stderr_handler() -> logging.Handler:
    """Build a stderr handler with the JSON formatter, for commands whose stdout carries their results."""
    handler = _ConsoleHandler("stderr")
    handler.setFormatter(json_formatter())
    return handler


def configure_logging(level: str = "info", *, stream: str = "stdout") -> None:
    """Route structlog and the root logger to JSON lines on `stream`: "stdout" (the server) or "stderr"."""
    # The level check comes first, so a debug event below the level costs no processing.
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS, *_RENDER_PROCESSORS, _write_line],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # The records need neither the calling frame, thread nor process: the JSON line
    # carries its own fields. Skipping them is the logging HOWTO's optimization.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(stdout_handler() if stream == "stdout" else stderr_handler())
    root.setLevel(level.upper())


def _drop_invalid_request_lines(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Invalid request from ip=")


# Signals that end a worker because it crashed, not because something stopped it.
_CRASH_SIGNALS = frozenset({"SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL"})


def _worker_crash_as_error(record: logging.LogRecord) -> bool:
    """Raise gunicorn's warning about a worker that a crash signal ended to an error, like its SIGKILL line."""
    args = record.args if isinstance(record.args, tuple) else ()
    if record.msg == "Worker (pid:%s) was sent %s!" and args and args[-1] in _CRASH_SIGNALS:
        record.levelno, record.levelname = logging.ERROR, "ERROR"
    return True


class GunicornLogger(GunicornBaseLogger):
    """gunicorn's logger, rendering its error and access records as JSON lines on stdout."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure_logging(cfg.loglevel)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            handler = stdout_handler()
            # gunicorn removes handlers carrying this flag when it reloads its configuration.
            handler._gunicorn = True  # type: ignore[attr-defined]
            log.addHandler(handler)
        # The worker logs each request that gunicorn rejects as request_rejected, with its status.
        self.error_log.addFilter(_drop_invalid_request_lines)
        self.error_log.addFilter(_worker_crash_as_error)
