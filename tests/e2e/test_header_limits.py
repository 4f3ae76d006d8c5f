"""Request headers beyond gunicorn's limits (limit_request_field_size, limit_request_fields in gunicorn.conf.py).

gunicorn rejects such a request itself with 431 before the app receives it, and
the worker that read it must keep serving.
"""

from __future__ import annotations

import socket

import pytest
import requests

from tests.helpers import bearer

pytestmark = pytest.mark.e2e

# gunicorn.conf.py: limit_request_field_size = 8190 bytes, limit_request_fields = 50.
OVERSIZED_TOKEN = "a" * 16 * 1024
MANY_HEADERS = 200
# Enough new connections that both workers serve some of them.
PROBES = 8


def raw_request(url: str, headers: dict[str, str]) -> bytes:
    """Send GET /v1/users/me with headers on a new connection and return the whole response."""
    host, port = url.removeprefix("http://").split(":")
    lines = ["GET /v1/users/me HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def health_statuses(url: str) -> list[int]:
    return [requests.get(f"{url}/health", headers={"Connection": "close"}, timeout=10).status_code
            for _ in range(PROBES)]


def test_oversized_header_gets_431(server):
    workers = server.worker_pids()

    response = raw_request(server.url, bearer(OVERSIZED_TOKEN))

    assert status_of(response) == 431
    assert health_statuses(server.url) == [200] * PROBES
    assert server.worker_pids() == workers


def test_too_many_headers_get_431(server):
    workers = server.worker_pids()

    response = raw_request(server.url, {f"X-Filler-{index}": "x" for index in range(MANY_HEADERS)})

    assert status_of(response) == 431
    assert health_statuses(server.url) == [200] * PROBES
    assert server.worker_pids() == workers


def test_header_within_limit_reaches_app(server):
    # Just under limit_request_field_size with "Authorization: Bearer ": the app rejects the token itself.
    response = requests.get(f"{server.url}/v1/users/me", headers=bearer("a" * 8000), timeout=10)

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
