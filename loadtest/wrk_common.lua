-- What the wrk scripts of loadtest/ share (authorize.lua, lifecycle.lua): the fixed-rate
-- send schedule and the one-line JSON summary the Python drivers read. Loaded with dofile
-- from the script's own directory.
local M = {}

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

-- wrk's delay() for `rate` requests/s per thread: send slots handed out on a fixed schedule
-- (open loop), so the offered rate does not drop when the server slows down; nil for 0.
function M.paced_delay(rate)
  if rate <= 0 then return nil end
  local interval = 1000 / rate
  local next_slot = nil
  return function()
    local now = now_ms()
    if next_slot == nil or next_slot < now - 1000 then next_slot = now end
    local slot = next_slot
    next_slot = next_slot + interval
    local d = slot - now
    if d <= 0 then return 0 end
    return math.floor(d)
  end
end

-- wrk's done(): the run's figures as one "BENCH_JSON {…}" line.
function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"latency_mean_us":%.1f,' ..
    '"latency_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end

return M
