-- GET the URL given to wrk with a bearer token, taking the tokens of
-- BENCH_TOKENS_FILE (one per line) in turn.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local headers = {}
local next_index = 0

function init(_args)
    for _, token in ipairs(bench.read_lines(os.getenv("BENCH_TOKENS_FILE"))) do
        headers[#headers + 1] = { Authorization = "Bearer " .. token }
    end
    -- Threads start at different tokens.
    next_index = thread_index % #headers
end

function request()
    next_index = next_index % #headers + 1
    return wrk.format("GET", nil, headers[next_index])
end
