"""IP bans: automatic from abuse patterns, manual from administrators, with TTL and escalation.

Redis keys (under the gh: prefix):
    ban:<ip>                hash  cause, reason, created_at, expires_at (0: permanent), offences, actor
    bans                    zset  banned addresses scored by expires_at (PERMANENT_SCORE when permanent)
    offences:<ip>           str   bans so far; expires offence_decay_seconds after the last ban
    abuse:logins:<ip>       str   failed logins in the current window
    abuse:accounts:<ip>     set   digests of the accounts those failures targeted, same window
    abuse:limited:<ip>      str   rate-limit hits in the current window

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


class AddressAllowlisted(Exception):
    """The address is in an allowlisted network and is never banned."""


@dataclass(frozen=True)
class Ban:
    ip: str
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
    """Parse a comma-separated list of CIDR networks (single addresses allowed)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def normalize_ip(text: str) -> str:
    """Return the canonical text of an address; raise ValueError when it is not one."""
    return str(ipaddress.ip_address(text.strip()))


def _ban_key(ip: str) -> str:
    return f"{KEY_PREFIX}ban:{ip}"


class Blacklist:
    """Reads and writes bans in Redis; every change is published to all workers."""

    def __init__(self, client: redis.Redis, policy: BanPolicy) -> None:
        self._redis = client
        self.client = client
        self.policy = policy
        self._record_abuse = client.register_script(_RECORD_ABUSE_LUA)

    def is_allowlisted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.policy.allowlist)

    def _record(self, kind: str, ip: str, threshold: int, cause: str, account: str = "") -> AutomaticBan | None:
        if not ip or self.is_allowlisted(ip):
            return None

        counter = f"{KEY_PREFIX}abuse:{kind}:{ip}"
        accounts = f"{KEY_PREFIX}abuse:accounts:{ip}" if account else ""
        keys = [counter, accounts, _ban_key(ip), f"{KEY_PREFIX}offences:{ip}", BANS_KEY]
        policy = self.policy
        result = self._record_abuse(keys=keys, args=[
            policy.window_seconds, account, threshold, policy.distinct_accounts, int(time.time()),
            policy.base_seconds, policy.multiplier, policy.max_seconds, policy.offence_decay_seconds,
            cause, ip, EVENTS_CHANNEL,
        ])
        seconds = int(result[0])
        if not seconds:
            return None

        ban = AutomaticBan(ip, result[2], seconds, int(result[1]))
        log.warning("ip_banned", ip=ip, cause=ban.cause, seconds=seconds, offences=ban.offences)
        return ban

    def record_failed_login(self, ip: str, email: str) -> AutomaticBan | None:
        """Count a failed login; return the ban when this one caused it."""
        # Digests only: the set must not keep a list of the emails an attacker tried.
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        return self._record("logins", ip, self.policy.failed_logins, "failed_logins", account)

    def record_rate_limit_hit(self, ip: str) -> AutomaticBan | None:
        """Count a 429; return the ban when this one caused it."""
        return self._record("limited", ip, self.policy.rate_limit_hits, "rate_limit")

    def ban(self, ip: str, *, reason: str, seconds: int | None, actor: str) -> Ban:
        """Ban an address by hand, for `seconds` or permanently (None); raise AddressAllowlisted."""
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

    def unban(self, ip: str, *, actor: str) -> bool:
        """Lift a ban; return whether there was one. Offence history stays, so a relapse escalates."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(_ban_key(ip))
        pipe.zrem(BANS_KEY, ip)
        pipe.publish(EVENTS_CHANNEL, json.dumps({"kind": "ip_unbanned", "ip": ip}))
        deleted, removed, _ = pipe.execute()
        existed = bool(deleted or removed)
        if existed:
            log.warning("ip_unbanned", ip=ip, cause="manual", actor=actor)
        return existed

    def get(self, ip: str) -> Ban | None:
        fields = self._redis.hgetall(_ban_key(ip))
        return _ban_from(ip, fields) if fields else None

    def list(self, now: float | None = None) -> list[Ban]:
        """Return every live ban, soonest expiry first, permanent ones last."""
        now = now if now is not None else time.time()
        addresses = self._redis.zrangebyscore(BANS_KEY, now, "+inf")
        pipe = self._redis.pipeline(transaction=False)
        for ip in addresses:
            pipe.hgetall(_ban_key(ip))
        return [_ban_from(ip, fields) for ip, fields in zip(addresses, pipe.execute(), strict=True) if fields]

    def live_bans(self, now: float | None = None) -> dict[str, float]:
        """Return every live ban's address and expiry (PERMANENT_SCORE when permanent)."""
        now = now if now is not None else time.time()
        return dict(self._redis.zrangebyscore(BANS_KEY, now, "+inf", withscores=True))

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
    """One worker's in-memory copy of the live bans; the check on every request reads only this."""

    def __init__(self, blacklist: Blacklist) -> None:
        self._blacklist = blacklist
        self._bans: dict[str, float] = {}
        self.synced = False

    def banned_until(self, ip: str, now: float | None = None) -> float | None:
        """Return when the address's ban ends (PERMANENT_SCORE for permanent), or None."""
        until = self._bans.get(ip)
        if until is None:
            return None
        if until <= (now if now is not None else time.time()):
            self._bans.pop(ip, None)
            return None
        return until

    def resync(self) -> None:
        self._bans = self._blacklist.live_bans()
        self.synced = True
        log.info("ban_list_resynced", bans=len(self._bans))

    def apply_event(self, event: dict[str, Any]) -> bool:
        kind = event.get("kind")
        ip = event.get("ip")
        if kind == "ip_banned" and isinstance(ip, str):
            self._bans[ip] = float(event.get("until", 0))
            return True
        if kind == "ip_unbanned" and isinstance(ip, str):
            self._bans.pop(ip, None)
            return True
        return False
