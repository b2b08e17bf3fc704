--[[
Library: the paying step that authorize and extend share (D6, D15-D22). Declares pool_grant,
credit_grant and pay; registers nothing. Uses lua/00_lib.lua and lua/05_alerts.lua.
--]]

-- Reserve up to cap more seconds from a pool for a call already holding pool_s seconds
-- (pool_r minutes reserved). Returns granted seconds (0: exhausted) and the call's new
-- reserved minutes, or nil when the pool does not exist (no licence assigned). Announces
-- the alert thresholds the grant crosses. pend: minutes the caller released from the
-- reservation and has not written yet (extend's truncate, <= 0): counted as written, and
-- written with the grant's, one HINCRBY for both.
local function pool_grant(k_pools, k_month, pool, kind, pool_s, pool_r, cap, pend)
  local capacity = pool_capacity(k_pools, pool, kind)
  if capacity <= 0 then return nil end
  local used, reserved, r_field, first = pool_usage(k_month, pool, kind)
  reserved = reserved + pend
  local remaining = capacity - used - reserved
  if remaining < 0 then remaining = 0 end  -- D6: capacity fell below use
  local g = math.min(cap, (pool_r + remaining) * 60 - pool_s)
  if g <= 0 then return 0, pool_r end
  local new_r = ceil_div(pool_s + g, 60)
  hincr_or_del(k_month, r_field, new_r - pool_r + pend)
  -- Alert thresholds are whole percents: only a grant that takes the pool past one may
  -- cross a threshold (most do not: 5 minutes of 30,000 are 0.017 %). Checked here, with
  -- no call and no read; lua/05_alerts.lua reads the thresholds when it may.
  local before, after = (used + reserved) * 100, (used + reserved + new_r - pool_r) * 100
  if after - after % capacity > before - before % capacity then
    pool_crossings(k_pools, k_month, pool, kind, used, used + reserved,
      used + reserved + new_r - pool_r, capacity)
  end
  -- The pool's first minutes of the month set the hash's time to live; later grants need
  -- not renew it (figures: BENCHMARKS.md). A hash left without fields is deleted and
  -- starts again here.
  if first then redis.call('EXPIRE', k_month, MONTH_TTL_SECONDS) end
  return g, new_r
end

-- Reserve up to cap more seconds of credits for a call already holding cred_s seconds
-- (cred_r micro-units reserved). Returns granted seconds and the new reservation, or 0 and
-- 'money' | 'limit' when the wallet or the user's monthly spend limit cannot pay (D19, D22).
local function credit_grant(c, cred_s, cred_r, cap)
  local r = rate_of(c)
  local t = redis.call('HMGET', c.k_tenant, 'bal', 'res', 'alb', 'arb')
  local avail = num_once(t[1]) - num_once(t[2])
  local len = cred_s + cap
  local sfield, srfield = 's:' .. c.uid, 'sr:' .. c.uid
  -- The user's own monthly limit first (D22): when it is spent, topping the wallet up
  -- would not help, and the admin must see that.
  if c.limit ~= nil then
    local s = redis.call('HMGET', c.k_month, sfield, srfield)
    local room = c.limit - num_once(s[1]) - num_once(s[2]) + cred_r
    len = max_affordable(room, r.rate, r.fee, r.a, r.b, len)
    if len - cred_s <= 0 then
      spend_limit_reached(c)
      return 0, 'limit'
    end
  end
  len = max_affordable(avail + cred_r, r.rate, r.fee, r.a, r.b, len)
  if len - cred_s <= 0 then return 0, 'money' end
  local new_r = credit_cost(len, r.rate, r.fee, r.a, r.b)
  hincr(c.k_tenant, 'res', new_r - cred_r)
  if t[3] or t[4] then credit_crossings(c.k_tenant, t[3], t[4], avail - new_r + cred_r) end
  if c.uid ~= '' then
    hincr_or_del(c.k_month, srfield, new_r - cred_r)
    redis.call('EXPIRE', c.k_month, MONTH_TTL_SECONDS)
  end
  return len - cred_s, new_r
end

-- The paying step shared by authorize and extend: pool (unless the call already moved to
-- credits or may only use credits), then credits, else the D17 deny reason.
-- Mutates st (pool_s, pool_r, cred_s, cred_r; pend, the pool minutes released and not yet
-- written, which a pool grant writes with its own); returns granted seconds, source | deny reason.
local function pay(c, st, cap)
  local pool_existed = false
  if st.pool ~= '' and st.cred_s == 0 and not c.credits_only then
    local g, new_r = pool_grant(c.k_pools, c.k_month, st.pool, st.kind, st.pool_s, st.pool_r,
      cap, st.pend)
    if g ~= nil then
      pool_existed = true
      if g > 0 then
        st.pend = 0
        st.pool_s, st.pool_r = st.pool_s + g, new_r
        return g, st.kind .. '_pool'
      end
    end
  end
  if not c.credits_allowed then return 0, 'credits_not_allowed' end
  if c.rp == '' then return 0, 'destination_blocked' end
  local g, new_r = credit_grant(c, st.cred_s, st.cred_r, cap)
  if g == 0 then
    if new_r == 'limit' then return 0, 'spend_limit_reached' end
    return 0, pool_existed and 'pool_exhausted_no_credits' or 'insufficient_credits'
  end
  st.cred_s, st.cred_r = st.cred_s + g, new_r
  return g, 'credits'
end
