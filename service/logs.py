"""Structured JSON logging for the app and for gunicorn's own loggers."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from gunicorn.glogging import Logger as GunicornBaseLogger

# Keys whose values never reach a log line, whatever the caller passes.
SECRET_KEYS = frozenset(
    {"password", "new_password", "current_password", "token", "access_token", "refresh_token",
     "authorization", "secret", "mysql_password", "redis_url"}
)

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of any secret-looking key with a marker."""
    for key in SECRET_KEYS.intersection(event):
        event[key] = "**redacted**"

    return event


class RenderedLine(str):
    """A log line that structlog already rendered as JSON; the formatter passes it through."""

    __slots__ = ()


def _render_line(logger: Any, method: str, event: dict[str, Any]) -> str:
    return RenderedLine(_json_renderer(logger, method, event))


_json_renderer = structlog.processors.JSONRenderer()
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
            _json_renderer,
        ],
    )


class _StdoutHandler(logging.StreamHandler):
    """A stream handler bound to whatever sys.stdout is when a record is emitted.

    Test runners and gunicorn's capture_output swap sys.stdout after start-up; a
    handler holding the old object would write to a closed file.
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def stdout_handler() -> logging.Handler:
    """Build a stdout handler with the JSON formatter."""
    handler = _StdoutHandler()
    handler.setFormatter(json_formatter())
    return handler


def configure_logging(level: str = "info") -> None:
    """Route structlog and the root logger to JSON lines on stdout."""
    # The level check comes first, so a debug event below the level costs no processing.
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS, *_RENDER_PROCESSORS, _render_line],
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
    root.addHandler(stdout_handler())
    root.setLevel(level.upper())


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
