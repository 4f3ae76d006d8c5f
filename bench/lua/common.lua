-- Shared by the benchmark scripts: token files, fixed-rate pacing and the result line.
--
-- Every script starts with
--     local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
-- and reads its parameters from BENCH_* environment variables set by bench/wrk.py.
-- wrk (4.1, built with LuaJIT) gives each thread its own Lua state plus one for
-- setup() and done(), so this file runs once in each of them.

local ffi = require("ffi")

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]

local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local bench = {}

bench.threads = tonumber(os.getenv("BENCH_THREADS") or "1")

-- Milliseconds on the monotonic clock.
function bench.now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
    return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

-- Read the non-empty lines of a file. With `thread_index`, keep only every
-- bench.threads-th line starting at that index, so threads never share a line.
function bench.read_lines(path, thread_index)
    local file = assert(io.open(path, "r"), "cannot open " .. tostring(path))
    local lines, n = {}, 0
    for line in file:lines() do
        if line ~= "" then
            if thread_index == nil or n % bench.threads == thread_index then
                lines[#lines + 1] = line
            end
            n = n + 1
        end
    end
    file:close()
    return lines
end

function bench.url_encode(text)
    return (text:gsub("[^%w%-%._~]", function(char)
        return string.format("%%%02X", string.byte(char))
    end))
end

-- setup() runs in the main Lua state once per thread: give each thread its index
-- and keep the thread objects, so done() can read their counters.
local thread_objects = {}

function setup(thread)
    thread:set("thread_index", #thread_objects)
    thread_objects[#thread_objects + 1] = thread
end

-- Fixed rate: with BENCH_RATE (requests per second over all threads), wrk calls
-- delay() before every request of every connection, and each call takes the next
-- free slot of one schedule per thread. A connection waits for its slot, so the
-- thread sends at the rate for as long as it has a connection free; slots missed
-- while every connection was busy are sent at once afterwards (the schedule does
-- not slip). Latency is measured by wrk from the moment a request is written, not
-- from its slot, so time spent waiting for a free connection is not counted.
local rate = tonumber(os.getenv("BENCH_RATE") or "")
if rate ~= nil and rate > 0 then
    local interval_ms = 1000 * bench.threads / rate
    local next_slot_ms = nil

    function delay()
        local now = bench.now_ms()
        if next_slot_ms == nil then
            next_slot_ms = now
        end
        local slot = next_slot_ms
        next_slot_ms = next_slot_ms + interval_ms
        if slot <= now then
            return 0
        end
        -- wrk takes whole milliseconds.
        return math.floor(slot - now + 0.5)
    end
end

-- Counters that a script keeps as globals in each thread's state and wants in the
-- result, such as the number of requests sent without a fresh token.
bench.counters = {}

local function json_number(value)
    if value == nil or value ~= value then
        return "null"
    end
    return string.format("%.17g", value)
end

function done(summary, latency, requests)
    local fields = {
        '"requests":' .. json_number(summary.requests),
        '"duration_us":' .. json_number(summary.duration),
        '"bytes":' .. json_number(summary.bytes),
        '"errors":{"connect":' .. json_number(summary.errors.connect)
            .. ',"read":' .. json_number(summary.errors.read)
            .. ',"write":' .. json_number(summary.errors.write)
            .. ',"status":' .. json_number(summary.errors.status)
            .. ',"timeout":' .. json_number(summary.errors.timeout) .. "}",
        '"latency_us":{"mean":' .. json_number(latency.mean)
            .. ',"stdev":' .. json_number(latency.stdev)
            .. ',"min":' .. json_number(latency.min)
            .. ',"max":' .. json_number(latency.max)
            .. ',"p50":' .. json_number(latency:percentile(50))
            .. ',"p90":' .. json_number(latency:percentile(90))
            .. ',"p99":' .. json_number(latency:percentile(99))
            .. ',"p999":' .. json_number(latency:percentile(99.9)) .. "}",
    }
    for _, name in ipairs(bench.counters) do
        local total = 0
        for _, thread in ipairs(thread_objects) do
            total = total + (tonumber(thread:get(name)) or 0)
        end
        fields[#fields + 1] = '"' .. name .. '":' .. json_number(total)
    end
    io.write("BENCH_RESULT {" .. table.concat(fields, ",") .. "}\n")
end

return bench
