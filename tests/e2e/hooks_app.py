"""The real app plus test-only routes, served by gunicorn in the lifecycle tests.

gunicorn loads it as tests.e2e.hooks_app:app. The routes exist only here, never in
the service: one blocks the worker's event loop, one holds a request open, one logs
numbered lines.
"""

from __future__ import annotations

import os

import structlog
from flask import Blueprint, Response, jsonify, request
from gevent import monkey, sleep

from service.app import create_app

log = structlog.get_logger("gatehouse.test_hooks")
hooks = Blueprint("test_hooks", __name__, url_prefix="/_test")


@hooks.post("/block-loop")
def block_loop() -> Response:
    """Block the whole worker with the unpatched time.sleep, as a hung C call would."""
    blocking_sleep = monkey.get_original("time", "sleep")
    blocking_sleep(float(request.args["seconds"]))
    return jsonify(blocked=True)


@hooks.post("/slow")
def slow() -> Response:
    """Hold one request open without blocking the worker."""
    sleep(float(request.args["seconds"]))
    return jsonify(slept=True)


@hooks.post("/log-lines")
def log_lines() -> Response:
    """Log lines numbered first..first+count-1, one event each."""
    first, count = int(request.args["first"]), int(request.args["count"])
    for number in range(first, first + count):
        log.info("numbered_line", number=number, pid=os.getpid())
    return jsonify(logged=count)


app = create_app()
app.register_blueprint(hooks)
