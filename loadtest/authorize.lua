-- wrk script: POST authorizations with unique call ids over many tenants and users.
--
-- Environment: BENCH_TENANTS, BENCH_USERS (per tenant), BENCH_TENANT_PREFIX, BENCH_TOKEN,
-- BENCH_RUN (makes call ids unique across runs), BENCH_RATE (requests/s per wrk thread;
-- 0 or unset: as fast as the connections allow).
--
-- With BENCH_RATE the thread hands out send slots on a fixed schedule (open loop): each
-- connection, when free, waits for the next slot, so the offered rate does not drop when
-- the server slows down (as long as enough connections are idle). wrk's delay() has 1 ms
-- resolution: at 0.2 ms intervals requests leave in small bursts each millisecond.
local common = dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") ..
  "wrk_common.lua")

local tenants = tonumber(os.getenv("BENCH_TENANTS") or "10")
local users = tonumber(os.getenv("BENCH_USERS") or "10")
local prefix = os.getenv("BENCH_TENANT_PREFIX") or "bench-t"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
}
-- US / Canada area codes: domestic for a US user on the "domestic" plan.
local areas = {212, 415, 312, 617, 202, 305, 713, 206, 404, 303, 416, 514}

local threads = {}
thread_id = 0 -- a global: setup() overrides it per thread with thread:set
local counter = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
end

-- The request line and headers of each tenant's path, built once: wrk.format would rebuild
-- them (a table walk and a dozen concatenations) for every request, on the CPU that the
-- generator shares with Redis in `make bench`.
local heads = {}
local function head(t)
  local h = heads[t]
  if h == nil then
    h = "POST /v1/tenants/" .. prefix .. t .. "/calls HTTP/1.1\r\nHost: " .. wrk.host ..
      ":" .. wrk.port .. "\r\n"
    for name, value in pairs(headers) do h = h .. name .. ": " .. value .. "\r\n" end
    h = h .. "Content-Length: "
    heads[t] = h
  end
  return h
end

function request()
  counter = counter + 1
  local t = math.random(0, tenants - 1)
  local u = math.random(0, users - 1)
  local to = string.format("+1%d%d%06d", areas[math.random(#areas)], math.random(2, 9),
    math.random(0, 999999))
  local body = string.format(
    '{"call_id":"b-%s-%d-%d","direction":"outbound","user_id":"u%d","to":"%s"}',
    run, thread_id, counter, u, to)
  return head(t) .. #body .. "\r\n\r\n" .. body
end

delay = common.paced_delay(rate)

done = common.done
