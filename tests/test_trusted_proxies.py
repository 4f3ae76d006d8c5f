"""X-Forwarded-For is trusted only from GATEHOUSE_TRUSTED_PROXY_NETWORKS, when set.

A client that reaches the pods past the proxy could otherwise name any address: a new
rate-limit key for every request, or another client's address to get banned.
"""

from __future__ import annotations

import pytest

from service.app import close_app, create_app
from service.blacklist import parse_networks
from service.config import InvalidConfiguration, load_settings
from service.networks import TrustedProxyFix
from tests.helpers import bearer, wait_until

FORWARDED = "198.51.100.50"


def client_address(networks: str, peer: str, forwarded: str | None) -> str:
    """Return the REMOTE_ADDR that the app behind the layer gets for one request."""
    seen = {}

    def app(environ, start_response):
        seen["address"] = environ["REMOTE_ADDR"]
        start_response("204 No Content", [])
        return []

    layer = TrustedProxyFix(app, 1, parse_networks(networks))
    environ = {"REMOTE_ADDR": peer, "REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
               "SERVER_NAME": "gatehouse", "SERVER_PORT": "8000"}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    layer(environ, lambda status, headers: None)
    return seen["address"]


@pytest.mark.parametrize(("networks", "peer", "expected"), [
    ("10.0.0.0/8", "10.1.2.3", FORWARDED),
    ("10.0.0.0/8", "192.0.2.9", "192.0.2.9"),
    ("10.0.0.0/8,fd00::/8", "fd00::7", FORWARDED),
    ("10.0.0.0/8", "::ffff:10.1.2.3", FORWARDED),
    ("10.0.0.0/8", "not-an-address", "not-an-address"),
    ("", "192.0.2.9", FORWARDED),
], ids=["trusted", "untrusted", "trusted_ipv6", "trusted_ipv4_mapped", "unparsable_peer", "no_networks"])
def test_forwarded_for_only_from_trusted_peers(networks, peer, expected):
    assert client_address(networks, peer, FORWARDED) == expected


def test_untrusted_peer_forwarded_for_ignored(user):
    app = create_app({"trusted_proxy_count": 1, "trusted_proxy_networks": "10.0.0.0/8"})
    try:
        svc = app.extensions["gatehouse"]
        client = app.test_client()
        login = client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
        headers = {**bearer(login.get_json()["access_token"]), "X-Forwarded-For": FORWARDED}
        svc.blacklist.ban(FORWARDED, reason="test", seconds=60, actor="test")
        wait_until(lambda: svc.bans.banned_until(FORWARDED) is not None, 5, "the ban did not reach the worker")

        through_proxy = client.get("/v1/users/me", headers=headers, environ_base={"REMOTE_ADDR": "10.1.2.3"})
        past_proxy = client.get("/v1/users/me", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.9"})

        assert through_proxy.status_code == 403
        assert through_proxy.get_json()["code"] == "ip_banned"
        assert past_proxy.status_code == 200
    finally:
        close_app(app)


@pytest.mark.parametrize("value", [",", " , ,"])
def test_networks_naming_none_rejected(value):
    """Empty trusts every peer, so a value that names no network must not read as empty."""
    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"trusted_proxy_networks": value})

    assert str(excinfo.value).startswith("GATEHOUSE_TRUSTED_PROXY_NETWORKS is invalid")
    assert "names no network" in str(excinfo.value)


def test_networks_without_proxy_count_rejected():
    with pytest.raises(InvalidConfiguration) as excinfo:
        load_settings({"trusted_proxy_networks": "10.0.0.0/8"})

    assert str(excinfo.value).startswith("GATEHOUSE_TRUSTED_PROXY_COUNT is invalid (0 while GATEHOUSE_TRUSTED_PROXY_NETWORKS")
    assert load_settings({"trusted_proxy_networks": "10.0.0.0/8", "trusted_proxy_count": 1}).trusted_proxy_count == 1
