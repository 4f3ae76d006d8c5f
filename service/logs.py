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
     "authorization", "secret", "mysql_password", "redis_url", "redis_password",
     "redis_sentinel_password"}
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


def json_formatter() -> logging.Formatter:
    """Build the formatter that renders both structlog and stdlib records as one JSON line."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
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
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
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
