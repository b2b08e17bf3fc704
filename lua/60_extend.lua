--[[
extend: more time for a call (D18, D29-D30).

A call's time is a horizon h (seconds since answer it may last) made of a pool segment
[0, ps) followed by a credit segment [ps, ps + cs): once a call moves to credits it stays
there (D18). Reservations: pr = ceil(ps / 60) pool minutes, cr = cost(cs) micro-units.

KEYS[1]  tenant        {p}:t:T           tenant hash
KEYS[2]  call          {p}:t:T:c:C       hash
KEYS[3]  pools         {p}:t:T:pools     hash
KEYS[4]  month_1       {p}:t:T:m:YYYYMM  month hashes of the three months the call may have
KEYS[5]  month_2                         started in (the caller's candidates; see
KEYS[6]  month_3                         gateway/redis/store.py), ARGV[5..7] in that order
KEYS[7]  active        {p}:active        zset
KEYS[8]  events        {p}:events        partition stream
KEYS[9]  user_active   {p}:t:T:uact      (end_call's; unused here)
KEYS[10] notify        {p}:notify        stream
PACKED   the ARGV below come as one argument, each value followed by a NUL byte
         (lua/00_lib.lua args)
ARGV[1]  tenant_id
ARGV[2]  call_id
ARGV[3]  now                 (s)
ARGV[4]  used_seconds        so far
ARGV[5]  month_1             YYYYMM of KEYS[4]
ARGV[6]  month_2             YYYYMM of KEYS[5]
ARGV[7]  month_3             YYYYMM of KEYS[6]
ARGV[8]  grant_max_seconds   largest grant (s)
ARGV[9]  deadline_us         microseconds since the epoch ("0": none), as authorize's
REPLY    {OK, decision, reason, source, granted_seconds, grant_expires_at,
          destination_class, destination_country, destination_type}
ERRORS   TENANT_NOT_FOUND CALL_NOT_FOUND CALL_ENDED LATE USED_BACKWARDS
         {USED_BACKWARDS, reported_seconds}: the seconds already reported

The new grant counts from now: the horizon becomes used + granted. A retried extend with the
same used seconds reserves nothing more (it releases and re-reserves the same time).
Time only moves forward: used seconds below those an earlier extend of the call reported (as
taken: at most the horizon then) change nothing and answer {USED_BACKWARDS, those seconds}.
An unknown call of a tenant that does not exist answers TENANT_NOT_FOUND, so that a missing
tenant looks the same on every route (and the same as another tenant's, api.md).
--]]

-- The call as pay's context (lua/06_grants.lua): its own table, with the keys and the
-- user's terms pay reads set on it (it has the rest: uid, rp, rr, rf, ra, rb), rather than
-- a table of its own (figures: BENCHMARKS.md). load_call's table has room for them.
local function as_context(KEYS, call, k_month)
  call.k_tenant, call.k_pools, call.k_month = KEYS[1], KEYS[3], k_month
  call.credits_only, call.credits_allowed = call.co == '1', call.ca == '1'
  call.limit = tonumber(call.sl)
  return call
end

-- Shrink the call's horizon to u seconds, releasing reservations beyond it. The pool's
-- release is left in st.pend, written with the next pool grant's (one HINCRBY for both) or
-- by settle_pool.
local function truncate(c, st, u)
  if u <= st.pool_s then st.pool_s, st.cred_s = u, 0 else st.cred_s = u - st.pool_s end
  local pool_r = ceil_div(st.pool_s, 60)
  if st.pool ~= '' then st.pend = pool_r - st.pool_r end
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

-- Writes the pool minutes truncate released when no pool grant wrote them.
local function settle_pool(c, st)
  if st.pend ~= 0 then hincr_or_del(c.k_month, pool_fields(st.pool, st.kind).r, st.pend) end
  st.pend = 0
end

-- Undo truncate(): reserve again what it released, back to the state it held (pool_s,
-- pool_r, cred_s, cred_r; its pool release, unwritten, is dropped).
local function restore(c, st, pool_s, pool_r, cred_s, cred_r)
  st.pend = 0
  if cred_r ~= st.cred_r then
    hincr(c.k_tenant, 'res', cred_r - st.cred_r)
    if c.uid ~= '' then hincr_or_del(c.k_month, 'sr:' .. c.uid, cred_r - st.cred_r) end
  end
  st.pool_s, st.pool_r, st.cred_s, st.cred_r = pool_s, pool_r, cred_s, cred_r
end

local EXTEND_ARGV = ('s'):rep(9)

local function extend(KEYS, ARGV)
  local k_call, k_active, k_events = KEYS[2], KEYS[7], KEYS[8]
  local tid, cid, now_text, used_text, m1, m2, m3, grant_max_text, deadline =
    args(EXTEND_ARGV, ARGV)
  local now, used, grant_max = num(now_text), num(used_text), num(grant_max_text)
  if past_deadline(deadline) then return {LATE} end
  local call = load_call(k_call)
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
  local grants = call_grants(call)
  local at = string.find(grants, '"used_seconds":', #grants - 30, true)
  local reported = at and num(string.sub(grants, at + 15, -3)) or 0
  if call.ru then reported = math.max(reported, num(call.ru)) end
  if used < reported then return {USED_BACKWARDS, reported} end

  local h = num(call.h)
  local u = math.max(0, math.min(used, h))
  local g, source, reason = grant_max, 'free', call.rsn
  local k_month = month_key(KEYS, m1, m2, m3, call.mon)
  -- The paying state (lua/06_grants.lua pay's st: pool, kind, pool_s, pool_r, cred_s, cred_r,
  -- pend) is the call's own table too, which has pool and kind and room for the rest.
  local st = call
  st.pool_s, st.pool_r, st.cred_s, st.cred_r, st.pend = num(call.ps), num(call.pr),
    num(call.cs), num(call.cr), 0
  if call.free ~= '1' then
    if not k_month then
      -- The call started before the previous month: no further time (its month is closed).
      g, reason = 0, 'service_unavailable'
    else
      local c = as_context(KEYS, call, k_month)
      alert_context(tid, now, call.mon, k_events, KEYS[10])  -- lua/05_alerts.lua
      local pool_s, pool_r, cred_s, cred_r = st.pool_s, st.pool_r, st.cred_s, st.cred_r
      truncate(c, st, u)
      g, reason = pay(c, st, grant_max)
      if g > 0 then
        settle_pool(c, st)  -- paid from credits: the pool's release stands
        source = reason
      else
        -- Denied: the call keeps its current grant to the end (api.md), so it keeps what
        -- that grant reserved; put back what the truncation released.
        restore(c, st, pool_s, pool_r, cred_s, cred_r)
      end
    end
  end

  if g == 0 then
    -- Denied: the current grant stands, and so does the record.
    if u > reported then
      save_call(k_call, call, call.h, call.ps, call.cs, call.pr, call.cr, call.gexp, call.ext,
        call.cn, istr(u), grants)
    end
    emit(k_events, 'call.extension_denied', tid, now, {call_id = cid, used_seconds = u,
      reason = reason, source = '', granted_seconds = 0, pool_reserved_minutes = st.pool_r,
      credits_reserved_micro = st.cred_r})
    return {OK, 'deny', reason, '', 0, num(call.gexp), call.cls, call.dc, call.dt}
  end
  local expires = now + g
  local expires_text, g_text, u_text = istr(expires), istr(g), istr(u)
  -- The new grant is appended to the stored JSON text: the earlier ones stay as they are.
  local grant = grant_json(source, g_text, now_text, expires_text, u_text)
  if grants == '[]' then grants = '[' .. grant .. ']'
  else grants = string.sub(grants, 1, -2) .. ',' .. grant .. ']' end
  local h_text, ps_text, cs_text, pr_text, cr_text, ext_text = istr(u + g), istr(st.pool_s),
    istr(st.cred_s), istr(st.pool_r), istr(st.cred_r), istr(num(call.ext) + 1)
  save_call(k_call, call, h_text, ps_text, cs_text, pr_text, cr_text, expires_text, ext_text,
    call.cn, call.ru, grants)
  redis.call('ZADD', k_active, expires_text, tid .. '/' .. cid)
  -- The event carries the fields the extension changed ('set', and 'grants' beside it as
  -- JSON), not the whole record: the ledger keeps the record call.allowed carried and lays
  -- the last extension's fields over it (gateway/ledger/project.py), which is the call hash
  -- (for `callgate rebuild`). The confirming attempt a replay wrote ('cn') goes with them.
  -- Written out: every value is integer text, our own word or the grants' JSON; the ids
  -- (and the attempt) are the only text from outside, and one that JSON must escape takes
  -- the cjson way, whose event reads the same (the grants inside 'set' as a string).
  -- A call of the one-field layout had its ids checked plain by authorize, which writes that
  -- layout only then (the confirming attempt is the gateway's own text, checked anyway).
  local cn = call.cn
  local ids = cid .. tid .. (cn or '')
  if (call.v and not cn) or #cjson.encode(ids) == #ids + 2 then
    emit_text(k_events, '{"call_id":"' .. cid .. '","used_seconds":' ..
      u_text .. ',"reason":"' .. reason .. '","source":"' .. source ..
      '","granted_seconds":' .. g_text .. ',"pool_reserved_minutes":' .. pr_text ..
      ',"credits_reserved_micro":' .. cr_text .. ',"set":["h","' .. h_text .. '","ps","' ..
      ps_text .. '","cs","' .. cs_text .. '","pr","' .. pr_text .. '","cr","' .. cr_text ..
      '","gexp","' .. expires_text .. '","ext","' .. ext_text ..
      (cn and ('","cn","' .. cn) or '') ..
      '"],"grants":' .. grants .. ',"type":"call.extended","tenant":"' .. tid .. '","ts":' ..
      now_text .. '}')
  else
    local set = {'h', h_text, 'ps', ps_text, 'cs', cs_text, 'pr', pr_text, 'cr', cr_text,
      'gexp', expires_text, 'ext', ext_text, 'grants', grants}
    if cn then set[17], set[18] = 'cn', cn end
    emit(k_events, 'call.extended', tid, now, {call_id = cid, used_seconds = u,
      reason = reason, source = source, granted_seconds = g, pool_reserved_minutes = st.pool_r,
      credits_reserved_micro = st.cred_r, set = set})
  end
  return {OK, 'allow', reason, source, g, expires, call.cls, call.dc, call.dt}
end

redis.register_function('extend', extend)
