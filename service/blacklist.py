"""IP bans: automatic from abuse patterns, manual from administrators, with TTL and escalation.

A ban applies to a network key (service.networks), the unit the rate limits count:
an IPv4 address, or the /64 network of an IPv6 address. Every spelling of an address
(case, zero compression, IPv4-mapped IPv6) has one key, so it cannot escape its ban.

Redis keys (under the gh: prefix), where <key> is the network key:
    ban:<key>               hash  cause, reason, created_at, expires_at (0: permanent), offences, actor
    bans                    zset  banned keys scored by expires_at (PERMANENT_SCORE when permanent)
    offences:<key>          str   bans so far; expires offence_decay_seconds after the last ban
    abuse:logins:<key>      str   failed logins in the current window
    abuse:accounts:<key>    set   digests of the accounts those failures targeted, same window
    abuse:limited:<key>     str   rate-limit hits in the current window

Bans stored before keys were normalised may sit under a raw IPv6 address. Workers read
them as bans of its /64, and unban removes them together with the canonical entry.

Each worker keeps the live bans in memory (BanList), kept in step through the events
channel like revoked sessions, so the check on every request needs no Redis.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from service.networks import UNPARSABLE_CLIENT, client_network, parse_network_key
from service.redis_store import KEY_PREFIX
from service.sessions import EVENTS_CHANNEL

log = structlog.get_logger(__name__)

BANS_KEY = f"{KEY_PREFIX}bans"
# Far enough in the future to sort after every temporary ban (the year 9999).
PERMANENT_SCORE = 253402300799

# Counts one abuse signal for an address and bans it when a threshold is crossed.
# KEYS: abuse counter, accounts set ("" when not counted), ban hash, offences, bans zset
# ARGV: window seconds, account digest, counter threshold, accounts threshold, now,
#       base seconds, multiplier, max seconds, decay seconds, cause, ip, channel
_RECORD_ABUSE_LUA = """
local window = tonumber(ARGV[1])
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], window) end
local accounts = 0
if ARGV[2] ~= '' then
    redis.call('SADD', KEYS[2], ARGV[2])
    redis.call('EXPIRE', KEYS[2], window, 'NX')
    accounts = redis.call('SCARD', KEYS[2])
end

local cause = ARGV[10]
if accounts >= tonumber(ARGV[4]) then
    cause = 'credential_stuffing'
elseif count < tonumber(ARGV[3]) then
    return {0, 0}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    return {0, 0}
end

local now = tonumber(ARGV[5])
local offences = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[9]))
local seconds = math.min(tonumber(ARGV[6]) * tonumber(ARGV[7]) ^ (offences - 1), tonumber(ARGV[8]))
seconds = math.floor(seconds)
local expires_at = math.floor(now + seconds)
redis.call('HSET', KEYS[3], 'cause', cause, 'reason', 'automatic: ' .. cause, 'created_at', now,
           'expires_at', expires_at, 'offences', offences, 'actor', '')
redis.call('EXPIREAT', KEYS[3], expires_at)
redis.call('ZADD', KEYS[5], expires_at, ARGV[11])
redis.call('DEL', KEYS[1])
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[12], cjson.encode({kind = 'ip_banned', ip = ARGV[11], ['until'] = expires_at}))
return {seconds, offences, cause}
"""


# The range of a manual ban's length in seconds, for the admin API and the CLI alike.
MIN_MANUAL_BAN_SECONDS = 60
MAX_MANUAL_BAN_SECONDS = 31_536_000


class AddressAllowlisted(Exception):
    """The address or network overlaps an allowlisted network and is never banned."""


class InvalidBanLength(ValueError):
    """A manual ban's length in seconds is outside MIN_MANUAL_BAN_SECONDS to MAX_MANUAL_BAN_SECONDS."""


@dataclass(frozen=True)
class Ban:
    ip: str  # network key: an IPv4 address or an IPv6 /64
    cause: str
    reason: str
    created_at: float
    expires_at: float | None  # None: permanent
    offences: int
    actor: str


@dataclass(frozen=True)
class AutomaticBan:
    ip: str
    cause: str
    seconds: int
    offences: int


@dataclass(frozen=True)
class BanPolicy:
    window_seconds: int
    failed_logins: int
    distinct_accounts: int
    rate_limit_hits: int
    base_seconds: int
    multiplier: float
    max_seconds: int
    offence_decay_seconds: int
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a comma-separated list of CIDR networks (single addresses allowed).

    An IPv4-mapped IPv6 network (::ffff:198.51.100.0/120) becomes its IPv4 network,
    because network keys give IPv4-mapped clients their IPv4 address.
    """
    networks = []
    for part in text.split(","):
        if not part.strip():
            continue
        network = ipaddress.ip_network(part.strip(), strict=False)
        mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
        networks.append(network)
    return tuple(networks)


def _stored_key(text: str) -> str | None:
    """Return the network key of a key read from Redis or an event, which older releases wrote raw."""
    try:
        return parse_network_key(text)
    except ValueError:
        return None


def _ban_key(ip: str) -> str:
    return f"{KEY_PREFIX}ban:{ip}"


class Blacklist:
    """Reads and writes bans in Redis; every change is published to all workers."""

    def __init__(self, client: redis.Redis, policy: BanPolicy) -> None:
        self._redis = client
        self.client = client
        self.policy = policy
        self._record_abuse = client.register_script(_RECORD_ABUSE_LUA)

    def is_allowlisted(self, key: str) -> bool:
        """Return whether a network key overlaps an allowlisted network.

        Banning an IPv6 /64 bans every address in it, so one allowlisted address is enough.
        """
        try:
            network = ipaddress.ip_network(key)
        except ValueError:
            return False
        return any(network.version == allowed.version and network.overlaps(allowed)  # type: ignore[arg-type]
                   for allowed in self.policy.allowlist)

    def _record(self, kind: str, address: str, threshold: int, cause: str, account: str = "") -> AutomaticBan | None:
        ip = client_network(address)
        # All unparsable client addresses share one key, so banning it would ban every
        # client behind a misconfigured proxy. The rate limits still apply to that key.
        if ip == UNPARSABLE_CLIENT or self.is_allowlisted(ip):
            return None

        counter = f"{KEY_PREFIX}abuse:{kind}:{ip}"
        accounts = f"{KEY_PREFIX}abuse:accounts:{ip}" if account else ""
        keys = [counter, accounts, _ban_key(ip), f"{KEY_PREFIX}offences:{ip}", BANS_KEY]
        policy = self.policy
        result = self._record_abuse(keys=keys, args=[
            policy.window_seconds, account, threshold, policy.distinct_accounts, repr(time.time()),
            policy.base_seconds, policy.multiplier, policy.max_seconds, policy.offence_decay_seconds,
            cause, ip, EVENTS_CHANNEL,
        ])
        seconds = int(result[0])
        if not seconds:
            return None

        ban = AutomaticBan(ip, result[2], seconds, int(result[1]))
        log.warning("ip_banned", ip=ip, cause=ban.cause, seconds=seconds, offences=ban.offences)
        return ban

    def record_failed_login(self, address: str, email: str) -> AutomaticBan | None:
        """Count a failed login against the address's network key; return the ban when this one caused it."""
        # Digests only: the set must not keep a list of the emails an attacker tried.
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        return self._record("logins", address, self.policy.failed_logins, "failed_logins", account)

    def record_rate_limit_hit(self, address: str) -> AutomaticBan | None:
        """Count a 429 against the address's network key; return the ban when this one caused it."""
        return self._record("limited", address, self.policy.rate_limit_hits, "rate_limit")

    def ban(self, target: str, *, reason: str, seconds: int | None, actor: str) -> Ban:
        """Ban the network key of an address or IPv6 /64 by hand, for `seconds` or permanently (None).

        Raise ValueError for any other text, InvalidBanLength for a length outside the
        manual range, and AddressAllowlisted for an allowlisted network.
        """
        if seconds is not None and not MIN_MANUAL_BAN_SECONDS <= seconds <= MAX_MANUAL_BAN_SECONDS:
            raise InvalidBanLength(f"{seconds} s is outside {MIN_MANUAL_BAN_SECONDS}-{MAX_MANUAL_BAN_SECONDS} s")
        ip = parse_network_key(target)
        if self.is_allowlisted(ip):
            raise AddressAllowlisted(ip)

        now = time.time()
        expires_at = int(now + seconds) if seconds else 0
        offences = int(self._redis.incr(f"{KEY_PREFIX}offences:{ip}"))
        pipe = self._redis.pipeline(transaction=True)
        pipe.expire(f"{KEY_PREFIX}offences:{ip}", self.policy.offence_decay_seconds)
        pipe.delete(_ban_key(ip))
        pipe.hset(_ban_key(ip), mapping={"cause": "manual", "reason": reason, "created_at": now,
                                         "expires_at": expires_at, "offences": offences, "actor": actor})
        if expires_at:
            pipe.expireat(_ban_key(ip), expires_at)
        pipe.zadd(BANS_KEY, {ip: expires_at or PERMANENT_SCORE})
        pipe.publish(EVENTS_CHANNEL, json.dumps({"kind": "ip_banned", "ip": ip,
                                                 "until": expires_at or PERMANENT_SCORE}))
        pipe.execute()
        log.warning("ip_banned", ip=ip, cause="manual", seconds=seconds, offences=offences, actor=actor)
        return Ban(ip, "manual", reason, now, float(expires_at) if expires_at else None, offences, actor)

    def unban(self, target: str, *, actor: str) -> bool:
        """Lift the ban of an address's network key; return whether there was one. Raise ValueError for a non-address.

        Offence history stays, so a relapse escalates.
        """
        ip = parse_network_key(target)
        # Entries that older releases stored under a raw spelling of the same key go too.
        legacy = [member for member in self._redis.zrange(BANS_KEY, 0, -1)
                  if member != ip and _stored_key(member) == ip]
        now = time.time()
        pipe = self._redis.pipeline(transaction=True)
        pipe.zmscore(BANS_KEY, [ip, *legacy])
        pipe.delete(_ban_key(ip), *(_ban_key(member) for member in legacy))
        pipe.zrem(BANS_KEY, ip, *legacy)
        pipe.publish(EVENTS_CHANNEL, json.dumps({"kind": "ip_unbanned", "ip": ip}))
        scores, deleted, _, _ = pipe.execute()
        # An expired ban leaves its entry in the set until `gatehouse blacklist rotate`, and
        # lifting it lifts nothing: only a ban that list() shows counts.
        existed = bool(deleted) or any(score is not None and score > now for score in scores)
        if existed:
            log.warning("ip_unbanned", ip=ip, cause="manual", actor=actor)
        return existed

    def get(self, target: str) -> Ban | None:
        """Return the ban of an address's network key, or None; raise ValueError for a non-address."""
        ip = parse_network_key(target)
        fields = self._redis.hgetall(_ban_key(ip))
        return _ban_from(ip, fields) if fields else None

    def list(self, now: float | None = None) -> list[Ban]:
        """Return every live ban, soonest expiry first, permanent ones last."""
        now = now if now is not None else time.time()
        addresses = self._redis.zrangebyscore(BANS_KEY, now, "+inf")
        pipe = self._redis.pipeline(transaction=False)
        for ip in addresses:
            pipe.hgetall(_ban_key(ip))
        return [_ban_from(_stored_key(ip) or ip, fields)
                for ip, fields in zip(addresses, pipe.execute(), strict=True) if fields]

    def live_bans(self, now: float | None = None) -> dict[str, float]:
        """Return every live ban's network key and expiry (PERMANENT_SCORE when permanent)."""
        now = now if now is not None else time.time()
        bans: dict[str, float] = {}
        for member, until in self._redis.zrangebyscore(BANS_KEY, now, "+inf", withscores=True):
            key = _stored_key(member)
            if key is not None:
                bans[key] = max(until, bans.get(key, 0.0))
        return bans

    def count(self, now: float | None = None) -> int:
        return int(self._redis.zcount(BANS_KEY, now if now is not None else time.time(), "+inf"))

    def rotate(self, now: float | None = None) -> dict[str, int]:
        """Drop expired entries from the index; offence history decays through its own TTL."""
        now = now if now is not None else time.time()
        expired = self._redis.zrangebyscore(BANS_KEY, "-inf", f"({now}")
        removed = int(self._redis.zremrangebyscore(BANS_KEY, "-inf", f"({now}")) if expired else 0
        # A hash whose TTL was lost (for example after a manual edit) goes with its index entry.
        stray = 0
        for ip in expired:
            fields = self._redis.hmget(_ban_key(ip), "expires_at")
            if fields[0] not in (None, "0") and float(fields[0]) < now:
                stray += int(self._redis.delete(_ban_key(ip)))
        return {"expired_bans_removed": removed, "stale_records_removed": stray, "live_bans": self.count(now)}


def _ban_from(ip: str, fields: dict[str, Any]) -> Ban:
    expires_at = float(fields.get("expires_at") or 0)
    return Ban(ip, fields.get("cause", ""), fields.get("reason", ""), float(fields.get("created_at") or 0),
               expires_at or None, int(fields.get("offences") or 0), fields.get("actor", ""))


class BanList:
    """One worker's in-memory copy of the live bans by network key; the check on every request reads only this."""

    def __init__(self, blacklist: Blacklist) -> None:
        self._blacklist = blacklist
        self._bans: dict[str, float] = {}
        self.synced = False

    def banned_until(self, address: str, now: float | None = None) -> float | None:
        """Return when the ban of the client address's network key ends (PERMANENT_SCORE for permanent), or None."""
        if not self._bans:
            return None  # the common case, without parsing the address

        key = client_network(address)
        until = self._bans.get(key)
        if until is None:
            return None
        if until <= (now if now is not None else time.time()):
            self._bans.pop(key, None)
            return None
        return until

    def resync(self) -> None:
        bans = self._blacklist.live_bans()
        self._bans = {key: until for key, until in bans.items() if self._enforced(key)}
        self.synced = True
        log.info("ban_list_resynced", bans=len(self._bans))

    def _enforced(self, key: str) -> bool:
        """Tell whether this worker enforces a ban of the network key: not when its allowlist covers the key.

        Another instance with a narrower GATEHOUSE_BAN_ALLOWLIST, such as one of the old
        release during a rollout that widens it, can still ban such an address.
        """
        if not self._blacklist.is_allowlisted(key):
            return True
        log.warning("ban_not_enforced", ip=key, reason="allowlisted")
        return False

    def apply_event(self, event: dict[str, Any]) -> bool:
        kind = event.get("kind")
        ip = event.get("ip")
        # Workers of an older release publish raw addresses; the key keeps them in step.
        key = _stored_key(ip) if isinstance(ip, str) else None
        if kind == "ip_banned" and key is not None:
            if self._enforced(key):
                self._bans[key] = float(event.get("until", 0))
            return True
        if kind == "ip_unbanned" and key is not None:
            self._bans.pop(key, None)
            return True
        return False
