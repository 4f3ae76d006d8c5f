"""The master's side of a graceful shutdown: announce it, wait the drain delay, then stop.

gunicorn stops gracefully on SIGTERM but quickly on SIGINT, and has no drain delay.
install_shutdown_handlers replaces both handlers on the arbiter so that either signal:

1. sends SIGUSR2 to every worker, which turns /ready to 503 while it keeps serving;
2. waits shutdown_drain_seconds, so load balancers and Kubernetes endpoints notice;
3. hands over to gunicorn's graceful stop: close the listeners, SIGTERM the workers,
   wait graceful_timeout, SIGKILL whatever is left.

A SIGINT or SIGQUIT during the drain ends the drain early; during step 3 gunicorn
itself turns either into a quick shutdown.
"""

from __future__ import annotations

import errno
import queue
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

SHUTDOWN_STARTED_ATTRIBUTE = "gatehouse_shutdown_started"


def install_shutdown_handlers(arbiter: Any, drain_seconds: float) -> None:
    """Make SIGTERM and SIGINT start the same graceful shutdown on this gunicorn arbiter."""

    def shutdown_on(signal_name: str):  # noqa: ANN202
        def handle() -> None:
            setattr(arbiter, SHUTDOWN_STARTED_ATTRIBUTE, time.monotonic())
            arbiter.log.info("shutdown_started", extra={"signal": signal_name, "drain_seconds": drain_seconds})
            arbiter.kill_workers(signal.SIGUSR2)
            _drain(arbiter, drain_seconds)
            # gunicorn's main loop turns StopIteration into halt(): the graceful stop.
            raise StopIteration

        return handle

    # gunicorn looks the handlers up by name on the arbiter for each queued signal.
    arbiter.handle_term = shutdown_on("SIGTERM")
    arbiter.handle_int = shutdown_on("SIGINT")


def _drain(arbiter: Any, drain_seconds: float) -> None:
    """Wait drain_seconds while reaping exited workers; a SIGINT or SIGQUIT ends the wait."""
    deadline = time.monotonic() + drain_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            sig = arbiter.SIG_QUEUE.get(timeout=min(remaining, 0.1))
        except queue.Empty:
            continue
        if sig in (signal.SIGINT, signal.SIGQUIT):
            arbiter.log.info("drain_ended_early", extra={"signal": signal.Signals(sig).name})
            return
        if sig == signal.SIGCHLD:
            arbiter.reap_workers()


def shutdown_seconds(arbiter: Any) -> float | None:
    """Return the seconds since the shutdown began, or None when none did."""
    started = getattr(arbiter, SHUTDOWN_STARTED_ATTRIBUTE, None)
    return None if started is None else round(time.monotonic() - started, 3)


def install_reload_check(arbiter: Any, settings_problem: Callable[[], str | None]) -> None:
    """Make SIGHUP replace the workers only while the settings still load.

    A reload runs gunicorn.conf.py again and starts workers that load the settings
    again. A file that a setting names (the password blocklist, a TLS certificate, the
    log file's directory) may have changed since the start, and gunicorn would exit
    on the invalid configuration, or on workers that cannot boot, and stop serving.
    Instead the reload is refused, logged as reload_refused, and the old workers go on.
    """
    reload = arbiter.handle_hup

    def handle() -> None:
        problem = settings_problem()
        if problem is not None:
            arbiter.log.error("reload_refused", extra={"error": problem})
            return
        reload()

    # Looked up by name on the arbiter for each queued signal, as the shutdown handlers are.
    arbiter.handle_hup = handle


def run_startup_check(arbiter: Any, argv: list[str], env: dict[str, str], timeout: float) -> int | None:
    """Run the start-up check process and return its exit code, or None when it timed out.

    gunicorn installs its signal handlers only after the on_starting hook, so until then
    SIGTERM or SIGINT would end the master at once and leave the check running on its
    own, to log a failure after the master has gone. Meanwhile both signals stop the
    check, log startup_interrupted and end the master with 128 + the signal number.
    """
    check = subprocess.Popen(argv, env=env)

    def interrupt(signum: int, _frame: Any) -> None:
        check.terminate()
        try:
            check.wait(timeout=5)
        except subprocess.TimeoutExpired:
            check.kill()
        arbiter.log.warning("startup_interrupted", extra={"signal": signal.Signals(signum).name})
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return check.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        check.kill()
        check.wait()
        return None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def bind_problem(addresses: list[Any]) -> str | None:
    """Return why gunicorn could not listen on one of its (host, port) addresses, or None.

    gunicorn binds only after the start-up checks, then retries five times, logs
    "Can't connect" and exits 1, with no line naming GATEHOUSE_BIND. A trial bind
    here fails at once with the cause. The port is released again before gunicorn
    binds it, so another process could still take it in between.
    """
    for address in addresses:
        if not isinstance(address, tuple):
            continue  # a Unix socket path, which gunicorn manages itself
        host, port = address[0], address[1]
        try:
            family, kind, protocol, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            return f"GATEHOUSE_BIND {host}:{port}: cannot resolve {host} ({exc.strerror}): set a local address"
        with socket.socket(family, kind, protocol) as trial:
            # As gunicorn sets it, so that a port in TIME_WAIT does not count as taken.
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                trial.bind(sockaddr)
            except OSError as exc:
                hint = {errno.EADDRINUSE: "another process listens on it: stop it or choose another port",
                        errno.EADDRNOTAVAIL: "the address is not one of this host's: set a local address",
                        errno.EACCES: "ports below 1024 need privileges: choose a port from 1024 up"}.get(
                            exc.errno, "check the address")
                return f"GATEHOUSE_BIND {host}:{port}: cannot listen ({exc.strerror}): {hint}"
    return None
