"""The Lua scripts that change sessions in Redis, each one atomic.

The keys they use are described in service.sessions. Each script takes the key
prefix or full keys from its caller, so the scripts hold no configuration.
"""

# revoke() deletes a session, its tokens and its index entry, records it in the
# revoked set until its access tokens have expired, and publishes the fact.
# revoked_until drops entries whose tokens have all expired, so the set stays small.
_REVOKE_FUNCTION = """
local function revoke(prefix, sid, uid, revoked_until, now)
    local tokens_key = prefix .. 'sess:' .. sid .. ':tokens'
    for _, digest in ipairs(redis.call('SMEMBERS', tokens_key)) do
        redis.call('DEL', prefix .. 'rt:' .. digest)
    end
    redis.call('DEL', tokens_key, prefix .. 'sess:' .. sid)
    if uid then
        redis.call('ZREM', prefix .. 'user:' .. uid .. ':sessions', sid)
    end
    redis.call('ZREMRANGEBYSCORE', prefix .. 'revoked', '-inf', now)
    redis.call('ZADD', prefix .. 'revoked', revoked_until, sid)
    redis.call('PUBLISH', prefix .. 'events',
               cjson.encode({kind = 'session_revoked', sid = sid, ['until'] = tonumber(revoked_until)}))
end
"""

# KEYS[1] = rt:<presented digest>, KEYS[2] = rt:<new digest>
# ARGV: prefix, now, grace seconds, new digest, revoked-until, token retention past session end,
#       most grace refreshes per token
# Returns {outcome} for invalid and expired, {outcome, sid, uid} for rotated and grace,
# and {'reuse_detected', sid, uid, reason} where reason is 'replayed' (a spent token
# outside the grace rules) or 'superseded' (an unspent token whose generation another
# token already advanced past).
# NOTE: the session keys are derived inside the script, which is fine on a single
# Redis or behind Sentinel but would not hash to one slot on Redis Cluster.
ROTATE_LUA = _REVOKE_FUNCTION + """
local prefix, now, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HMGET', KEYS[1], 'sid', 'uid', 'rotated_at', 'generation')
local sid, uid, rotated_at = fields[1], fields[2], fields[3]
if not sid then
    return {'invalid'}
end
local token_generation = tonumber(fields[4]) or 0
local session_key = prefix .. 'sess:' .. sid
local session_fields = redis.call('HMGET', session_key, 'expires_at', 'generation')
local expires_at = session_fields[1]
if not expires_at then
    local token_exp = tonumber(redis.call('HGET', KEYS[1], 'exp'))
    if token_exp and now >= token_exp then
        return {'expired'}
    end
    return {'invalid'}
end
local session_generation = tonumber(session_fields[2]) or 0

local outcome, new_generation
if rotated_at and rotated_at ~= '' then
    -- A retry or concurrent refresh gets a sibling of the token its rotation issued,
    -- but only while that token's generation is still the session's: once the chain
    -- has moved on, the spent token is a replay. With records from before
    -- generations (all 0) the last check cannot fail.
    local grace_uses = redis.call('HINCRBY', KEYS[1], 'grace_uses', 1)
    if now - tonumber(rotated_at) > grace or grace_uses > tonumber(ARGV[7])
            or token_generation + 1 < session_generation then
        revoke(prefix, sid, uid, ARGV[5], ARGV[2])
        return {'reuse_detected', sid, uid, 'replayed'}
    end
    outcome = 'grace'
    new_generation = session_generation
elseif token_generation < session_generation then
    -- A sibling from a grace refresh, after another token of its generation rotated:
    -- only that other chain continues, so this one is treated as stolen.
    revoke(prefix, sid, uid, ARGV[5], ARGV[2])
    return {'reuse_detected', sid, uid, 'superseded'}
else
    outcome = 'rotated'
    new_generation = session_generation + 1
    redis.call('HSET', KEYS[1], 'rotated_at', ARGV[2])
end

redis.call('HSET', KEYS[2], 'sid', sid, 'uid', uid, 'exp', expires_at, 'rotated_at', '',
           'generation', new_generation)
redis.call('EXPIREAT', KEYS[2], tonumber(expires_at) + ARGV[6])
redis.call('SADD', session_key .. ':tokens', ARGV[4])
redis.call('HSET', session_key, 'last_used_at', ARGV[2], 'generation', new_generation)
return {outcome, sid, uid}
"""

# evict_oldest() ends the oldest live sessions of a user beyond max_sessions, by
# creation time, and returns their ids, oldest first. `keep` (a new session) is never
# a candidate, even when another worker's clock is ahead. Live sessions are the index
# members that SessionStore.list returns: scored at or after now.
_EVICT_FUNCTION = """
local function evict_oldest(prefix, user_key, uid, now, max_sessions, revoked_until, keep)
    local live = redis.call('ZCOUNT', user_key, now, '+inf')
    if live <= max_sessions then
        return {}
    end

    -- Oldest by created_at, not by the index score: the score is the expiry time, which
    -- orders sessions by age only while GATEHOUSE_SESSION_TTL_SECONDS stays the same.
    local candidates = {}
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', user_key, now, '+inf')) do
        if other ~= keep then
            local created_at = redis.call('HGET', prefix .. 'sess:' .. other, 'created_at')
            if created_at then
                table.insert(candidates, {tonumber(created_at) or 0, other})
            else
                -- An index entry whose session is gone is no live session: drop it, as the purge job would.
                redis.call('ZREM', user_key, other)
                live = live - 1
            end
        end
    end
    table.sort(candidates, function(a, b)
        if a[1] ~= b[1] then
            return a[1] < b[1]
        end
        return a[2] < b[2]
    end)

    local evicted = {}
    for i = 1, live - max_sessions do
        local other = candidates[i][2]
        revoke(prefix, other, uid, revoked_until, now)
        table.insert(evicted, other)
    end
    return evicted
end
"""

# KEYS: sess:<sid>, rt:<digest>, sess:<sid>:tokens, user:<uid>:sessions
# ARGV: sid, uid, now, expires_at, user agent, ip, digest, token retention past session end,
#       prefix, revoked-until, max live sessions of the user
# Returns the ids of the sessions it ended to stay within the maximum, oldest first.
# Like ROTATE_LUA, it derives the keys of those sessions inside the script.
# Expired members of the user index are left for the purge job. The index itself
# lives as long as its newest session.
CREATE_LUA = _REVOKE_FUNCTION + _EVICT_FUNCTION + """
local sid, uid, now, expires_at = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'uid', uid, 'created_at', now, 'last_used_at', now, 'expires_at', expires_at,
           'user_agent', ARGV[5], 'ip', ARGV[6], 'generation', 0)
redis.call('EXPIREAT', KEYS[1], expires_at)
redis.call('HSET', KEYS[2], 'sid', sid, 'uid', uid, 'exp', expires_at, 'rotated_at', '', 'generation', 0)
redis.call('EXPIREAT', KEYS[2], expires_at + tonumber(ARGV[8]))
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('EXPIREAT', KEYS[3], expires_at)
redis.call('ZADD', KEYS[4], expires_at, sid)
redis.call('EXPIREAT', KEYS[4], expires_at, 'GT')
redis.call('EXPIREAT', KEYS[4], expires_at, 'NX')

return evict_oldest(ARGV[9], KEYS[4], uid, now, tonumber(ARGV[11]), ARGV[10], sid)
"""

# KEYS[1] = user:<uid>:sessions
# ARGV: prefix, uid, now, max live sessions of the user, revoked-until
# Returns the ids of the sessions it ended, oldest first. The purge job runs it for
# accounts over a lowered maximum that no login has brought back within it.
TRIM_USER_LUA = _REVOKE_FUNCTION + _EVICT_FUNCTION + """
return evict_oldest(ARGV[1], KEYS[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], '')
"""

# ARGV: prefix, sid, revoked-until, now, expected uid ("" for any), "1" to record a missing session too
REVOKE_SESSION_LUA = _REVOKE_FUNCTION + """
local uid = redis.call('HGET', ARGV[1] .. 'sess:' .. ARGV[2], 'uid')
if not uid then
    -- A session that Redis no longer holds (lost data, a restore) may still have live
    -- access tokens: with ARGV[6] = '1' it goes into the revoked set all the same.
    if ARGV[6] == '1' then
        revoke(ARGV[1], ARGV[2], false, ARGV[3], ARGV[4])
    end
    return 0
end
if ARGV[5] ~= '' and uid ~= ARGV[5] then
    return 0
end
revoke(ARGV[1], ARGV[2], uid, ARGV[3], ARGV[4])
return 1
"""

# ARGV: prefix, uid, revoked-until, now, session id to keep ("" for none)
REVOKE_USER_LUA = _REVOKE_FUNCTION + """
local index = ARGV[1] .. 'user:' .. ARGV[2] .. ':sessions'
local revoked = {}
for _, sid in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if sid ~= ARGV[5] then
        revoke(ARGV[1], sid, ARGV[2], ARGV[3], ARGV[4])
        table.insert(revoked, sid)
    end
end
return revoked
"""
