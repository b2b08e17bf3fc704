--[[
Library: alerts. Declares alert_context, pool_crossings, credit_crossings,
spend_limit_reached and alerts_rearm (and the announcement they share); registers nothing
(alerts_put, the settings' writer, is lua/25_alerts_put.lua).

The tenant's alert settings, and threshold crossings announced in the same atomic
step as the change that crosses them (api.md, Notifications), so each is announced once
however many calls race.

Where the settings live: in the hashes the call-control functions read anyway. A call that
crosses nothing pays little: the pool thresholds are read only when a grant takes the pool
past a whole percent (any threshold is one), the credit thresholds are two more fields of
the HMGET a credit reservation sends anyway, their state two more only when below one.
  pools hash   apct   pool thresholds in percent, "80,100" (absent: POOL_THRESHOLDS_DEFAULT;
                      "": none)
  tenant hash  alb    low_balance (micro-units)
               alf    "1": the low balance was announced; deleted (re-armed) by a top-up
                      that lifts the available credits to alb or above
               arb    auto_recharge.below (micro-units)   ara  auto_recharge.amount
               arr    idempotency key of the recharge requested and not yet topped up;
                      deleted (re-armed) by the top-up carrying it
               arn    number of recharge requests so far (their keys' counter)
  month hash   aNN:CC:PLAN:KIND  threshold NN of that pool announced this month
               sla:U             user U's spend limit announced this month

An announcement is one event on the partition stream (the ledger's copy, like every other
change) and the same event on the partition's notify stream, which only the notifier reads:
it need not read every call event to find the few alerts. Money is micro-units and months
are YYYY-MM in the events; the notifier formats the money of the webhook's body.
--]]

-- What an announcement needs of the running function: set by authorize and extend before
-- they reserve anything (alert_context), read only when something is announced. Plain
-- upvalues rather than fields of the call context: five more fields made every call's
-- context table twice the size (figures: BENCHMARKS.md). Redis runs one
-- function at a time, so they always belong to the running one.
local A_TID, A_NOW, A_MONTH, A_EVENTS, A_NOTIFY = '', 0, '', '', ''

local function alert_context(tid, now, month, k_events, k_notify)
  A_TID, A_NOW, A_MONTH, A_EVENTS, A_NOTIFY = tid, now, month, k_events, k_notify
end

-- One event on the partition stream and, with that stream's entry id, on the notify stream.
local function announce(etype, data)
  data.type = etype
  data.tenant = A_TID
  data.ts = A_NOW
  local text = cjson.encode(data)
  local id = redis.call('XADD', A_EVENTS, '*', 'type', etype, 'tenant', A_TID, 'data', text)
  redis.call('XADD', A_NOTIFY, '*', 'eid', id, 'type', etype, 'tenant', A_TID, 'data', text)
end

local function month_dash(yyyymm)
  return string.sub(yyyymm, 1, 4) .. '-' .. string.sub(yyyymm, 5, 6)
end

local POOL_THRESHOLDS_DEFAULT = {80, 100}
-- Parsed thresholds by their text (a handful of distinct texts in practice), in a memo of
-- THRESHOLDS_CACHE_MAX entries (lua/00_lib.lua memo).
local THRESHOLDS_CACHE_MAX = 1000
local thresholds_cache = memo(THRESHOLDS_CACHE_MAX)

local function pool_thresholds(text)
  if not text then return POOL_THRESHOLDS_DEFAULT end
  local t = thresholds_cache[text]
  if t == nil then
    t = {}
    for n in string.gmatch(text, '%d+') do t[#t + 1] = tonumber(n) end
    remember(thresholds_cache, text, t)
  end
  return t
end

-- A pool's used + reserved minutes went from `before` to `after` (used: its used minutes):
-- each threshold crossed upwards is announced, once per threshold, pool and month (the
-- month hash remembers it; a level that falls back and rises again is not news).
-- Thresholds are whole percents: none lies in (before, after] unless the level passed a
-- whole percent, which most grants do not; the caller calls this only when it did.
local function pool_crossings(k_pools, k_month, pool, kind, used, before, after, capacity)
  local ths = pool_thresholds(redis.call('HGET', k_pools, 'apct'))
  for i = 1, #ths do
    local level = ths[i] * capacity
    if after * 100 >= level and before * 100 < level then
      if redis.call('HSETNX', k_month, 'a' .. istr(ths[i]) .. ':' .. pool, '1') == 1 then
        local country, plan = string.match(pool, '^([^:]*):(.*):[^:]*$')
        announce('pool.threshold_crossed', {country = country, plan = plan, kind = kind,
          month = month_dash(A_MONTH), threshold_percent = ths[i], used_minutes = used,
          reserved_minutes = after - used, capacity_minutes = capacity})
      end
    end
  end
end

-- The available credits of the tenant are now `avail` after a reservation lowered them;
-- low, below: its low_balance and auto_recharge.below (false: none), read with the balance.
local function credit_crossings(k_tenant, low, below, avail)
  low, below = low and num(low), below and num(below)
  if not ((low and avail < low) or (below and avail < below)) then return end
  local armed = redis.call('HMGET', k_tenant, 'alf', 'arr')  -- announced already?
  if low and avail < low and not armed[1] then
    redis.call('HSET', k_tenant, 'alf', '1')
    announce('credits.low_balance', {available_micro = avail, threshold_micro = low})
  end
  if below and avail < below and not armed[2] then
    local key = 'auto-recharge-' .. istr(redis.call('HINCRBY', k_tenant, 'arn', '1'))
    local amount = num(redis.call('HGET', k_tenant, 'ara'))
    redis.call('HSET', k_tenant, 'arr', key)
    announce('credits.recharge_requested', {amount_micro = amount, idempotency_key = key,
      available_micro = avail, below_micro = below})
  end
end

-- The user's monthly spend limit refused a grant: announced once per user and month.
local function spend_limit_reached(c)
  if redis.call('HSETNX', c.k_month, 'sla:' .. c.uid, '1') == 1 then
    redis.call('EXPIRE', c.k_month, MONTH_TTL_SECONDS)
    announce('spend_limit.reached', {user_id = c.uid, month = month_dash(A_MONTH),
      limit_micro = c.limit})
  end
end

-- After a top-up to `balance` with idempotency key `key`: re-arms the low-balance alert
-- when the available credits are back to its threshold, and the auto-recharge when this
-- top-up carries the key it requested. True when it settled a recharge request.
local function alerts_rearm(k_tenant, key, balance)
  local a = redis.call('HMGET', k_tenant, 'res', 'alb', 'alf', 'arr')
  if a[3] and balance - num(a[1]) >= num(a[2]) then redis.call('HDEL', k_tenant, 'alf') end
  if a[4] and a[4] == key then
    redis.call('HDEL', k_tenant, 'arr')
    return true
  end
  return false
end
