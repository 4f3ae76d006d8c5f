-- GET the URL given to wrk, with no credentials (/health, /ready, the floor app).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
