--[[
end_call: the end of a call's life and its bill (D31, D33).

A call's time is a horizon h (seconds since answer it may last) made of a pool segment
[0, ps) followed by a credit segment [ps, ps + cs) (lua/60_extend.lua).

KEYS[1]  tenant        {p}:t:T           tenant hash
KEYS[2]  call          {p}:t:T:c:C       hash
KEYS[3]  pools         {p}:t:T:pools     hash (unused: passed for symmetry with extend)
KEYS[4]  month_1       {p}:t:T:m:YYYYMM  month hashes of ARGV[5..7], as extend
KEYS[5]  month_2
KEYS[6]  month_3
KEYS[7]  active        {p}:active        zset
KEYS[8]  events        {p}:events        partition stream
KEYS[9]  user_active   {p}:t:T:uact      hash
PACKED   the ARGV below come as one argument, each value followed by a NUL byte
         (lua/00_lib.lua args)
ARGV[1]  tenant_id
ARGV[2]  call_id
ARGV[3]  now                 (s)
ARGV[4]  duration_seconds    answered duration (s)
ARGV[5]  month_1             YYYYMM of KEYS[4]
ARGV[6]  month_2             YYYYMM of KEYS[5]
ARGV[7]  month_3             YYYYMM of KEYS[6]
ARGV[8]  retention_seconds   of the closed record (s)
ARGV[9]  how                 "switch" | "expired"
ARGV[10] grace_seconds       reaper grace (s), only with "expired": the call is closed only
                             if its grant expired at least that long ago, and billed as
                             fully used (D33).
REPLY    {OK, state, duration_seconds, domestic_pool_minutes, international_pool_minutes,
          credits_micro, overrun_seconds, replayed}                     replayed 0 | 1
ERRORS   TENANT_NOT_FOUND CALL_NOT_FOUND CALL_ENDED MONTH_NEEDED
         CALL_ENDED: an expired call not yet due. {MONTH_NEEDED, month}: the call holds
         reservations in its start month, which is not among ARGV[5..7] (it started more
         than about a month ago: a late end, or the reaper was down); nothing changed, call
         again with that month's key.
--]]

local function bill_reply(call, replayed)
  return {OK, call.st, num(call.dur), num(call.bdp), num(call.bip), num(call.bc),
          num(call.over), replayed}
end

local END_ARGV = ('s'):rep(10)
-- The packed values up to dt, the last the end takes (CALL_PACKED's first 23).
local END_PACKED_VALUES = ('s'):rep(23)

local function end_call(KEYS, ARGV)
  local k_tenant, k_call, k_active, k_events, k_uact = KEYS[1], KEYS[2], KEYS[7], KEYS[8],
    KEYS[9]
  local tid, cid, now_text, duration_text, m1, m2, m3, retention, how, grace_text =
    args(END_ARGV, ARGV)
  local now, duration, grace = num(now_text), num(duration_text), num(grace_text)
  -- The call's values as locals: those of CALL_COUNTERS and CALL_PACKED that the bill and
  -- the closed record take. A call of one field is read here with the two struct.unpack of
  -- load_call, in its order, without the table load_call makes of them (its 40 fields cost
  -- the end a tenth of its instructions: BENCHMARKS.md); any other (closed, of an older
  -- layout, missing) through load_call.
  local h, ps, cs, pr, cr, gexp, uid, mon, cnt, pool, kind, rp, rr, rf, ra, rb, d, rsn, src,
    g, exp, cls, dc, dt
  local v = redis.pcall('HGET', k_call, 'v')
  local one_field = type(v) == 'string'
  if one_field then
    local skip, at
    h, ps, cs, pr, cr, gexp, skip, skip, skip, skip, at = struct.unpack(COUNTER_VALUES, v)
    -- (ext n cn ru; then dir to from t0 sa, which the end does not take)
    uid, mon, cnt, pool, kind, rp, rr, rf, ra, rb, skip, skip, skip, skip, skip, d, rsn, src,
      g, exp, cls, dc, dt = struct.unpack(END_PACKED_VALUES, v, at)
  else
    local call = load_call(k_call)
    if not call then return missing_call(KEYS[1]) end
    if call.st == 'ended' or call.st == 'expired' then return bill_reply(call, 1) end  -- D31
    -- A denied call ends like any other with nothing granted: billed nothing, the reported
    -- duration kept, all of it overrun (D31).
    h, ps, cs, pr, cr, gexp, uid, mon, cnt, pool, kind, rp, rr, rf, ra, rb, d, rsn, src, g,
      exp, cls, dc, dt = call.h, call.ps, call.cs, call.pr, call.cr, call.gexp, call.uid,
      call.mon, call.cnt, call.pool, call.kind, call.rp, call.rr, call.rf, call.ra, call.rb,
      call.d, call.rsn, call.src, call.g, call.exp, call.cls, call.dc, call.dt
  end
  local horizon = num(h)
  if how == 'expired' then
    if now < num(gexp) + grace then return {CALL_ENDED} end
    duration = horizon  -- D33: the switch was told to cut the call at the end of its grant
  end
  local pool_r, cred_r, pool_s, cred_s = num(pr), num(cr), num(ps), num(cs)
  local k_month = month_key(KEYS, m1, m2, m3, mon)
  if not k_month and ((pool ~= '' and (pool_r ~= 0 or pool_s ~= 0))
      or (uid ~= '' and (cred_r ~= 0 or cred_s ~= 0))) then
    return {MONTH_NEEDED, mon}
  end
  if duration < 0 then duration = 0 end
  local billed_s = math.min(duration, horizon)
  local overrun = duration - billed_s
  -- Free time (emergency, toll-free, inbound) is in the horizon but in neither segment.
  local pool_used = math.min(billed_s, pool_s)
  local cred_used = math.min(billed_s - pool_used, cred_s)
  local pool_min = ceil_div(pool_used, 60)
  local credits = 0
  if cred_used > 0 then
    credits = credit_cost(cred_used, num(rr), num(rf), num(ra), num(rb))
  end

  if k_month then
    -- Use before release: what is used (at most what was reserved) is added while the
    -- reservation still holds a field of the hash, so the hash is never emptied and written
    -- again here, and keeps the time to live its first write set: no EXPIRE at each end.
    -- Releasing may empty it: then it is gone, as it should be.
    if pool ~= '' then
      local f = pool_fields(pool, kind)
      hincr_or_del(k_month, f.u, pool_min)
      hincr_or_del(k_month, f.r, -pool_r)
    end
    if uid ~= '' and (credits ~= 0 or cred_r ~= 0) then
      hincr_or_del(k_month, 's:' .. uid, credits)
      hincr_or_del(k_month, 'sr:' .. uid, -cred_r)
    end
  end
  if credits ~= 0 or cred_r ~= 0 then
    hincr(k_tenant, 'res', -cred_r)
    hincr(k_tenant, 'bal', -credits)
  end
  if cnt == '1' then
    redis.call('HINCRBY', k_tenant, 'act', '-1')
    redis.call('HINCRBY', k_uact, uid, '-1')  -- kept at 0: lua/00_lib.lua USER_ACTIVE
  end
  local dom = kind == 'domestic' and pool_min or 0
  local intl = kind == 'international' and pool_min or 0
  local state = how == 'expired' and 'expired' or 'ended'
  local duration_t, credits_t, overrun_t = istr(duration), istr(credits), istr(overrun)
  -- The bill replaces the call's record (close_call): what its repeats answer, nothing more.
  close_call(k_call, closed_text(state, d, rsn, src, g, exp, cls, dc, dt, mon, uid, pool,
    kind, rp, duration_t, istr(dom), istr(intl), credits_t, overrun_t, istr(now - num(exp))),
    retention)
  redis.call('ZREM', k_active, tid .. '/' .. cid)
  -- The bill's event, written out when its text from outside (ids, user, pool, rate prefix,
  -- month) is plain, as authorize's (cjson formats each number as a float: most of the
  -- cost of encoding it); else through cjson, the same JSON. A call of the one-field
  -- layout had that text checked plain by authorize, which writes that layout only then.
  local plain = one_field
  if not plain then
    local outside = pool and uid and mon and rp and (cid .. tid .. pool .. uid .. mon .. rp)
    plain = outside and #cjson.encode(outside) == #outside + 2
  end
  if plain then
    emit_text(k_events, '{"call_id":"' .. cid ..
      '","duration_seconds":' .. duration_t .. ',"billed_seconds":' .. istr(billed_s) ..
      ',"overrun_seconds":' .. overrun_t .. ',"pool":"' .. pool .. '","pool_minutes":' ..
      istr(pool_min) .. ',"credits_micro":' .. credits_t .. ',"month":"' .. mon ..
      '","user":"' .. uid .. '","rate_prefix":"' .. rp .. '","type":"call.' .. state ..
      '","tenant":"' .. tid .. '","ts":' .. now_text .. '}')
  else
    emit(k_events, 'call.' .. state, tid, now, {call_id = cid, duration_seconds = duration,
      billed_seconds = billed_s, overrun_seconds = overrun, pool = pool,
      pool_minutes = pool_min, credits_micro = credits, month = mon, user = uid,
      rate_prefix = rp})
  end
  return {OK, state, duration, dom, intl, credits, overrun, 0}
end

redis.register_function('end_call', end_call)
