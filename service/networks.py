"""Client network keys: the unit that rate limits and IP bans count and reject.

An IPv4 client is keyed by its address and an IPv6 client by its /64 network, because
one IPv6 host usually controls a whole /64 and could otherwise pick a new key for every
request. An IPv4 client that a dual-stack socket presents as an IPv4-mapped IPv6
address (::ffff:203.0.113.7) gets the key of its IPv4 address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from werkzeug.middleware.proxy_fix import ProxyFix

log = structlog.get_logger(__name__)

# Key for a client address that is not an IP address, such as a value a
# misconfigured proxy copied from X-Forwarded-For. One shared key means such
# values cannot create unlimited counters.
UNPARSABLE_CLIENT = "unparsable"


_unparsable_logged = False


def without_port(address: str) -> str | None:
    """Return the address inside "[IPv6]", "[IPv6]:port" or "IPv4:port", or None for any other text.

    Some proxies write X-Forwarded-For entries in these forms (RFC 7239 allows them in Forwarded).
    """
    if address.startswith("["):
        inner, bracket, rest = address[1:].partition("]")
        # Brackets enclose an IPv6 address only.
        if bracket and ":" in inner and (not rest or (rest[:1] == ":" and _is_port(rest[1:]))):
            return inner
        return None

    host, colon, port = address.rpartition(":")
    if colon and _is_port(port) and ":" not in host:
        return host
    return None


def _is_port(text: str) -> bool:
    """Tell whether text is a TCP port: 1 to 5 ASCII digits, at most 65535 (str.isdigit takes any script's)."""
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


def _unparsable(address: str | None) -> str:
    global _unparsable_logged
    if not _unparsable_logged:
        # Once per worker: the cause is a setting, and every later request would repeat it.
        _unparsable_logged = True
        log.warning("client_address_unparsable", client_address=(address or "")[:64],
                    hint="check GATEHOUSE_TRUSTED_PROXY_COUNT and what the proxy writes to X-Forwarded-For")
    return UNPARSABLE_CLIENT


# Parsing an address costs a few microseconds, and every request needs its key. The
# cache is bounded: a flood of distinct IPv6 addresses only evicts older entries.
@functools.lru_cache(maxsize=4096)
def client_network(address: str | None) -> str:
    """Return the key of a client address: an IPv4 address, or the /64 network of an IPv6 one.

    An address with a port (203.0.113.7:443, [2001:db8::1]:443) gets the key of the
    address. Any other text that is not an IP address, such as an IPv4 address with
    leading zeros, gets the one shared key UNPARSABLE_CLIENT.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        inner = without_port(address or "")
        if inner is None:
            return _unparsable(address)
        try:
            ip = ipaddress.ip_address(inner)
        except ValueError:
            return _unparsable(address)

    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip.packed, 64), strict=False))

    return str(ip)


def parse_network_key(text: str) -> str:
    """Return the key named by an address, an IPv4 /32 or an IPv6 /64 network; raise ValueError otherwise.

    A /64 written with host bits set (2001:db8::5/64) names the same network as 2001:db8::/64.
    An address with a port, as it appears in the log lines of clients behind some
    proxies (203.0.113.7:443, [2001:db8::1]:443), names the key of the address.
    """
    text = text.strip()
    if "/" not in text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            address = without_port(text)
            if address is None:
                raise
            ipaddress.ip_address(address)
            text = address
        return client_network(text)

    network = ipaddress.ip_network(text, strict=False)
    if network.num_addresses == 1:
        return client_network(str(network.network_address))
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 64:
        return str(network)

    raise ValueError(f"{text!r} is neither an address nor an IPv6 /64 network")


class TrustedProxyFix:
    """WSGI layer: the client address from X-Forwarded-For (werkzeug's ProxyFix), for requests from a trusted proxy.

    ProxyFix alone trusts the header from every peer, so a client that reaches the pods
    past the proxy could name any address: a new rate-limit key per request, or another
    client's address to get banned. With networks, a request from any other peer keeps
    its peer address. Without networks, every peer is trusted, as ProxyFix does.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], count: int,
                 networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> None:
        self._app = app
        self._fixed = ProxyFix(app, x_for=count)
        self._networks = networks

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._networks or _in_networks(environ.get("REMOTE_ADDR") or "", self._networks):
            return self._fixed(environ, start_response)
        return self._app(environ, start_response)


@functools.lru_cache(maxsize=1024)
def _in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
