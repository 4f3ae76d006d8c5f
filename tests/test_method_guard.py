"""service.method_guard on environ dictionaries as WSGI servers build them."""

from __future__ import annotations

import re

import pytest

from service.method_guard import (
    ENCODED_CHARACTER_KEY,
    ENCODED_SEPARATOR_KEY,
    MethodGuard,
    has_encoded_separator,
    has_encoded_unreserved,
)


def passed_environ(environ: dict) -> dict:
    """Run the middleware on a copy of environ and return the environ the app received."""
    received = {}

    def app(environ, _start_response):
        received.update(environ)
        return []

    MethodGuard(app)({"REQUEST_METHOD": "GET", **environ}, None)
    return received


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1%2Fadmin%2Fusers", True),
    ("/v1/admin%2fusers", True),
    ("/v1/admin%5Cusers", True),
    ("/v1/admin%5cusers", True),
    ("http://127.0.0.1/v1%2fadmin", True),
    ("/v1/admin/users", False),
    ("/v1/admin/users%2", False),
    ("/v1/admin/users%252F", False),
    ("/.well%2Dknown/jwks.json", False),
], ids=["upper", "lower", "backslash_upper", "backslash_lower", "absolute_form", "plain", "truncated_escape",
        "double_encoded", "other_escape"])
def test_encoded_separator_detected(path, expected):
    assert has_encoded_separator(path) is expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1/%61dmin/users", True),
    ("/v1/%41dmin/users", True),
    ("/v1/admin/users%2e", True),
    ("/v1/admin/%7Eusers", True),
    ("/v1/admin/%5Fusers", True),
    ("/v1/admin/bans/%39", True),
    ("/v1/admin/bans/2001%3Adb8%3A%3A1", False),
    ("/v1/admin/bans/%5B2001:db8::1%5D:443", False),
    ("/v1/admin/users%2F", False),
    ("/v1/admin/users%25", False),
    ("/v1/admin/users%6", False),
    ("/v1/admin/users", False),
], ids=["lower_letter", "upper_letter", "dot", "tilde", "underscore", "digit", "colon", "brackets", "separator",
        "percent", "truncated_escape", "plain"])
def test_encoded_unreserved_detected(path, expected):
    assert has_encoded_unreserved(path) is expected


def test_encoded_character_routed_by_raw_path():
    received = passed_environ({"RAW_URI": "/v1/%61dmin/users?limit=1", "PATH_INFO": "/v1/admin/users"})

    assert received["PATH_INFO"] == "/v1/%61dmin/users"
    assert received[ENCODED_CHARACTER_KEY] is True
    assert ENCODED_SEPARATOR_KEY not in received


def test_encoded_separator_routed_by_raw_path():
    received = passed_environ({"RAW_URI": "/v1%2Fadmin%2Fusers?limit=1", "PATH_INFO": "/v1/admin/users"})

    assert received["PATH_INFO"] == "/v1%2Fadmin%2Fusers"
    assert received[ENCODED_SEPARATOR_KEY] is True


def test_request_uri_used_without_raw_uri():
    received = passed_environ({"REQUEST_URI": "/v1%2fadmin", "PATH_INFO": "/v1/admin"})

    assert received["PATH_INFO"] == "/v1%2fadmin"


@pytest.mark.parametrize("environ", [
    {"RAW_URI": "/v1/admin/users?cursor=a%2Fb", "PATH_INFO": "/v1/admin/users"},
    {"RAW_URI": "/v1/users/me", "PATH_INFO": "/v1/users/me"},
    # A server that keeps no raw target leaves only the decoded path, which passes unchanged.
    {"PATH_INFO": "/v1/admin/users"},
], ids=["separator_in_query", "plain", "no_raw_target"])
def test_other_requests_pass_unchanged(environ):
    received = passed_environ(environ)

    assert received["PATH_INFO"] == environ["PATH_INFO"]
    assert ENCODED_SEPARATOR_KEY not in received
    assert ENCODED_CHARACTER_KEY not in received


def test_no_route_accepts_percent(app):
    # The raw path of a marked request contains "%", so it must match no API route.
    # Flask's static route accepts any path, but it serves a folder that does not exist,
    # so every request there is a 404, which a marked request turns into a 400 as well.
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        assert "%" not in rule.rule, rule.rule
        for name, converter in rule._converters.items():
            assert not re.fullmatch(converter.regex, "a%2Fb"), (rule.rule, name)
