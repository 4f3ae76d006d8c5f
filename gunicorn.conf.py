"""gunicorn configuration for Gatehouse.

Every value comes from a GATEHOUSE_* variable validated by service.config, so a bad
value stops the master before it binds, with one line naming the variable.
"""

import os
import sys
import tempfile

import gunicorn.http.wsgi

from service.config import InvalidConfiguration, Settings, load_settings
from service.environment import unknown_variables
from service.lifecycle import error_pages

# Parsing GATEHOUSE_REDIS_URL imports redis, which the master must not import before it
# forks (see on_starting). The start-up check process parses it, and on_starting exits 2
# when that process does.
try:
    _settings = load_settings(parse_redis_url=False)
except InvalidConfiguration as _exc:
    print(f"gatehouse: invalid configuration: {_exc}", file=sys.stderr)
    sys.exit(2)

# prometheus_client picks its multiprocess mode when first imported, so the
# directory must be in the environment before any worker imports it. An empty value is
# rejected: prometheus_client would write its files to the current directory, and
# service.metrics would treat multiprocess mode as off.
if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not os.environ["PROMETHEUS_MULTIPROC_DIR"].strip():
    print("gatehouse: invalid configuration: PROMETHEUS_MULTIPROC_DIR is empty: set it to a directory for this "
          "server's metric files, or unset it for gatehouse-prometheus in the temporary directory", file=sys.stderr)
    sys.exit(2)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), "gatehouse-prometheus"))

#
# Server socket
#
#   bind - host:port to listen on. Behind Kubernetes use 0.0.0.0:8000.
bind = _settings.bind

#   backlog - pending connections the kernel queues before refusing; 64-2048.
backlog = 2048

#
# Worker processes
#
#   workers - worker processes; about one or two per core. Each holds its own
#       MySQL and Redis pools, so workers x pool size x replicas must stay below
#       the servers' connection limits (MariaDB's max_connections is 151 by default).
workers = _settings.workers

#   worker_class - gunicorn's gevent worker (one greenlet per connection, so requests
#       waiting on MySQL, Redis or the argon2 thread pool do not block each other),
#       extended with a shutdown that drops no request: see service/lifecycle/worker.py.
worker_class = "service.lifecycle.worker.GatehouseWorker"

#   worker_connections - concurrent connections per worker; 10-100000.
worker_connections = _settings.worker_connections

#   timeout - seconds a worker may stay silent before the master kills it; 5-600.
#       Every MySQL and Redis call has its own shorter timeout.
timeout = _settings.timeout

#   graceful_timeout - seconds in-flight requests get to finish after SIGTERM; 1-600.
#       It starts after the drain delay, so a shutdown takes at most
#       GATEHOUSE_SHUTDOWN_DRAIN_SECONDS + graceful_timeout.
graceful_timeout = _settings.graceful_timeout

#   keepalive - seconds an idle keep-alive connection is held open; 0-300.
#       Behind a load balancer keep it above the balancer's idle timeout.
keepalive = _settings.keepalive

#   preload_app - False: each worker imports the app after fork and after gevent
#       has patched the standard library, so no socket or lock predates the patch.
preload_app = False

#
# Request limits (gunicorn itself returns 414 for the request line and 431 for headers,
# as problem+json, see below; the body limits are the app's, see service/payload.py)
#
#   limit_request_line - longest request line in bytes; 0-8190.
limit_request_line = 4094
#   limit_request_fields - most header fields per request; up to 32768.
limit_request_fields = 50
#   limit_request_field_size - longest header field in bytes; an access token is under 1 KiB.
limit_request_field_size = 8190

#
# Proxy headers
#
#   forwarded_allow_ips, forwarder_headers - none. By default gunicorn trusts peers on
#       loopback to set the WSGI environ's SCRIPT_NAME and PATH_INFO from request headers
#       of those names, and the scheme from X-Forwarded-Proto. A client on the same host
#       or in the same pod (a sidecar that forwards every header) could then route
#       /v1/metrics to /metrics, past a proxy that publishes only /v1. A SCRIPT_NAME that
#       is not a prefix of the path made any request fail with 500. The app reads the
#       client address through GATEHOUSE_TRUSTED_PROXY_COUNT and
#       GATEHOUSE_TRUSTED_PROXY_NETWORKS alone (service/networks.py).
forwarded_allow_ips = ""
forwarder_headers = ""

#
# Response headers
#
#   Server - gunicorn has no setting for this header. gunicorn 27 writes
#       "Server: gunicorn" into every HTTP/1 and HTTP/2 response of the app from the
#       module global gunicorn.http.wsgi.SERVER, which workers inherit from the master.
#       Its own error pages (400, 414, 431) carry no Server header. The product name
#       gives a scanner no server software to match against known flaws, and reveals
#       nothing new: every problem type contains it. tests/e2e/test_raw_requests.py
#       fails if an upgrade ignores this.
gunicorn.http.wsgi.SERVER = "gatehouse"
#   Error responses of gunicorn itself (400, 414, 431, 501) - problem+json with a stable
#       code instead of gunicorn's HTML page, so that clients parse every error alike
#       (service/lifecycle/error_pages.py). tests/e2e/test_raw_requests.py checks them.
error_pages.install()

#
# Logging
#
#   logger_class - renders gunicorn's error and access records as JSON on stdout.
logger_class = "service.logs.GunicornLogger"
loglevel = _settings.log_level
errorlog = "-"
#   accesslog - None: the app logs one request_completed line per request, so a
#       second access record from gunicorn would double every entry.
accesslog = None

#
# Process naming and control
#
proc_name = "gatehouse"
#   control_socket_disable - the control socket lives at one fixed path per user,
#       which several instances on one host (tests, side-by-side runs) would share.
control_socket_disable = True


#
# Server hooks
#
def on_starting(server):
    """Master, before binding: lock and empty the metrics directory, then check dependencies.

    The checks run in a child process: importing redis or pymysql here would load ssl
    and urllib3 into the master, and workers forked from it would inherit them
    unpatched by gevent.
    """
    from service.lifecycle.crash import enable_faulthandler
    from service.lifecycle.master import (
        bind_problem,
        install_reload_check,
        install_shutdown_handlers,
        run_startup_check,
    )
    from service.lifecycle.metrics_dir import MetricsDirInUse, claim_metrics_dir

    enable_faulthandler()
    install_shutdown_handlers(server, _settings.shutdown_drain_seconds)
    install_reload_check(server, _settings_problem)
    _attach_log_file()

    # Files left by an earlier master would be summed into this run's counters, and
    # deleting the metric files of a running master would erase its counters.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        claim_metrics_dir(metrics_dir)
    except MetricsDirInUse as exc:
        server.log.error("metrics_dir_in_use", extra={"error": str(exc), "path": exc.path,
                                                      "holder_pid": exc.holder_pid})
        sys.exit(3)
    except OSError as exc:
        print(f"gatehouse: invalid configuration: PROMETHEUS_MULTIPROC_DIR is invalid (cannot create, lock or clean "
              f"{metrics_dir}: {exc.strerror}): set it to a directory that this user can write", file=sys.stderr)
        sys.exit(2)

    server.log.info("master_starting", extra={"pid": os.getpid(), "settings": _settings.summary()})
    unknown = unknown_variables(os.environ, Settings.model_fields)
    if unknown:
        # A misspelled setting is otherwise left out in silence, and its default applies.
        server.log.warning("settings_unknown_variables", extra={"names": unknown})
    problem = bind_problem(server.cfg.address)
    if problem is not None:
        server.log.error("bind_failed", extra={"error": problem})
        sys.exit(3)
    # Without the metrics directory, the check process leaves no metric files behind.
    check_env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    returncode = run_startup_check(server, [sys.executable, "-m", "service.cli", "check"], check_env,
                                   timeout=_settings.startup_timeout_seconds + 30)
    if returncode is None:
        server.log.error("startup_check_failed", extra={"error": "start-up checks timed out"})
        sys.exit(3)
    if returncode != 0:
        server.log.error("startup_check_failed", extra={"returncode": returncode})
        # 2: the check process found an invalid setting and printed the line naming it.
        sys.exit(2 if returncode == 2 else 3)


def _settings_problem():
    """Return the line naming an invalid setting or the lack of a usable signing key, or None."""
    import subprocess

    try:
        load_settings(parse_redis_url=False)
    except InvalidConfiguration as exc:
        return str(exc)
    # In a child process: loading the keys imports cryptography and PyJWT, which the
    # master leaves to the workers, as it does redis.
    try:
        # The master reaps and starts no workers meanwhile, so the bound is short.
        check = subprocess.run([sys.executable, "-m", "service.cli", "keys", "check"], capture_output=True,
                               text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "`gatehouse keys check` timed out after 20 s"
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines()
        return lines[-1] if lines else f"`gatehouse keys check` exited with {check.returncode}"
    return None


def on_reload(server):
    """Master, on SIGHUP after the logger was set up again: put the log file handler back."""
    _attach_log_file()


def _attach_log_file():
    """Send gunicorn's own records to GATEHOUSE_LOG_FILE too, when one is configured."""
    import logging

    from service import log_file

    log_file.attach(_settings, logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access"))


def post_fork(server, worker):
    """Worker, right after fork: the app (and its pools) is created next, when it loads."""
    from service.lifecycle.crash import enable_faulthandler
    from service.lifecycle.metrics_dir import close_inherited_lock

    enable_faulthandler()
    close_inherited_lock()
    worker.hold_early_signals(server)
    server.log.info("worker_started", extra={"worker_pid": worker.pid})


def post_worker_init(worker):
    """Worker, after the app loaded: count this worker in the gatehouse_workers gauge."""
    from service.lifecycle.metrics import mark_worker_serving

    mark_worker_serving(worker.cfg.workers)


def worker_abort(worker):
    """Worker, on SIGABRT (the master's timeout kill): log every greenlet's stack before exiting."""
    from service.lifecycle.crash import log_greenlet_stacks

    log_greenlet_stacks(worker.pid, reason="SIGABRT, usually the worker timeout")


def worker_exit(server, worker):
    """Worker, on its way out: close this worker's MySQL and Redis pools and flush logs."""
    import logging

    from service.app import close_app

    app = getattr(worker, "application", None)
    if app is not None:
        close_app(app)
    logging.shutdown()


def child_exit(server, worker):
    """Master, after a worker exited: drop its live gauges from the metrics directory."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Master, last step before exit: log the exit and how long the shutdown took."""
    from service.lifecycle.master import shutdown_seconds

    server.log.info("master_exited", extra={"pid": os.getpid(), "shutdown_seconds": shutdown_seconds(server)})
