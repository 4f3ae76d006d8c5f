"""The per-account index of the login guard's per-address keys, so a reset or deletion finds them without a SCAN.

A client network known to an account has up to three keys of its own, named
login/KIND/ACCOUNT/CLIENT under the rate-limit prefix: the known-address marker
(KIND known) and its own failure window and delay gate (failures, gate). The index
login/index/ACCOUNT is a sorted set of those client networks, each scored by the
time in Unix milliseconds at which the last of its keys expires.

The login guard queues INDEX_LUA after every write of such a key, in the same
pipeline (service.limit_storage.PipelineStep), so the index costs no round trip
of its own. The script reads the keys' expiry times from Redis instead of computing
them, so the index expires exactly when its longest-lived key does. It also drops
members whose keys have all expired, and it keeps at most MAX_INDEXED_CLIENTS of
them.

Keys written before the index existed are in no index until `gatehouse login-guard
reindex` (reindex_all) adds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import redis

from service.limit_storage import RATE_LIMIT_KEY_PREFIX

# The Redis key of a limits key, as the library's RedisStorage.prefixed_key joins them.
REDIS_KEY_PREFIX = RATE_LIMIT_KEY_PREFIX + ":"
# The kinds of per-address key, in the order that the scripts take their stems.
ADDRESS_KINDS = ("known", "failures", "gate")
# Client networks one account's index keeps. The member whose keys expire first
# gives way to a new one, and its keys are deleted, so that address is no longer
# known to the account. Only a successful login or password change adds a member.
MAX_INDEXED_CLIENTS = 1000
# Keys that one SCAN step of reindex_all reads.
REINDEX_SCAN_COUNT = 1000

# expire_with_last_member() sets the index to expire with its member scored last, the
# client network whose keys expire last.
_EXPIRE_FUNCTION = """
local function expire_with_last_member(index)
    local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
    if last[2] then
        redis.call('PEXPIREAT', index, last[2])
    end
end
"""

# KEYS[1]: the account's index. KEYS[2..4]: the client's keys, in the order of ADDRESS_KINDS.
# ARGV[1]: the client network. ARGV[2]: MAX_INDEXED_CLIENTS.
# ARGV[3..5]: the account's stems of ADDRESS_KINDS, which name another member's keys as STEM/MEMBER.
# Returns how many other members gave way to keep the index within ARGV[2].
# NOTE: the keys of an evicted member are derived inside the script, which is fine on
# a single Redis or behind Sentinel but would not hash to one slot on Redis Cluster.
INDEX_LUA = _EXPIRE_FUNCTION + """
local index, client, max_members = KEYS[1], ARGV[1], tonumber(ARGV[2])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. now_ms)

-- PEXPIRETIME is -2 for a missing key. Every key of the guard has an expiry.
local expires_at = -2
for i = 2, 4 do
    expires_at = math.max(expires_at, redis.call('PEXPIRETIME', KEYS[i]))
end
if expires_at > 0 then
    redis.call('ZADD', index, expires_at, client)
else
    redis.call('ZREM', index, client)
end

local excess = redis.call('ZCARD', index) - max_members
local evicted = 0
if excess > 0 then
    -- One member more than the excess, in case the client itself is among the first.
    for _, member in ipairs(redis.call('ZRANGE', index, 0, excess)) do
        if evicted < excess and member ~= client then
            redis.call('DEL', ARGV[3] .. '/' .. member, ARGV[4] .. '/' .. member, ARGV[5] .. '/' .. member)
            redis.call('ZREM', index, member)
            evicted = evicted + 1
        end
    end
end

expire_with_last_member(index)
return evicted
"""

# KEYS[1]: the account's index. KEYS[2..]: keys of the account that belong to no client, to delete.
# ARGV[1]: '1' to delete the known-address markers and the index too, '0' to keep them.
# ARGV[2..4]: the account's stems of ADDRESS_KINDS.
# Returns how many keys it deleted.
# Like INDEX_LUA, it derives the keys of each member inside the script.
CLEAR_LUA = _EXPIRE_FUNCTION + """
local index, erase = KEYS[1], ARGV[1] == '1'
local deleted = 0
if #KEYS > 1 then
    deleted = redis.call('DEL', unpack(KEYS, 2))
end

for _, client in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    deleted = deleted + redis.call('DEL', ARGV[3] .. '/' .. client, ARGV[4] .. '/' .. client)
    local known = ARGV[2] .. '/' .. client
    if erase then
        deleted = deleted + redis.call('DEL', known)
    else
        -- The marker stays, so the member's expiry is now the marker's alone.
        local expires_at = redis.call('PEXPIRETIME', known)
        if expires_at > 0 then
            redis.call('ZADD', index, expires_at, client)
        else
            redis.call('ZREM', index, client)
        end
    end
end

if erase then
    return deleted + redis.call('DEL', index)
end
expire_with_last_member(index)
return deleted
"""


def index_key(account: str) -> str:
    """Return the Redis key of an account's index."""
    return f"{REDIS_KEY_PREFIX}login/index/{account}"


def stems(account: str) -> list[str]:
    """Return the account's Redis key stems of ADDRESS_KINDS; a client's key is STEM/CLIENT."""
    return [f"{REDIS_KEY_PREFIX}login/{kind}/{account}" for kind in ADDRESS_KINDS]


def queue_index_update(pipe: redis.client.Pipeline, account: str, client: str) -> None:
    """Queue INDEX_LUA for one client of an account, after the command that wrote one of its keys.

    EVAL sends the script's text each time rather than EVALSHA its digest, so a script
    cache that a restart or failover emptied cannot make the update fail after its key
    was written. Redis compiles the text once and reuses the compiled script.
    """
    account_stems = stems(account)
    client_keys = [f"{stem}/{client}" for stem in account_stems]
    pipe.eval(INDEX_LUA, 4, index_key(account), *client_keys, client, MAX_INDEXED_CLIENTS, *account_stems)


def clear_account(client: redis.Redis, account: str, shared_keys: Iterable[str], *, erase: bool) -> int:
    """Delete the failure windows and delay gates of the account's indexed clients, and shared_keys, atomically.

    With erase, also delete the known-address markers and the index. Return how many
    keys went. shared_keys are Redis keys with their prefix.
    """
    keys = [index_key(account), *shared_keys]
    return int(client.eval(CLEAR_LUA, len(keys), *keys, "1" if erase else "0", *stems(account)))


def parse_address_key(key: str) -> tuple[str, str] | None:
    """Return the account and client network that a per-address Redis key names, or None for any other key."""
    if not key.startswith(REDIS_KEY_PREFIX + "login/"):
        return None

    # A client network can contain "/" itself (IPv6 networks such as 2001:db8::/64), so split only twice.
    parts = key.removeprefix(REDIS_KEY_PREFIX + "login/").split("/", 2)
    if len(parts) != 3 or parts[0] not in ADDRESS_KINDS:
        return None

    _, account, client = parts
    if len(account) != 32 or not client:
        return None
    return account, client


def _address_key_batches(client: redis.Redis) -> Iterator[tuple[int, set[tuple[str, str]]]]:
    """Yield how many keys were read and the distinct (account, client) pairs among them, one batch at a time."""
    pairs: set[tuple[str, str]] = set()
    examined = 0
    for key in client.scan_iter(match=f"{REDIS_KEY_PREFIX}login/*", count=REINDEX_SCAN_COUNT):
        examined += 1
        pair = parse_address_key(key.decode() if isinstance(key, bytes) else key)
        if pair is not None:
            pairs.add(pair)
        if examined == REINDEX_SCAN_COUNT:
            yield examined, pairs
            pairs, examined = set(), 0
    if examined:
        yield examined, pairs


def reindex_all(client: redis.Redis) -> dict[str, int]:
    """Add every per-address key of the login guard to its account's index, and return counts.

    For keys written before the index existed, such as after an upgrade or a restore
    of an older backup. It walks the keyspace with SCAN, so Redis keeps serving in
    between, and it is safe while logins go on: each update reads the keys' current
    expiry times, as the login guard's own updates do. A client whose keys fall into
    two batches is updated, and counted, twice.
    """
    counts = {"keys_examined": 0, "index_updates": 0, "clients_evicted": 0}
    for examined, pairs in _address_key_batches(client):
        counts["keys_examined"] += examined
        if not pairs:
            continue

        pipe = client.pipeline(transaction=False)
        for account, network in sorted(pairs):
            queue_index_update(pipe, account, network)
        counts["index_updates"] += len(pairs)
        counts["clients_evicted"] += sum(pipe.execute())
    return counts
