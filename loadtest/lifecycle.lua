-- wrk script: whole calls, authorize then end, at a fixed rate over a few keep-alive
-- connections: the pace of a real switch (loadtest/pace.py).
--
-- Environment: BENCH_TENANTS, BENCH_USERS (per tenant), BENCH_TENANT_PREFIX, BENCH_TOKEN,
-- BENCH_RUN (makes call ids unique across runs), BENCH_RATE (requests/s per wrk thread:
-- twice the calls/s).
--
-- Each allowed authorize's call id waits in a queue; the next request sent is the end of the
-- oldest one waiting, else a new authorize. Send slots are handed out on a fixed schedule
-- (open loop), as in authorize.lua.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } cg_timespec;
  int clock_gettime(int clk_id, cg_timespec *tp);
]]
local ts = ffi.new("cg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local tenants = tonumber(os.getenv("BENCH_TENANTS") or "10")
local users = tonumber(os.getenv("BENCH_USERS") or "10")
local prefix = os.getenv("BENCH_TENANT_PREFIX") or "bench-t"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local auth = "Authorization: Bearer " .. (os.getenv("BENCH_TOKEN") or "") .. "\r\n"
local areas = {212, 415, 312, 617, 202, 305, 713, 206, 404, 303, 416, 514}

thread_id = 0
local threads = {}
local counter = 0
local ends = {}        -- "tenant/call id" of allowed calls waiting for their end
local first, last = 1, 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
end

local function post(path, body)
  return "POST " .. path .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port .. "\r\n" ..
    auth .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
end

function request()
  if first <= last then
    local t, cid = string.match(ends[first], "^([^/]+)/(.+)$")
    ends[first] = nil
    first = first + 1
    return post("/v1/tenants/" .. t .. "/calls/" .. cid .. "/end",
      '{"duration_seconds":' .. math.random(0, 180) .. '}')
  end
  counter = counter + 1
  local t = math.random(0, tenants - 1)
  local to = string.format("+1%d%d%06d", areas[math.random(#areas)], math.random(2, 9),
    math.random(0, 999999))
  -- The tenant's number ends the call id, so that the answer tells whose call it is.
  return post("/v1/tenants/" .. prefix .. t .. "/calls", string.format(
    '{"call_id":"p-%s-%d-%d-t%d","direction":"outbound","user_id":"u%d","to":"%s"}',
    run, thread_id, counter, t, math.random(0, users - 1), to))
end

function response(status, headers, body)
  local cid, t = string.match(body, '"call_id":"(p%-[^"]+%-t(%d+))","decision":"allow"')
  if cid then
    last = last + 1
    ends[last] = prefix .. t .. "/" .. cid
  end
end

if rate > 0 then
  local interval = 1000 / rate
  local next_slot = nil
  function delay()
    local now = now_ms()
    if next_slot == nil or next_slot < now - 1000 then next_slot = now end
    local slot = next_slot
    next_slot = next_slot + interval
    local d = slot - now
    if d <= 0 then return 0 end
    return math.floor(d)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"latency_mean_us":%.1f,' ..
    '"latency_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
