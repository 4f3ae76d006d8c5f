-- POST the URL given to wrk with the credentials of the accounts in
-- BENCH_EMAILS_FILE in turn, all with the password BENCH_PASSWORD.
-- BENCH_LOGIN_FORMAT=json sends {"email", "password"} (Gatehouse); form sends
-- username=...&password=... as application/x-www-form-urlencoded (OAuth 2.0
-- password form, as fastapi-users expects).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local bodies = {}
local headers = {}
local next_index = 0

function init(_args)
    local password = os.getenv("BENCH_PASSWORD")
    local form = os.getenv("BENCH_LOGIN_FORMAT") == "form"
    headers["Content-Type"] = form and "application/x-www-form-urlencoded" or "application/json"
    for _, email in ipairs(bench.read_lines(os.getenv("BENCH_EMAILS_FILE"))) do
        if form then
            bodies[#bodies + 1] = "username=" .. bench.url_encode(email) .. "&password=" .. bench.url_encode(password)
        else
            bodies[#bodies + 1] = '{"email": "' .. email .. '", "password": "' .. password .. '"}'
        end
    end
    next_index = thread_index % #bodies
end

function request()
    next_index = next_index % #bodies + 1
    return wrk.format("POST", nil, headers, bodies[next_index])
end
