-- POST the URL given to wrk (/v1/auth/refresh) with a refresh token never sent
-- before: each request takes the next line of BENCH_TOKENS_FILE, and threads take
-- disjoint lines. When a thread runs out, it sends a token that does not exist,
-- which the server rejects with 401, and counts it in tokens_exhausted, so a run
-- that was sized too small shows up as errors instead of as reuse.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

bench.counters[#bench.counters + 1] = "tokens_exhausted"

local tokens = {}
local used = 0
local headers = { ["Content-Type"] = "application/json" }
tokens_exhausted = 0

function init(_args)
    tokens = bench.read_lines(os.getenv("BENCH_TOKENS_FILE"), thread_index)
end

function request()
    used = used + 1
    local token = tokens[used]
    if token == nil then
        tokens_exhausted = tokens_exhausted + 1
        token = "exhausted"
    end
    return wrk.format("POST", nil, headers, '{"refresh_token": "' .. token .. '"}')
end
