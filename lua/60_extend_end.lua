--[[
extend / end_call: the rest of a call's life (D18, D29-D31, D33).

A call's time is a horizon h (seconds since answer it may last) made of a pool segment
[0, ps) followed by a credit segment [ps, ps + cs): once a call moves to credits it stays
there (D18). Reservations: pr = ceil(ps / 60) pool minutes, cr = cost(cs) micro-units.

extend
KEYS[1] tenant hash {p}:t:T      KEYS[2] call hash {p}:t:T:c:C     KEYS[3] pools hash
KEYS[4..6] month hashes of the three months the call may have started in (caller's
           candidates; see gateway/store.py), ARGV[5..7] their YYYYMM in the same order
KEYS[7] active zset {p}:active   KEYS[8] events stream {p}:events
KEYS[9] user-active hash (end_call's; unused here)   KEYS[10] notify stream {p}:notify
ARGV[1] tenant id  ARGV[2] call id  ARGV[3] now (s)  ARGV[4] used seconds so far
ARGV[8] largest grant (s)
ARGV[9] deadline in milliseconds since the epoch ("0": none), as authorize's ARGV[25]
The new grant counts from now: the horizon becomes used + granted. A retried extend with the
same used seconds reserves nothing more (it releases and re-reserves the same time).
Time only moves forward: used seconds below those an earlier extend of the call reported (as
taken: at most the horizon then) change nothing and answer {USED_BACKWARDS, those seconds}.
Returns {OK, decision, reason, source, granted_seconds, grant_expires_at, class, country,
         number type} | {TENANT_NOT_FOUND} | {CALL_NOT_FOUND} | {CALL_ENDED} | {LATE}
         | {USED_BACKWARDS, seconds already reported}
An unknown call of a tenant that does not exist answers TENANT_NOT_FOUND, so that a missing
tenant looks the same on every route (and the same as another tenant's, api.md).

end_call
KEYS as extend, without KEYS[3] semantics (pools hash unused but passed for symmetry);
KEYS[9] user-active hash {p}:t:T:uact
ARGV[1] tenant id  ARGV[2] call id  ARGV[3] now (s)  ARGV[4] answered duration (s)
ARGV[5..7] months  ARGV[8] retention (s)  ARGV[9] "switch" | "expired"
ARGV[10] reaper grace (s), only with "expired": the call is closed only if its grant
         expired at least that long ago, and billed as fully used (D33).
Returns {OK, state, duration, domestic pool minutes, international pool minutes, credits
         micro, overrun seconds, replayed 0|1} | {TENANT_NOT_FOUND} | {CALL_NOT_FOUND}
         | {CALL_ENDED} (expired call not yet due)
         | {MONTH_NEEDED, YYYYMM}: the call holds reservations in its start month, which is
           not among ARGV[5..7] (it started more than about a month ago: a late end, or
           the reaper was down); nothing changed, call again with that month's key.
--]]

-- What end_call reads of a call (it needs no record), by name. The names of the packed
-- fields it uses are read too, for a hash of the older layout (every field its own, see
-- CALL_PACKED): an absent field costs HMGET little.
local function load_call_end(k_call)
  local v = redis.pcall('HMGET', k_call, 'st', 'i', 'h', 'ps', 'cs', 'pr', 'cr', 'gexp', 'dur',
    'bdp', 'bip', 'bc', 'over', 'uid', 'mon', 'cnt', 'pool', 'kind', 'rp', 'rr', 'rf', 'ra',
    'rb')
  if is_closed_reply(v) then return read_closed(k_call) end
  if not v[1] then return nil end
  local s = unpack_call_head({st = v[1], i = v[2], h = v[3], ps = v[4], cs = v[5], pr = v[6],
    cr = v[7], gexp = v[8], dur = v[9], bdp = v[10], bip = v[11], bc = v[12], over = v[13],
    uid = v[14], mon = v[15], cnt = v[16], pool = v[17], kind = v[18], rp = v[19], rr = v[20],
    rf = v[21], ra = v[22], rb = v[23]})
  if not v[2] then  -- every field its own: the answer the closed record keeps, by name
    local a = redis.call('HMGET', k_call, 'd', 'rsn', 'src', 'g', 'exp', 'cls', 'dc', 'dt')
    s.d, s.rsn, s.src, s.g, s.exp, s.cls, s.dc, s.dt = a[1] or '', a[2] or '', a[3] or '',
      a[4] or '0', a[5] or '0', a[6] or '', a[7] or '', a[8] or ''
  end
  return s
end

-- The flat array of a hash (as HGETALL returned it) after an HSET of the flat pairs
-- `changed`: the hash's record without reading it again. Modifies and returns flat.
local function with_changes(flat, changed)
  local new = {}
  for i = 1, #changed, 2 do new[changed[i]] = changed[i + 1] end
  for i = 1, #flat, 2 do
    local v = new[flat[i]]
    if v then
      flat[i + 1] = v
      new[flat[i]] = nil
    end
  end
  for f, v in pairs(new) do  -- fields the hash did not have yet (none, for authorize's)
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  return flat
end

-- The month hash of the call's month among the caller's candidates, or nil.
local function month_key(KEYS, ARGV, mon)
  for i = 0, 2 do
    if ARGV[5 + i] == mon then return KEYS[4 + i] end
  end
  return nil
end

local function ctx_of(KEYS, call, k_month)
  return {
    k_tenant = KEYS[1], k_call = KEYS[2], k_pools = KEYS[3], k_month = k_month,
    uid = call.uid, credits_only = call.co == '1', credits_allowed = call.ca == '1',
    limit = tonumber(call.sl),
    rp = call.rp, rr = call.rr, rf = call.rf, ra = call.ra, rb = call.rb,  -- rate_of
  }
end

-- Shrink the call's horizon to u seconds, releasing reservations beyond it.
local function truncate(c, st, u)
  if u <= st.pool_s then st.pool_s, st.cred_s = u, 0 else st.cred_s = u - st.pool_s end
  local pool_r = ceil_div(st.pool_s, 60)
  if st.pool ~= '' and pool_r ~= st.pool_r then
    hincr_or_del(c.k_month, 'r:' .. st.pool, pool_r - st.pool_r)
  end
  local cred_r = 0
  if st.cred_s > 0 then
    local r = rate_of(c)
    cred_r = credit_cost(st.cred_s, r.rate, r.fee, r.a, r.b)
  end
  if cred_r ~= st.cred_r then
    hincr(c.k_tenant, 'res', cred_r - st.cred_r)
    if c.uid ~= '' then hincr_or_del(c.k_month, 'sr:' .. c.uid, cred_r - st.cred_r) end
  end
  st.pool_r, st.cred_r = pool_r, cred_r
end

-- Only on the not-found path: costs nothing to a call that exists.
local function missing_call(k_tenant)
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  return {CALL_NOT_FOUND}
end

-- Undo truncate(): reserve again what it released, back to the held state.
local function restore(c, st, held)
  if st.pool ~= '' and held.pool_r ~= st.pool_r then
    hincr_or_del(c.k_month, 'r:' .. st.pool, held.pool_r - st.pool_r)
  end
  if held.cred_r ~= st.cred_r then
    hincr(c.k_tenant, 'res', held.cred_r - st.cred_r)
    if c.uid ~= '' then hincr_or_del(c.k_month, 'sr:' .. c.uid, held.cred_r - st.cred_r) end
  end
  st.pool_s, st.pool_r, st.cred_s, st.cred_r = held.pool_s, held.pool_r, held.cred_s,
    held.cred_r
end

local function extend(KEYS, ARGV)
  local k_call, k_active, k_events = KEYS[2], KEYS[7], KEYS[8]
  local tid, cid, now, used = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local grant_max = tonumber(ARGV[8])
  if past_deadline(ARGV[9]) then return {LATE} end
  local call, flat = load_call(k_call)
  if not call then return missing_call(KEYS[1]) end
  if call.st ~= 'active' then return {CALL_ENDED} end
  -- Time only moves forward: fewer seconds used than already reported would release
  -- reservations for time the call has had. Those seconds, as taken (at most the horizon
  -- then): an allowed extend's are its grant's "used_seconds", which grant_json writes last,
  -- so that the grants text ends with '"used_seconds":N}]' (authorize's grant has none: 0);
  -- a denied extend's are kept in field 'ru'; the larger counts. A plain find in the last 30
  -- bytes of the text (the field, at most 8 digits and '}]'; a negative start counts from
  -- the end, and below the start of the text, from its start) costs less than a field
  -- written at every extend.
  local grants = call.grants
  local at = string.find(grants, '"used_seconds":', #grants - 30, true)
  local reported = at and tonumber(string.sub(grants, at + 15, -3)) or 0
  if call.ru then reported = math.max(reported, tonumber(call.ru)) end
  if used < reported then return {USED_BACKWARDS, reported} end

  local h = num(call.h)
  local u = math.max(0, math.min(used, h))
  local g, source, reason = grant_max, 'free', call.rsn
  local k_month = month_key(KEYS, ARGV, call.mon)
  local st = {pool = call.pool, kind = call.kind, pool_s = num(call.ps), pool_r = num(call.pr),
              cred_s = num(call.cs), cred_r = num(call.cr)}
  if call.free ~= '1' then
    if not k_month then
      -- The call started before the previous month: no further time (its month is closed).
      g, reason = 0, 'service_unavailable'
    else
      local c = ctx_of(KEYS, call, k_month)
      alert_context(tid, now, call.mon, k_events, KEYS[10])  -- lua/25_alerts.lua
      local held = {pool_s = st.pool_s, pool_r = st.pool_r, cred_s = st.cred_s,
                    cred_r = st.cred_r}
      truncate(c, st, u)
      g, reason = pay(c, st, grant_max)
      if g > 0 then
        source = reason
      else
        -- Denied: the call keeps its current grant to the end (api.md), so it keeps what
        -- that grant reserved; put back what the truncation released.
        restore(c, st, held)
      end
    end
  end

  local decision = g > 0 and 'allow' or 'deny'
  local expires, record
  if g == 0 then
    expires = num(call.gexp)  -- denied: the current grant stands
    if u > reported then redis.call('HSET', k_call, 'ru', istr(u)) end
  else
    expires = now + g
    local expires_text = istr(expires)
    -- The new grant is appended to the stored JSON text: the earlier ones stay as they are.
    local grant = grant_json(source, istr(g), ARGV[3], expires_text, istr(u))
    local grants = call.grants
    if grants == '[]' then grants = '[' .. grant .. ']'
    else grants = string.sub(grants, 1, -2) .. ',' .. grant .. ']' end
    local changed = {'h', istr(u + g), 'ps', istr(st.pool_s), 'cs', istr(st.cred_s),
      'pr', istr(st.pool_r), 'cr', istr(st.cred_r), 'gexp', expires_text,
      'ext', istr(num(call.ext) + 1), 'grants', grants}
    redis.call('HSET', k_call, unpack(changed))
    redis.call('ZADD', k_active, expires_text, tid .. '/' .. cid)
    -- The open call's whole record after the change, for `callgate rebuild`.
    record = with_changes(flat, changed)
  end
  emit(k_events, decision == 'allow' and 'call.extended' or 'call.extension_denied', tid, now,
    {call_id = cid, used_seconds = u, reason = reason, source = g > 0 and source or '',
     granted_seconds = g, pool_reserved_minutes = st.pool_r,
     credits_reserved_micro = st.cred_r, call = record})
  return {OK, decision, reason, g > 0 and source or '', g, expires, call.cls, call.dc, call.dt}
end

local function bill_reply(call, replayed)
  return {OK, call.st, num(call.dur), num(call.bdp), num(call.bip), num(call.bc),
          num(call.over), replayed}
end

local function end_call(KEYS, ARGV)
  local k_tenant, k_call, k_active, k_events, k_uact = KEYS[1], KEYS[2], KEYS[7], KEYS[8],
    KEYS[9]
  local tid, cid, now, duration = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local retention, how, grace = ARGV[8], ARGV[9], tonumber(ARGV[10] or '0')
  local call = load_call_end(k_call)
  if not call then return missing_call(KEYS[1]) end
  if call.st == 'ended' or call.st == 'expired' then return bill_reply(call, 1) end  -- D31
  -- A denied call ends like any other with nothing granted: billed nothing, the reported
  -- duration kept, all of it overrun (D31).
  local h = num(call.h)
  if how == 'expired' then
    if now < num(call.gexp) + grace then return {CALL_ENDED} end
    duration = h  -- D33: the switch was told to cut the call at the end of its grant
  end
  local k_month = month_key(KEYS, ARGV, call.mon)
  if not k_month and ((call.pool ~= '' and (num(call.pr) ~= 0 or num(call.ps) ~= 0))
      or (call.uid ~= '' and (num(call.cr) ~= 0 or num(call.cs) ~= 0))) then
    return {MONTH_NEEDED, call.mon}
  end
  if duration < 0 then duration = 0 end
  local billed_s = math.min(duration, h)
  local overrun = duration - billed_s
  local ps, cs = num(call.ps), num(call.cs)
  -- Free time (emergency, toll-free, inbound) is in the horizon but in neither segment.
  local pool_used = math.min(billed_s, ps)
  local cred_used = math.min(billed_s - pool_used, cs)
  local pool_min = ceil_div(pool_used, 60)
  local credits = 0
  if cred_used > 0 then
    credits = credit_cost(cred_used, num(call.rr), num(call.rf), num(call.ra), num(call.rb))
  end
  local pr, cr = num(call.pr), num(call.cr)

  if k_month then
    -- Use before release: what is used (at most what was reserved) is added while the
    -- reservation still holds a field of the hash, so the hash is never emptied and written
    -- again here, and keeps the time to live its first write set: no EXPIRE at each end.
    -- Releasing may empty it: then it is gone, as it should be.
    if call.pool ~= '' then
      hincr_or_del(k_month, 'u:' .. call.pool, pool_min)
      hincr_or_del(k_month, 'r:' .. call.pool, -pr)
    end
    if call.uid ~= '' and (credits ~= 0 or cr ~= 0) then
      hincr_or_del(k_month, 's:' .. call.uid, credits)
      hincr_or_del(k_month, 'sr:' .. call.uid, -cr)
    end
  end
  if credits ~= 0 or cr ~= 0 then
    hincr(k_tenant, 'res', -cr)
    hincr(k_tenant, 'bal', -credits)
  end
  if call.cnt == '1' then
    redis.call('HINCRBY', k_tenant, 'act', '-1')
    hincr_or_del(k_uact, call.uid, -1)
  end
  local dom = call.kind == 'domestic' and pool_min or 0
  local intl = call.kind == 'international' and pool_min or 0
  local state = how == 'expired' and 'expired' or 'ended'
  -- The bill replaces the call's record (close_call): what its repeats answer, nothing more.
  close_call(k_call, {st = state, d = call.d, rsn = call.rsn, src = call.src, g = call.g,
    exp = call.exp, cls = call.cls, dc = call.dc, dt = call.dt, mon = call.mon,
    uid = call.uid, pool = call.pool, kind = call.kind, rp = call.rp, dur = istr(duration),
    bdp = istr(dom), bip = istr(intl), bc = istr(credits), over = istr(overrun),
    ended_after_exp = istr(now - tonumber(call.exp))}, retention)
  redis.call('ZREM', k_active, tid .. '/' .. cid)
  emit(k_events, 'call.' .. state, tid, now, {call_id = cid, duration_seconds = duration,
    billed_seconds = billed_s, overrun_seconds = overrun, pool = call.pool,
    pool_minutes = pool_min, credits_micro = credits, month = call.mon, user = call.uid,
    rate_prefix = call.rp})
  call.st, call.dur, call.bdp, call.bip, call.bc, call.over = state, duration, dom, intl,
    credits, overrun
  return bill_reply(call, 0)
end

redis.register_function('extend', extend)
redis.register_function('end_call', end_call)
