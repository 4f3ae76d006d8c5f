"""Body size limits, body read errors and JSON input rules through the Flask test client.

Chunked bodies need a server that terminates the stream, so they are tested
through gunicorn in tests/e2e/test_payload.py. Here a stand-in for gunicorn's
input stream raises the errors of gunicorn's chunked reader, or stalls.
"""

from __future__ import annotations

import io
import gzip
import json
import time

import gevent
import pytest
from gunicorn.http.errors import (ChunkMissingTerminator, InvalidChunkExtension, InvalidChunkSize, InvalidHeader,
                                  LimitRequestHeaders, NoMoreData)

from werkzeug.test import EnvironBuilder

from service.app import close_app, create_app
from tests.conftest import PASSWORD

AUTH_LIMIT = 8192
GENERAL_LIMIT = 16384


def padded_register_body(size: int) -> bytes:
    """A valid registration body padded with trailing spaces to exactly `size` bytes."""
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD}).encode()
    return body + b" " * (size - len(body))


def test_auth_body_at_limit_accepted(client):
    response = client.post("/v1/auth/register", data=padded_register_body(AUTH_LIMIT),
                           content_type="application/json")

    assert response.status_code == 201


def test_auth_body_over_limit_rejected(client):
    response = client.post("/v1/auth/register", data=padded_register_body(AUTH_LIMIT + 1),
                           content_type="application/json")

    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "payload_too_large"
    assert response.get_json()["field"] == "body"
    assert str(AUTH_LIMIT) in response.get_json()["detail"]


def test_other_routes_use_general_limit(client):
    # A body larger than the auth limit passes elsewhere; a route without a body model ignores it.
    within = client.get("/.well-known/jwks.json", data=b"x" * (AUTH_LIMIT + 100))
    over = client.get("/.well-known/jwks.json", data=b"x" * (GENERAL_LIMIT + 1))

    assert within.status_code == 200
    assert over.status_code == 413


def test_body_limit_checked_before_bearer_token(client):
    response = client.post("/v1/auth/logout", data=b"x" * (AUTH_LIMIT + 1))

    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/merge-patch+json", None])
def test_json_routes_reject_other_media_types(client, content_type):
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD})
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post("/v1/auth/register", data=body, headers=headers)

    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"
    assert response.get_json()["field"] == "Content-Type"


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip", "x-unknown"])
def test_content_encoding_rejected(client, coding):
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD}).encode()
    if coding == "gzip":
        body = gzip.compress(body)

    response = client.post("/v1/auth/register", data=body, content_type="application/json",
                           headers={"Content-Encoding": coding})

    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"
    assert response.get_json()["field"] == "Content-Encoding"
    assert response.headers["Accept-Encoding"] == "identity"
    # Nothing was registered: the same body without the header still creates the account.
    assert client.post("/v1/auth/register", json=json.loads(gzip.decompress(body) if coding == "gzip" else body)
                       ).status_code == 201


@pytest.mark.parametrize("coding", ["identity", "IDENTITY", " identity "])
def test_identity_content_encoding_accepted(client, coding):
    response = client.post("/v1/auth/register", json={"email": "alice@example.com", "password": PASSWORD},
                           headers={"Content-Encoding": coding})

    assert response.status_code == 201


def test_json_with_charset_parameter_accepted(client):
    response = client.post("/v1/auth/register", data=json.dumps({"email": "alice@example.com", "password": PASSWORD}),
                           content_type="application/json; charset=utf-8")

    assert response.status_code == 201


def test_deep_nesting_rejected_as_invalid_json(client):
    # pydantic-core's JSON parser stops at a fixed depth of about 200.
    body = '{"email": ' + "[" * 1000 + "]" * 1000 + ', "password": "x"}'

    response = client.post("/v1/auth/login", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_json"


# Bodies that are not JSON, each sent to every operation that takes a JSON body.
INVALID_JSON_BODIES = {
    "empty": b"",
    "malformed": b"{",
    "byte_order_mark": b'\xef\xbb\xbf{"email": "alice@example.com", "password": "x"}',
    "invalid_utf8": b'{"email": "\xff@example.com", "password": "x"}',
    "nested_300_levels": b'{"email": ' + b"[" * 300 + b"]" * 300 + b', "password": "x"}',
    "trailing_characters": b'{"email": "alice@example.com", "password": "x"} x',
    # Python's json module and pydantic-core accept these tokens, but RFC 8259 has none of them.
    "nan": b'{"email": "alice@example.com", "password": NaN}',
    "infinity": b'{"email": "alice@example.com", "password": Infinity}',
    "negative_infinity": b'{"email": "alice@example.com", "password": -Infinity}',
    "nan_in_array": b'{"email": ["alice@example.com", NaN], "password": "x"}',
    "lone_surrogate": b'{"email": "\\ud800@example.com", "password": "x"}',
    "control_character": b'{"email": "alice@example.com", "password": "line\nbreak"}',
}
# Values for the path parameters of the operations that take a body.
PATH_VALUES = {"user_id": "0" * 32}


def body_operations(app) -> list[tuple[str, str]]:
    """Return the method and a path of every operation that declares a JSON body."""
    adapter = app.url_map.bind("localhost")
    operations = []
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions[rule.endpoint], "openapi_operation", None)
        if spec is None or spec.request is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            values = {name: PATH_VALUES[name] for name in rule.arguments}
            operations.append((method, adapter.build(rule.endpoint, values, method=method)))
    return operations


def test_body_operations_found(app):
    paths = {path for _, path in body_operations(app)}

    assert "/v1/auth/login" in paths
    assert f"/v1/admin/users/{PATH_VALUES['user_id']}/password" in paths


@pytest.mark.parametrize("body", INVALID_JSON_BODIES.values(), ids=INVALID_JSON_BODIES.keys())
def test_invalid_json_names_body(app, client, admin_tokens, body):
    headers = {"Authorization": f"Bearer {admin_tokens['access_token']}", "Content-Type": "application/json"}

    for method, path in body_operations(app):
        response = client.open(path, method=method, data=body, headers=headers)

        assert response.status_code == 400, (method, path)
        problem = response.get_json()
        assert problem["code"] == "invalid_json", (method, path)
        assert problem["field"] == "body", (method, path)
        assert problem["detail"].startswith("The request body is"), (method, path)


SECRET = "s3cret passphrase"
# Bodies with a mistake that pydantic-core's own message misnames or leaves unexplained,
# and the words the detail must contain instead.
UNCLEAR_JSON_ERRORS = {
    "lone_leading_surrogate": (f'{{"email": "\\ud800@x.io", "password": "{SECRET}"}}',
                               "the string at email contains a lone surrogate escape"),
    "lone_trailing_surrogate": (f'{{"email": "x@x.io", "password": "{SECRET}\\udc00"}}',
                                "the string at password contains a lone surrogate escape"),
    "leading_surrogate_then_letter": (f'{{"password": "{SECRET}\\ud83d\\u0041", "email": "x@x.io"}}',
                                      "the string at password contains a lone surrogate escape"),
    "surrogate_in_key": (f'{{"email": "x@x.io", "password": "{SECRET}", "\\udfff": 1}}',
                         "an object key at the top level contains a lone surrogate escape"),
    "invalid_escape": (f'{{"email": "x@x.io", "password": "{SECRET}\\x41"}}',
                       "the string at password contains an invalid escape"),
    "short_unicode_escape": (f'{{"email": "x@x.io", "password": "{SECRET}\\u12"}}',
                             "the string at password contains an invalid escape"),
    "raw_line_break": (f'{{"email": "x@x.io", "password": "{SECRET}\n"}}',
                       "the string at password contains a control character"),
    "nan": (f'{{"email": "x@x.io", "password": "{SECRET}", "extra": NaN}}', "NaN and Infinity are not JSON numbers"),
    "misspelt_literal": (f'{{"email": "x@x.io", "password": "{SECRET}", "extra": tru}}',
                         "expected true, false or null"),
    "single_quotes": (f"{{'email': 'x@x.io', 'password': '{SECRET}'}}", "expected an object key in double quotes"),
}


@pytest.mark.parametrize(("body", "expected"), UNCLEAR_JSON_ERRORS.values(), ids=UNCLEAR_JSON_ERRORS.keys())
def test_invalid_json_detail_names_mistake(client, body, expected):
    response = client.post("/v1/auth/login", data=body.encode(), content_type="application/json")

    problem = response.get_json()
    assert response.status_code == 400
    assert problem["code"] == "invalid_json"
    assert problem["field"] == "body"
    assert expected in problem["detail"]
    assert SECRET not in problem["detail"]
    assert "hex escape" not in problem["detail"]


def test_invalid_utf8_detail_names_encoding(client):
    body = b'{"email": "x@x.io", "password": "caf\xe9"}'

    response = client.post("/v1/auth/login", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["detail"] == ("The request body is not valid JSON: the string at password is not "
                                             "valid UTF-8. Send the body encoded as UTF-8.")


def test_nested_string_error_names_path(client):
    body = b'{"email": "x@x.io", "password": "x", "tags": [{"name": "a"}, {"name": "\\q"}]}'

    response = client.post("/v1/auth/login", data=body, content_type="application/json")

    assert response.status_code == 400
    assert "the string at tags.1.name contains an invalid escape" in response.get_json()["detail"]


def test_nan_words_in_strings_accepted(client):
    body = b'{"email": "alice@example.com", "password": "NaN Infinity -Infinity"}'

    response = client.post("/v1/auth/register", data=body, content_type="application/json")

    assert response.status_code == 201


def test_shallow_nesting_rejected_by_field(client):
    body = {"email": [[["alice@example.com"]]], "password": PASSWORD}

    response = client.post("/v1/auth/login", json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == "email"


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "a" * 400 + "@example.com", "password": PASSWORD}, "email"),
    ({"email": "alice@example.com", "password": "p" * 257}, "password"),
    ({"refresh_token": "t" * 257}, "refresh_token"),
], ids=["email", "password", "refresh_token"])
def test_long_strings_rejected_by_field(client, body, field):
    path = "/v1/auth/refresh" if "refresh_token" in body else "/v1/auth/login"

    response = client.post(path, json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_unknown_field_rejected(client):
    response = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD,
                                                   "remember_me": True})

    assert response.status_code == 400
    assert response.get_json()["field"] == "remember_me"
    assert response.get_json()["errors"] == [{"field": "remember_me", "message": "unknown field"}]


@pytest.mark.parametrize("name", ["a[0]", "f(x)", "", "email.x"])
def test_unknown_field_named_as_sent(client, name):
    response = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD, name: 1})

    assert response.status_code == 400
    assert response.get_json()["field"] == name
    assert response.get_json()["errors"] == [{"field": name, "message": "unknown field"}]
    quoted_if_empty = name or '""'
    assert response.get_json()["detail"] == f"{quoted_if_empty}: unknown field"


class FailingStream:
    """A WSGI input stream that raises `error` on every read, as gunicorn's reader does on a bad body."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error


class StalledStream:
    """A WSGI input stream whose client sends nothing more: every read waits `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def read(self, size: int = -1) -> bytes:
        gevent.sleep(self.seconds)
        return b""


class ServerResponse:
    """A stand-in for gunicorn's response object, whose bound start_response the app receives."""

    def __init__(self) -> None:
        self.status = 0
        self.closed = False

    def start_response(self, status: str, headers: list, exc_info=None):
        self.status = int(status.split()[0])
        return lambda data: None

    def force_close(self) -> None:
        self.closed = True


def post_stream(app, path: str, stream, headers: dict[str, str]) -> tuple[ServerResponse, dict]:
    """POST to the app with `stream` as gunicorn's input stream; return the server response and the JSON body."""
    environ = EnvironBuilder(path=path, method="POST",
                             headers={"Content-Type": "application/json", **headers}).get_environ()
    # gunicorn sets wsgi.input_terminated, and werkzeug then reads the stream as it is.
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    # EnvironBuilder takes CONTENT_LENGTH from its own data, which is empty here.
    if "Content-Length" in headers:
        environ["CONTENT_LENGTH"] = headers["Content-Length"]
    server = ServerResponse()
    body = b"".join(app(environ, server.start_response))
    return server, json.loads(body)


def log_events(text: str, event: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


CHUNKED = {"Transfer-Encoding": "chunked"}


# A body sent without chunk framing: gunicorn's errors quote the line they failed on.
SECRET_BODY = b'{"email":"alice@example.com","password":"HUNTER2SECRETPW"}'


@pytest.mark.parametrize("error", [
    InvalidChunkSize(b"zz"), InvalidChunkSize(b"-2"), InvalidChunkSize(b"2 "), ChunkMissingTerminator(b"XY"),
    InvalidChunkExtension("bare CR not allowed"), LimitRequestHeaders("limit request trailer section size"),
    InvalidHeader("bare LF as line terminator"), NoMoreData(), ConnectionResetError(104, "reset by peer"),
    InvalidChunkSize(SECRET_BODY), NoMoreData(SECRET_BODY),
], ids=["size_hex", "size_negative", "size_space", "terminator", "extension", "trailer_size", "trailer_header",
        "no_more_data", "reset", "size_is_body", "no_more_data_after_body"])
@pytest.mark.parametrize("path", ["/v1/auth/login", "/v1/auth/register", "/nowhere"])
def test_unreadable_chunked_body_rejected(app, capsys, path, error):
    server, problem = post_stream(app, path, FailingStream(error), CHUNKED)

    assert server.status == 400
    assert problem["code"] == "invalid_body_encoding"
    assert problem["field"] == "body"
    assert server.closed
    output = capsys.readouterr().out
    assert log_events(output, "server_error") == []
    logged = log_events(output, "request_body_invalid")
    assert len(logged) == 1
    assert logged[0]["level"] == "warning"
    assert "exception" not in logged[0]
    assert "HUNTER2SECRETPW" not in output


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_health_probe_reads_body(app, method):
    # The probe skips the request hooks only without a body: this one is read and rejected.
    environ = EnvironBuilder(path="/health", method=method, headers=CHUNKED).get_environ()
    environ.update({"wsgi.input": FailingStream(InvalidChunkSize(b"zz")), "wsgi.input_terminated": True})
    server = ServerResponse()

    b"".join(app(environ, server.start_response))

    assert server.status == 400
    assert server.closed


def test_truncated_body_rejected(app):
    server, problem = post_stream(app, "/v1/auth/login", io.BytesIO(b"{"), {"Content-Length": "50"})

    assert server.status == 400
    assert problem["code"] == "invalid_body_encoding"
    assert server.closed


def test_complete_body_keeps_connection(app):
    body = json.dumps({"email": "nobody@example.com", "password": PASSWORD}).encode()

    server, problem = post_stream(app, "/v1/auth/login", io.BytesIO(body), {"Content-Length": str(len(body))})

    assert server.status == 401
    assert problem["code"] == "invalid_credentials"
    assert not server.closed


@pytest.fixture
def quick_timeout_app():
    app = create_app({"body_read_timeout_seconds": 1})
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.mark.parametrize("headers", [CHUNKED, {"Content-Length": "50"}], ids=["chunked", "content_length"])
def test_stalled_body_times_out(quick_timeout_app, capsys, headers):
    started = time.monotonic()

    server, problem = post_stream(quick_timeout_app, "/v1/auth/login", StalledStream(30), headers)

    assert server.status == 408
    assert problem["code"] == "body_timeout"
    assert problem["field"] == "body"
    assert server.closed
    assert 1 <= time.monotonic() - started < 5
    logged = log_events(capsys.readouterr().out, "request_body_timed_out")
    assert len(logged) == 1
    assert logged[0]["level"] == "warning"
    assert logged[0]["timeout_seconds"] == 1


@pytest.mark.parametrize("encoding", ["gzip, chunked", "gzip,chunked", "deflate, chunked", "compress, chunked",
                                      "identity, chunked", "x-custom, chunked"])
def test_other_transfer_codings_rejected(app, encoding, capsys):
    stream = FailingStream(AssertionError("the body was read"))
    capsys.readouterr()

    server, problem = post_stream(app, "/v1/auth/register", stream, {"Transfer-Encoding": encoding})

    assert server.status == 501
    assert problem["code"] == "unsupported_transfer_encoding"
    assert problem["field"] == "Transfer-Encoding"
    assert server.closed
    # The client chose the coding: its request line is a warning, not an error.
    completed = log_events(capsys.readouterr().out, "request_completed")
    assert [line["level"] for line in completed] == ["warning"]


@pytest.mark.parametrize("encoding", ["chunked", "Chunked", "CHUNKED", " chunked "])
def test_chunked_alone_accepted(app, encoding):
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD}).encode()

    server, problem = post_stream(app, "/v1/auth/register", io.BytesIO(body), {"Transfer-Encoding": encoding})

    assert server.status == 201, problem
    assert not server.closed
