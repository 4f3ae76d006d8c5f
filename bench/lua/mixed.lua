-- A mix of Gatehouse requests in a fixed, interleaved order. Out of every 100:
-- 80 GET /v1/users/me (tokens of BENCH_TOKENS_FILE in turn), 10 POST
-- /v1/auth/refresh (fresh tokens of BENCH_REFRESH_TOKENS_FILE, as in
-- refresh.lua), 5 GET /health, 4 GET /ready and 1 POST /v1/auth/login
-- (BENCH_EMAILS_FILE and BENCH_PASSWORD, as in login.lua).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

bench.counters[#bench.counters + 1] = "tokens_exhausted"

local SHARES = { me = 80, refresh = 10, health = 5, ready = 4, login = 1 }
local ORDER = { "me", "refresh", "health", "ready", "login" }

-- Spread each kind evenly over the 100 slots: slot i goes to the kind whose
-- share is furthest behind its target after i requests.
local function build_pattern()
    local pattern, sent = {}, {}
    for _, kind in ipairs(ORDER) do
        sent[kind] = 0
    end
    for slot = 1, 100 do
        local best, best_lag = nil, nil
        for _, kind in ipairs(ORDER) do
            local lag = SHARES[kind] * slot / 100 - sent[kind]
            if best_lag == nil or lag > best_lag then
                best, best_lag = kind, lag
            end
        end
        sent[best] = sent[best] + 1
        pattern[slot] = best
    end
    return pattern
end

local pattern = build_pattern()
local slot = 0
local access_headers, refresh_tokens, login_bodies = {}, {}, {}
local next_access, next_refresh, next_login = 0, 0, 0
local json_headers = { ["Content-Type"] = "application/json" }
tokens_exhausted = 0

function init(_args)
    for _, token in ipairs(bench.read_lines(os.getenv("BENCH_TOKENS_FILE"))) do
        access_headers[#access_headers + 1] = { Authorization = "Bearer " .. token }
    end
    refresh_tokens = bench.read_lines(os.getenv("BENCH_REFRESH_TOKENS_FILE"), thread_index)
    local password = os.getenv("BENCH_PASSWORD")
    for _, email in ipairs(bench.read_lines(os.getenv("BENCH_EMAILS_FILE"))) do
        login_bodies[#login_bodies + 1] = '{"email": "' .. email .. '", "password": "' .. password .. '"}'
    end
    slot = thread_index % 100
end

function request()
    slot = slot % 100 + 1
    local kind = pattern[slot]
    if kind == "me" then
        next_access = next_access % #access_headers + 1
        return wrk.format("GET", "/v1/users/me", access_headers[next_access])
    elseif kind == "refresh" then
        next_refresh = next_refresh + 1
        local token = refresh_tokens[next_refresh]
        if token == nil then
            tokens_exhausted = tokens_exhausted + 1
            token = "exhausted"
        end
        return wrk.format("POST", "/v1/auth/refresh", json_headers, '{"refresh_token": "' .. token .. '"}')
    elseif kind == "login" then
        next_login = next_login % #login_bodies + 1
        return wrk.format("POST", "/v1/auth/login", json_headers, login_bodies[next_login])
    end
    return wrk.format("GET", "/" .. kind)
end
