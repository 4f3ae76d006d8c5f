"""gunicorn's gevent worker with a shutdown that drops no request.

Differences from gunicorn.workers.ggevent.GeventWorker:

- SIGUSR2 from the master announces a shutdown: /ready turns 503 at once and the
  worker keeps serving through the drain delay. SIGINT is ignored, because the master
  turns it into the same graceful shutdown (Ctrl-C reaches every process of the group).
- SIGTERM alone (a reload or a scale-down replacing this worker) leaves /ready as it
  is, since the other workers go on serving.
- On SIGTERM the worker first accepts the connections already queued in the
  listening socket, then closes it. The kernel resets connections that are still
  queued when the last process closes the socket.
- Requests in flight finish and are answered with "Connection: close", also those that
  started before the stop. A kept-alive connection waiting for its next request is
  closed once it has been idle for SHUTDOWN_IDLE_SECONDS, so the worker exits as soon
  as it is idle instead of after the keep-alive timeout.
- The main loop checks every POLL_SECONDS instead of every second, so the worker
  reacts to a signal and exits without a second's lag.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from functools import partial
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

from service.lifecycle import error_pages, state

POLL_SECONDS = 0.1
# A worker whose settings no longer load waits this long before it exits, so the master
# starts at most one such worker per interval. It is well below gunicorn's worker timeout.
SETTINGS_RETRY_SECONDS = 5.0
# Any exit code but gunicorn's 3 (failed boot) and 4 (failed import) makes the master
# start a new worker rather than stop.
SETTINGS_INVALID_EXIT = 1
# Signals that start or speed up a stop: the master's shutdown notice, SIGTERM, SIGQUIT.
_SHUTDOWN_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGQUIT)
# How long a kept-alive connection may stay idle once shutdown has begun. A client that
# sends its next request within this time is still served, with "Connection: close".
SHUTDOWN_IDLE_SECONDS = 1.0
# The worker gives up this long before the master's graceful_timeout ends in SIGKILL,
# so that worker_exit still closes the pools and flushes the logs.
EXIT_MARGIN_SECONDS = 1.0


class _IdleWait:
    """Wait for the next request on a connection, which the worker can end early.

    Ending it behaves exactly like the keep-alive timeout: gunicorn gets no request
    and closes the connection.
    """

    def __init__(self, registry: dict[Any, _IdleWait], seconds: float) -> None:
        self._registry = registry
        self._timeout = gevent.Timeout(seconds, False)
        self._greenlet: Any = None
        self.started = 0.0

    def __enter__(self) -> gevent.Timeout:
        self._greenlet = gevent.getcurrent()
        self.started = time.monotonic()
        self._registry[self._greenlet] = self
        return self._timeout.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        self._registry.pop(self._greenlet, None)
        return self._timeout.__exit__(*exc_info)

    def expire(self) -> None:
        """End the wait from another greenlet, as if the keep-alive timeout had passed."""
        def throw() -> None:
            # The connection may have received a request since this was scheduled.
            if self._registry.get(self._greenlet) is self:
                self._greenlet.throw(self._timeout)

        gevent.get_hub().loop.run_callback(throw)


class _ListenerAddress:
    """Address of a listening socket, passed to gunicorn's connection handler in its place.

    The handler only calls getsockname() on the listener, and a connection accepted
    during shutdown may be handled after the listener is closed.
    """

    def __init__(self, listener: Any) -> None:
        self._address = listener.getsockname()

    def getsockname(self) -> Any:
        return self._address


class GatehouseWorker(GeventWorker):
    """The gevent worker that Gatehouse runs under gunicorn; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_waits: dict[Any, _IdleWait] = {}
        self._early_signals: list[int] = []

    def hold_early_signals(self, arbiter: Any) -> None:
        """Keep the shutdown signals that reach a booting worker, to act on them once it can.

        Called from post_fork. Until init_signals runs, after gevent's patching, the worker
        has the master's handlers, which only put the signal in this process's copy of the
        master's queue. Without this, a worker forked just as a shutdown begins would miss
        its SIGTERM and keep the master waiting for the whole graceful timeout.
        """
        for number in _SHUTDOWN_SIGNALS:
            signal.signal(number, lambda received, _frame: self._early_signals.append(received))
        while True:
            try:
                number = arbiter.SIG_QUEUE.get_nowait()
            except queue.Empty:
                break
            if number in _SHUTDOWN_SIGNALS:
                self._early_signals.append(number)

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGUSR2, self.handle_shutdown_notice)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for number in self._early_signals:
            os.kill(os.getpid(), number)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # gunicorn logs its parse errors and sends them as the response's detail.
        safe = error_pages.without_request_data(exc)
        error_pages.take_written_status()
        super().handle_error(req, client, addr, safe)
        status = error_pages.take_written_status()
        if status is not None:
            self._log_rejection(req, addr, status, safe)

    def _log_rejection(self, req: Any, addr: Any, status: int, error: BaseException) -> None:
        """Log and count a response that gunicorn wrote itself, as request_completed does for the app's."""
        from service.http_metrics import RECORDER_KEY
        from service.method_guard import KNOWN_METHODS

        method = getattr(req, "method", None)
        method = method if method in KNOWN_METHODS else "OTHER"
        fields = {"status": status, "error_code": error_pages.problem_code(status), "method": method,
                  "client_ip": addr[0] if addr else None, "error": str(error)[:error_pages.MAX_DETAIL_CHARACTERS]}
        # As request_completed: a 501 rejects the client's transfer coding, so it is the client's error.
        if status >= 500 and status != 501:
            self.log.error("request_rejected", extra=fields)
        else:
            self.log.warning("request_rejected", extra=fields)
        app = getattr(self, "application", None)
        recorder = app.extensions.get(RECORDER_KEY) if app is not None else None
        # Counted whatever the path, because the probes that the metrics leave out are well-formed.
        if recorder is not None:
            recorder.count_rejected(method, status)

    def handle_shutdown_notice(self, _sig: int, _frame: Any) -> None:
        state.begin_shutdown()
        # Logging takes locks, so it runs in a greenlet rather than in the signal handler.
        gevent.spawn(self.log.info, "worker_draining", extra={"worker_pid": self.pid})

    def load_wsgi(self) -> None:
        from service.config import InvalidConfiguration
        from service.tokens.keys import InvalidSigningKey, MissingSigningKey

        try:
            super().load_wsgi()
        except (InvalidConfiguration, MissingSigningKey, InvalidSigningKey) as exc:
            # The master checked the settings and keys at start and before each reload, so
            # a file went bad since: a key, a blocklist, a certificate, the log directory.
            # gunicorn stops the whole server when a worker fails to boot. So this worker
            # exits as a crashed one after a pause, and the master starts another while
            # the other workers go on serving.
            self.log.error("worker_settings_invalid", extra={
                "worker_pid": self.pid, "error": str(exc), "retry_seconds": SETTINGS_RETRY_SECONDS})
            time.sleep(SETTINGS_RETRY_SECONDS)
            raise SystemExit(SETTINGS_INVALID_EXIT) from None
        # The app itself, for the worker_exit hook; self.wsgi becomes the wrapper below.
        self.application = app = self.wsgi

        def close_when_stopping(environ: dict, start_response: Any) -> Any:
            body = app(environ, start_response)
            # gunicorn picks keep-alive when a request starts. One that started before
            # the stop and ends after it closes its connection too, rather than leave the
            # client a connection that is about to go away. The headers are not sent yet:
            # gunicorn writes them with the first chunk of the body.
            response = getattr(start_response, "__self__", None)
            if not self.alive and response is not None:
                response.force_close()
            return body

        self.wsgi = close_when_stopping

    def timeout_ctx(self) -> _IdleWait:  # type: ignore[override]
        return _IdleWait(self._idle_waits, self.cfg.keepalive)

    def run(self) -> None:
        servers = [self._start_server(listener) for listener in self.sockets]

        while self.alive:
            self.notify()
            gevent.sleep(POLL_SECONDS)

        stop_started = time.monotonic()
        for server, listener in zip(servers, self.sockets, strict=True):
            self._accept_queued(server, listener)
            server.close()

        deadline = stop_started + max(self.cfg.graceful_timeout - EXIT_MARGIN_SECONDS, POLL_SECONDS)
        while time.monotonic() < deadline:
            self._close_idle_connections(stop_started)
            busy = sum(server.pool.size - server.pool.free_count() for server in servers)
            if not busy:
                self.log.info("worker_stopped", extra={
                    "worker_pid": self.pid, "stop_seconds": round(time.monotonic() - stop_started, 3)})
                return
            self.notify()
            gevent.sleep(POLL_SECONDS)

        busy = sum(server.pool.size - server.pool.free_count() for server in servers)
        self.log.warning("worker_graceful_timeout", extra={"worker_pid": self.pid, "connections": busy})
        for server in servers:
            server.stop(timeout=EXIT_MARGIN_SECONDS / 2)

    def _start_server(self, listener: Any) -> StreamServer:
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        listener.setblocking(1)
        server = StreamServer(listener, handle=partial(self.handle, _ListenerAddress(listener)),
                              spawn=Pool(self.worker_connections), **ssl_args)
        if self.cfg.workers > 1:
            # Accept one connection per wake-up, so that idle workers get a share of a burst.
            server.max_accept = 1
        server.start()
        return server

    def _accept_queued(self, server: StreamServer, listener: Any) -> None:
        """Serve every connection the kernel has queued for the listening socket.

        The connections already completed their handshake; if the last process holding
        the socket closed it with them still queued, the kernel would reset them.
        """
        server.stop_accepting()
        listener.settimeout(0.0)
        while True:
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("accept_failed_on_shutdown", extra={"error": str(exc)})
                return
            server.do_handle(client, address)

    def _close_idle_connections(self, stop_started: float) -> None:
        now = time.monotonic()
        for wait in list(self._idle_waits.values()):
            if now - max(wait.started, stop_started) >= SHUTDOWN_IDLE_SECONDS:
                wait.expire()
