"""Body limits, body read errors and request-head limits through a real gunicorn master with gevent workers.

Requests are written on raw sockets, because HTTP client libraries neither send
a chunked body while reading an early response nor send oversized request heads.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
AUTH_LIMIT = 8192
STEP = 64 * 1024


def connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def post_head(path: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{extra}\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length body; return its status, headers and body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(65536)
        assert received, f"connection closed before a full response head: {data!r}"
        data += received
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        received = sock.recv(65536)
        assert received, "connection closed inside the response body"
        body += received
    return int(status_line.split()[1]), headers, body[:length]


def send_chunked_until_answered(sock: socket.socket, total: int, max_seconds: float = 30) -> tuple[int, float]:
    """Send up to `total` bytes in chunks, stopping as soon as a response is readable.

    Return the bytes sent and the seconds it took. The server may close the
    connection while the client still sends; that ends the sending too.
    """
    data = b"x" * STEP
    sent = 0
    started = time.monotonic()
    while sent < total and time.monotonic() - started < max_seconds:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(chunk(data))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(data)
    return sent, time.monotonic() - started


def worker_rss_kib(master_pid: int) -> dict[int, int]:
    """Return the resident memory in KiB of each worker of a gunicorn master."""
    rss = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["PPid"]) == master_pid and "VmRSS" in fields:
            rss[int(status.parent.name)] = int(fields["VmRSS"].split()[0])
    return rss


def test_small_chunked_body_accepted(server):
    body = json.dumps({"email": "chunky@example.com", "password": PASSWORD}).encode()
    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/register") + chunk(body[:10]) + chunk(body[10:]) + b"0\r\n\r\n")
        status, _, response = read_response(sock)

        assert status == 201, response
        assert json.loads(response)["email"] == "chunky@example.com"

        # The body was read to its end, so the same connection serves the next request.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_chunked_body_at_limit_accepted(server):
    # Valid JSON padded with spaces to exactly the limit: not cut short, not refused.
    body = json.dumps({"email": "padded@example.com", "password": PASSWORD}).encode()
    body += b" " * (AUTH_LIMIT - len(body))
    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/register") + chunk(body[:5000]) + chunk(body[5000:]) + b"0\r\n\r\n")
        status, _, response = read_response(sock)

    assert status == 201, response


def test_chunked_body_over_limit_refused(server):
    # One byte over the limit. werkzeug alone cuts a chunked body at the limit without an
    # error, and the parser would then accept the valid JSON before the padding.
    body = json.dumps({"email": "padded@example.com", "password": PASSWORD}).encode()
    body += b" " * (AUTH_LIMIT + 1 - len(body))
    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/register") + chunk(body) + b"0\r\n\r\n")
        status, headers, response = read_response(sock)

    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(response)["code"] == "payload_too_large"


def test_50mb_chunked_body_refused_with_flat_memory(server):
    master_pid = server.process.pid
    # Warm-up, so first-request allocations (argon2's memory among them) are not measured.
    for n in range(4):
        requests.post(f"{server.url}/v1/auth/register", json={"email": f"warm{n}@example.com", "password": PASSWORD},
                      headers={"Connection": "close"}, timeout=10)
    before = worker_rss_kib(master_pid)

    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/register"))
        sent, seconds = send_chunked_until_answered(sock, 50 * 1024 * 1024)
        status, _, response = read_response(sock)

    after = worker_rss_kib(master_pid)
    assert status == 413, response
    assert json.loads(response)["code"] == "payload_too_large"
    assert seconds < 10
    assert sent >= AUTH_LIMIT
    assert set(after) == set(before)
    growth_kib = {pid: after[pid] - before[pid] for pid in before}
    assert max(growth_kib.values()) < 8 * 1024, growth_kib


def test_endless_chunked_body_cut_off(server):
    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/register"))
        send_chunked_until_answered(sock, 50 * 1024 * 1024)
        status, _, _ = read_response(sock)
        assert status == 413

        # Keep sending as a client that ignores the response would: the server reads at
        # most about a second's worth more, then shuts the connection down.
        started = time.monotonic()
        closed = False
        # A short timeout per send: once the server stops reading, a send blocks until the
        # buffers fill, and the end of the connection must still be noticed.
        sock.settimeout(0.5)
        while time.monotonic() - started < 10:
            try:
                sock.sendall(chunk(b"x" * STEP))
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable and sock.recv(65536) == b"":
                    closed = True
                    break
            except ConnectionResetError:
                closed = True
                break

        assert closed
        assert time.monotonic() - started < 5


def test_oversized_content_length_refused_unread(server):
    with connect(server.url) as sock:
        sock.sendall(b"POST /v1/auth/login HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\n\r\n")
        status, headers, response = read_response(sock)

    assert status == 413
    assert str(AUTH_LIMIT) in json.loads(response)["detail"]
    assert headers["connection"] == "close"


@pytest.mark.parametrize("sent", ["part", "whole"])
def test_response_to_unread_body_closes_connection(server, sent):
    """A response that leaves the body unread carries Connection: close, and the server closes after it."""
    declared = AUTH_LIMIT + 1000
    body = b"{" * (100 if sent == "part" else declared)
    with connect(server.url) as sock:
        sock.sendall(b"POST /v1/auth/login HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {declared}\r\n\r\n".encode() + body)
        status, headers, _ = read_response(sock)

        assert status == 413
        assert headers["connection"] == "close"
        sock.settimeout(5)
        assert sock.recv(100) == b""


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /health?" + b"q" * 4100 + b" HTTP/1.1\r\nHost: gatehouse\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\nHost: gatehouse\r\n" + b"".join(b"X-Header-%d: v\r\n" % n for n in range(60)) + b"\r\n",
     431),
    (b"GET /health HTTP/1.1\r\nHost: gatehouse\r\nX-Long: " + b"v" * 9000 + b"\r\n\r\n", 431),
    (b"GET /health?" + b"q" * 4000 + b" HTTP/1.1\r\nHost: gatehouse\r\nX-Long: " + b"v" * 8000 + b"\r\n\r\n", 200),
], ids=["request_line", "header_count", "header_size", "just_within"])
def test_gunicorn_request_head_limits(server, head, status):
    with connect(server.url) as sock:
        sock.sendall(head)
        assert read_response(sock)[0] == status


# Chunked bodies that gunicorn's chunked reader rejects: a size that is not hexadecimal,
# a negative size, a size with a trailing space, and a chunk without its CRLF.
MALFORMED_CHUNKED_BODIES = {
    "size_hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "size_negative": b"-2\r\nab\r\n0\r\n\r\n",
    "size_space": b"2 \r\nab\r\n0\r\n\r\n",
    "terminator": b"2\r\nabXY0\r\n\r\n",
}
READ_TIMEOUT_SECONDS = 2
STALLED_HEAD = (b"POST /v1/auth/login HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
                b"Content-Length: 50\r\n\r\n{")


def assert_closed(sock: socket.socket) -> None:
    """Fail unless the server closes the connection within 5 s without sending more."""
    sock.settimeout(5)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b""


def logged_events(server, event: str) -> list[dict]:
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


@pytest.mark.parametrize("body", MALFORMED_CHUNKED_BODIES.values(), ids=MALFORMED_CHUNKED_BODIES.keys())
@pytest.mark.parametrize("path", ["/v1/auth/login", "/v1/auth/register", "/nowhere"])
def test_malformed_chunked_body_rejected(server, path, body):
    with connect(server.url) as sock:
        sock.sendall(post_head(path) + body)
        status, headers, response = read_response(sock)

        assert status == 400
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert json.loads(response)["code"] == "invalid_body_encoding"
        assert json.loads(response)["field"] == "body"
        assert_closed(sock)
    assert logged_events(server, "server_error") == []


def test_health_probe_rejects_malformed_body(server):
    with connect(server.url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gatehouse\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + MALFORMED_CHUNKED_BODIES["size_hex"])
        received = b""
        while data := sock.recv(65536):
            received += data

    # One response: gunicorn must not find the bad chunk itself and append its own 400.
    assert received.count(b"HTTP/1.1 ") == 1
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b'"code": "invalid_body_encoding"' in received


@pytest.mark.parametrize("encodings", [["gzip, chunked"], ["identity, chunked"], ["gzip", "chunked"]],
                         ids=["gzip", "identity", "two_fields"])
def test_other_transfer_codings_rejected(server, encodings):
    fields = "".join(f"Transfer-Encoding: {encoding}\r\n" for encoding in encodings)
    head = (f"POST /v1/auth/register HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
            f"{fields}\r\n").encode()
    body = json.dumps({"email": "gzip@example.com", "password": PASSWORD}).encode()
    with connect(server.url) as sock:
        sock.sendall(head + chunk(body) + b"0\r\n\r\n")
        status, headers, response = read_response(sock)

        assert status == 501
        assert headers["connection"] == "close"
        assert json.loads(response)["code"] == "unsupported_transfer_encoding"
        assert json.loads(response)["field"] == "Transfer-Encoding"
        assert_closed(sock)


def test_content_length_with_chunked_rejected(server):
    # gunicorn rejects this itself (RFC 9112 section 6.3), because the two lengths could disagree.
    with connect(server.url) as sock:
        sock.sendall(post_head("/v1/auth/login", "Content-Length: 5\r\n") + chunk(b"{}") + b"0\r\n\r\n")
        status, _, _ = read_response(sock)

        assert status == 400
        assert_closed(sock)


@pytest.fixture(scope="module")
def quick_timeout_server(tmp_path_factory):
    """One worker with 10 connections and a short body read timeout, so stalled clients can fill it."""
    env = {"GATEHOUSE_BODY_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS), "GATEHOUSE_WORKER_CONNECTIONS": "10"}
    with Gunicorn(tmp_path_factory.mktemp("quick-timeout"), env=env, workers=1) as gunicorn:
        yield gunicorn


def test_stalled_body_times_out(quick_timeout_server):
    with connect(quick_timeout_server.url) as sock:
        sock.sendall(STALLED_HEAD)
        started = time.monotonic()
        # /health must return while the stalled request still waits for its body.
        health = requests.get(f"{quick_timeout_server.url}/health", timeout=READ_TIMEOUT_SECONDS / 2)
        status, headers, response = read_response(sock)
        waited = time.monotonic() - started

        assert health.status_code == 200
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(response)["code"] == "body_timeout"
        assert READ_TIMEOUT_SECONDS * 0.9 <= waited < READ_TIMEOUT_SECONDS + 3
        assert_closed(sock)
    assert len(logged_events(quick_timeout_server, "request_body_timed_out")) >= 1


def test_stalled_bodies_release_connections(quick_timeout_server):
    # As many stalled clients as the worker has connections, so /health waits in the listen
    # queue until the body read timeout frees them.
    stalled = [connect(quick_timeout_server.url) for _ in range(10)]
    try:
        for sock in stalled:
            sock.sendall(STALLED_HEAD)
        started = time.monotonic()
        health = requests.get(f"{quick_timeout_server.url}/health", timeout=10)
        waited = time.monotonic() - started

        assert health.status_code == 200
        assert waited < READ_TIMEOUT_SECONDS + 4
        for sock in stalled:
            assert read_response(sock)[0] == 408
    finally:
        for sock in stalled:
            sock.close()


def test_stalled_body_ends_before_shutdown(tmp_path):
    env = {"GATEHOUSE_BODY_READ_TIMEOUT_SECONDS": "2", "GATEHOUSE_GRACEFUL_TIMEOUT": "30"}
    with Gunicorn(tmp_path, env=env) as gunicorn, connect(gunicorn.url) as sock:
        sock.sendall(STALLED_HEAD)
        time.sleep(0.5)
        started = time.monotonic()
        gunicorn.process.send_signal(signal.SIGTERM)
        status, headers, _ = read_response(sock)
        gunicorn.wait_exit(timeout=20)
        stopped = time.monotonic() - started

        assert status == 408
        assert headers["connection"] == "close"
        assert stopped < 2 + 3
