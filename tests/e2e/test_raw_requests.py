"""Requests whose handling depends on how gunicorn parses them: the raw request target,
repeated header fields, and the headers gunicorn adds to every response.

The requests are written to a socket by hand, because HTTP client libraries normalize
what these tests need to send.
"""

from __future__ import annotations

import json
import socket
import time
from http import HTTPStatus

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import bearer, create_user, login

pytestmark = pytest.mark.e2e


def raw_request(url: str, target: str, headers: list[str]) -> tuple[int, dict[str, str], bytes]:
    """Send GET target with header lines on a new connection; return the status, headers and body."""
    host = url.removeprefix("http://").split(":")[0]
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close", *headers]
    return raw_exchange(url, ("\r\n".join(lines) + "\r\n\r\n").encode())


def admin_token(server, settings) -> str:
    create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    return login(server.url, "root@example.com", PASSWORD)["access_token"]


def request_log(server, request_id: str) -> list[dict]:
    """Return the request_completed records of one request id from the server's output."""
    time.sleep(0.5)
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [record for record in records
            if record.get("event") == "request_completed" and record.get("request_id") == request_id]


def rejection_log(server) -> list[dict]:
    """Return the request_rejected records in the server's output so far."""
    time.sleep(0.5)
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == "request_rejected"]


def count_status(url: str, status: int) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_request_total{") and f'status="{status}"' in line)


@pytest.mark.parametrize("target", ["/v1%2fadmin%2fusers", "/v1%2Fadmin%2Fusers", "/v1/admin%5cusers",
                                    "/v1%2Fadmin/users?limit=1"])
def test_encoded_separator_rejected(server, settings, target):
    token = admin_token(server, settings)
    # The decoded path is a route this token may use, so only the encoding is at fault.
    assert raw_request(server.url, "/v1/admin/users", [f"Authorization: Bearer {token}"])[0] == 200
    before = count_status(server.url, 400)
    request_id = f"encoded-separator-{time.monotonic_ns()}"

    status, headers, body = raw_request(server.url, target,
                                        [f"Authorization: Bearer {token}", f"X-Request-ID: {request_id}"])

    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["code"] == "encoded_path_separator"
    assert problem["field"] == "path"
    assert problem["request_id"] == request_id
    logged = request_log(server, request_id)
    assert len(logged) == 1
    assert logged[0]["status"] == 400
    assert logged[0]["error_code"] == "encoded_path_separator"
    assert count_status(server.url, 400) == before + 1


@pytest.mark.parametrize(("target", "status", "code", "field"), [
    ("/v1/%61dmin/users", 400, "encoded_path_character", "path"),
    ("/v1/admin/%75sers?limit=1", 400, "encoded_path_character", "path"),
    ("/v1/users/%6De", 400, "encoded_path_character", "path"),
    ("//v1/admin/users", 404, "not_found", None),
    ("///v1/admin/users", 404, "not_found", None),
    ("//v1/users/me", 404, "not_found", None),
], ids=["encoded_letter", "encoded_letter_with_query", "encoded_letter_warm_route", "two_slashes", "three_slashes",
        "two_slashes_warm_route"])
def test_non_canonical_path_not_routed(server, settings, target, status, code, field):
    token = admin_token(server, settings)
    # Twice: the second /v1/users/me would come from the warm path.
    for path in ("/v1/admin/users", "/v1/users/me", "/v1/users/me"):
        assert raw_request(server.url, path, [f"Authorization: Bearer {token}"])[0] == 200

    got_status, headers, body = raw_request(server.url, target, [f"Authorization: Bearer {token}"])

    assert got_status == status
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == code
    assert json.loads(body).get("field") == field


@pytest.mark.parametrize(("target", "header", "status", "code"), [
    ("/v1/metrics", "SCRIPT_NAME: /v1", 404, "not_found"),
    ("/v1/ready", "SCRIPT_NAME: /v1", 404, "not_found"),
    ("/v1/openapi.json", "SCRIPT_NAME: /v1", 404, "not_found"),
    ("/v1/users/me", "SCRIPT_NAME: /elsewhere", 401, "missing_token"),
    ("/health", "SCRIPT_NAME: /elsewhere", 200, None),
    ("/v1/nothing", "PATH_INFO: /metrics", 404, "not_found"),
], ids=["script_name_metrics", "script_name_ready", "script_name_openapi", "script_name_not_prefix_api",
        "script_name_not_prefix_health", "path_info"])
def test_path_headers_from_loopback_ignored(server, target, header, status, code):
    """A request is routed by its target alone, also from loopback, where gunicorn trusts such headers by default."""
    got_status, headers, body = raw_request(server.url, target, [header])

    assert got_status == status, body
    if code is not None:
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == code


def test_encoded_separator_in_query_served(server, settings):
    token = admin_token(server, settings)

    status, _, body = raw_request(server.url, "/v1/admin/users?query=%2F", [f"Authorization: Bearer {token}"])

    assert status == 200
    assert json.loads(body)["items"] == []


@pytest.mark.parametrize("second", ["Authorization: Bearer {token}", "Authorization: Bearer invalid",
                                    "authorization: Basic Zm9vOmJhcg==", "Authorization: "],
                         ids=["same_token", "invalid_token", "basic", "empty"])
@pytest.mark.parametrize("valid_first", [True, False], ids=["valid_first", "valid_second"])
def test_two_authorization_headers_rejected(server, settings, second, valid_first):
    token = admin_token(server, settings)
    valid = f"Authorization: Bearer {token}"
    # Served once first, so the token's claims are cached in the worker as on a warm request.
    assert raw_request(server.url, "/v1/users/me", [valid])[0] == 200
    headers = [valid, second.format(token=token)]
    if not valid_first:
        headers.reverse()

    status, fields, body = raw_request(server.url, "/v1/users/me", headers)

    assert status == 401
    assert fields["content-type"] == "application/problem+json"
    assert 'error="invalid_token"' in fields["www-authenticate"]
    problem = json.loads(body)
    assert problem["code"] == "invalid_token"
    assert "one Authorization header" in problem["detail"]


@pytest.mark.parametrize(("target", "expected_status", "expected_server"), [
    ("/health", 200, "gatehouse"),
    ("/v1/users/me", 401, "gatehouse"),
    ("/nowhere", 404, "gatehouse"),
    # gunicorn rejects an over-long request line itself, with no Server header.
    ("/" + "a" * 5000, 414, None),
], ids=["app_success", "app_error", "not_found", "gunicorn_error"])
def test_server_header_names_no_software(server, target, expected_status, expected_server):
    status, headers, _ = raw_request(server.url, target, [])

    assert status == expected_status
    assert headers.get("server") == expected_server
    assert "gunicorn" not in json.dumps(headers).lower()


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send request bytes as they are on a new connection; return the status, headers and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip()
              for name, _, value in (line.partition(":") for line in header_lines)}
    # The reason phrase under a key no header field can have.
    fields[":reason"] = status_line.split(" ", 2)[2]
    return int(status_line.split(" ", 2)[1]), fields, body


def test_no_content_has_no_content_type(server, settings):
    token = admin_token(server, settings)
    host = server.url.removeprefix("http://").split(":")[0]
    request = (f"POST /v1/auth/logout HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
               f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n")

    status, headers, body = raw_exchange(server.url, request.encode())

    assert status == 204
    assert "content-type" not in headers
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert body == b""


@pytest.mark.parametrize("target", ["/health", "/v1/users/me", "/v1/auth/login", "/nowhere"])
def test_http11_without_host_rejected(server, target):
    status, headers, body = raw_exchange(server.url, f"GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())

    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "missing_host"
    assert json.loads(body)["field"] == "Host"


def test_http10_without_host_served(server):
    status, _, body = raw_exchange(server.url, b"GET /health HTTP/1.0\r\n\r\n")

    assert status == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("request_bytes", [
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    # A line without its end yet: gunicorn gives up after one read of its 8192-byte buffer.
    # (A longer line, sent in full, makes the closing server reset the connection.)
    b"GET /" + b"a" * 8187,
], ids=["complete", "unfinished"])
def test_long_request_line_detail_states_limit(server, request_bytes):
    status, _, body = raw_exchange(server.url, request_bytes)

    assert status == 414
    # gunicorn's own text gave the bytes it had read, such as its whole buffer, as the line's length.
    assert json.loads(body)["detail"] == "Request line is longer than 4094 bytes"


@pytest.mark.parametrize(("request_bytes", "status", "code", "field"), [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long", "request_line"),
    (b"GET /v1/users/me HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_fields_too_large",
     "headers"),
    (b"GET /v1/users/me HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "malformed_request", None),
    (b"GET /v1/users/me HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed_request", None),
    # RFC 9112: chunked must be the final transfer coding of a request.
    (b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
     "malformed_request", None),
    (b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n", 501,
     "unsupported_transfer_encoding", "Transfer-Encoding"),
    (b"GET /v1/users/me HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417, "expectation_failed", "Expect"),
], ids=["long_request_line", "long_header", "bad_header_name", "bad_version", "chunked_not_final",
        "unknown_transfer_coding", "unknown_expectation"])
def test_gunicorn_errors_are_problems(server, request_bytes, status, code, field):
    workers = server.worker_pids()
    rejected_before = len(rejection_log(server))
    counted_before = count_status(server.url, status)

    got_status, headers, body = raw_exchange(server.url, request_bytes)

    assert got_status == status
    assert headers[":reason"] == HTTPStatus(status).phrase
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith(":" + code)
    assert problem.get("field") == field
    assert problem["detail"]
    assert server.worker_pids() == workers
    # One structured line and one count per rejected request, as the app's requests get.
    rejected = rejection_log(server)[rejected_before:]
    assert [(line["status"], line["error_code"], line["level"]) for line in rejected] == [
        (status, code, "warning")]
    assert rejected[0]["client_ip"] == "127.0.0.1"
    assert "Invalid request from ip=" not in server.output()
    assert count_status(server.url, status) == counted_before + 1


SECRET = "SECRETTOKENVALUE123"


@pytest.mark.parametrize("request_bytes", [
    f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {SECRET}\r\n\r\n".encode(),
    f"GET /v1/users/me?access_token={SECRET}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    f"GET /health HTTP/1.1\r\nHost: x\r\nX-Token: a\r\n {SECRET}\r\n\r\n".encode(),
    f"GET /health HTTP/1.1\r\nHost: x\r\n{SECRET}\r\n\r\n".encode(),
], ids=["header_without_colon", "request_line", "folded_header", "bare_line"])
def test_gunicorn_errors_quote_no_request_data(server, request_bytes):
    got_status, _, body = raw_exchange(server.url, request_bytes)

    assert got_status == 400
    problem = json.loads(body)
    assert problem["code"] == "malformed_request"
    assert SECRET not in problem["detail"]
    assert SECRET not in server.output()
