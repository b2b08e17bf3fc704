--[[
authorize: decide a new call and reserve its first grant (D9-D29, D32), atomically.

KEYS[1]  tenant          {p}:t:T           tenant hash
KEYS[2]  users           {p}:t:T:users     hash
KEYS[3]  call            {p}:t:T:c:C       hash
KEYS[4]  pools           {p}:t:T:pools     hash
KEYS[5]  month           {p}:t:T:m:YYYYMM  hash of the call's start month (tenant zone)
KEYS[6]  numbers         {p}:t:T:numbers   hash
KEYS[7]  tollfree        {p}:t:T:tollfree  hash
KEYS[8]  user_active     {p}:t:T:uact      hash
KEYS[9]  active          {p}:active        zset
KEYS[10] events          {p}:events        partition stream
KEYS[11] rate            {p}:t:T:rl:S      rate bucket (S: now, the second of ARGV[3])
KEYS[12] notify          {p}:notify        alert crossings (lua/05_alerts.lua)
PACKED   the ARGV below come as one argument, each value followed by a NUL byte
         (lua/00_lib.lua args)
ARGV[1]  tenant_id
ARGV[2]  call_id
ARGV[3]  now                    (s)
ARGV[4]  month                  YYYYMM of KEYS[5]
ARGV[5]  currency               and ARGV[6], the time zone the caller computed rate and
ARGV[6]  timezone               month under; checked against the tenant (else
                                TENANT_SETTINGS_CHANGED, currency, zone: recompute, retry)
ARGV[7]  direction              outbound | inbound
ARGV[8]  user_id                ("" inbound)
ARGV[9]  to                     +E164 or short code
ARGV[10] from_                  the caller's number ("" if none)
ARGV[11] dest_country           destination country ("" unknown)
ARGV[12] dest_type              destination number type (gateway.rules.numbers;
                                "emergency", "invalid")
ARGV[13] dest_zone              countries of the destination's domestic zone, ",US,PR,CA,"
                                ("" none)
ARGV[14] emergency_regions      where ARGV[9] is an emergency short code, ",US,CA," ("" none)
ARGV[15] predeny                deny reason decided before Redis ("" | invalid_destination
                                | destination_blocked)
ARGV[16] credits_only           "1": destination payable from credits only (allowed premium
                                / shared cost, D13)
ARGV[17] rate_prefix            ("": no rate, credits cannot pay)
ARGV[18] rate_micro_per_minute
ARGV[19] connection_fee_micro
ARGV[20] initial_increment      A (s)
ARGV[21] subsequent_increment   B (s)
ARGV[22] grant_max_seconds      largest grant (s)
ARGV[23] retention_seconds      of a closed call record (s)
ARGV[24] started_at             (s)
ARGV[25] deadline_us            the caller answers without us from this moment on, in
                                microseconds since the epoch ("0": none); a request Redis
                                starts later changes nothing (LATE)
ARGV[26] attempt                names this request. A new call stores it ('n'), a replay
                                that answers an active allow stores it as the call's
                                confirming attempt ('cn'): void_call undoes a call only for
                                the attempt that last answered it allow
ARGV[27] default_authorizations_per_second
                                the deployment's rate per tenant, for a tenant without its
                                own ('rl'; "0": no limit). A bucket of that many tokens,
                                refilled whole every second (KEYS[11] counts the second's
                                new calls): a new call id over it is denied rate_limited and
                                leaves nothing behind (no record, no event): a retry is a
                                new question. Emergency calls are never limited.
REPLY    {OK, replayed, decision, reason, source, granted_seconds, grant_expires_at,
          destination_class, destination_country, destination_type}    replayed 0 | 1
ERRORS   TENANT_NOT_FOUND TENANT_SETTINGS_CHANGED LATE
         {TENANT_SETTINGS_CHANGED, currency, timezone}: the tenant's
--]]

-- The first answer again (D32), from the stored call. A live call answered allow again is
-- confirmed by this attempt: if its answer is lost too, void_call undoes the call for it.
local function call_reply(k_call, replayed, attempt)
  local s = load_call(k_call)
  if s.st == 'active' and s.d == 'allow' and attempt ~= '' then
    save_call(k_call, s, s.h, s.ps, s.cs, s.pr, s.cr, s.gexp, s.ext, attempt, s.ru,
      call_grants(s))
  end
  return {OK, replayed, s.d, s.rsn, s.src, tonumber(s.g), tonumber(s.exp), s.cls, s.dc, s.dt}
end

-- A decision is seven values, not a table (a Lua table costs several hundred instructions
-- per field: BENCHMARKS.md): decision, reason, source, granted seconds, class, free (the
-- call's time is free), counted (it counts against the concurrency limits).
local function deny(reason, class)
  return 'deny', reason, '', 0, class or '', false, false
end

local function allow_free(reason, class, cap, counted)
  return 'allow', reason, 'free', cap, class, true, counted
end

-- Decoded user records by their JSON text, as stored verbatim by user_put: the same text is
-- the same record, so the decoding (as dear as several redis.calls: BENCHMARKS.md) is done
-- once per version of a user, with the names of its two pools made then too (pool_domestic,
-- pool_international: "CC:PLAN:KIND"). Callers must treat a record as read-only. A memo of
-- USER_CACHE_MAX entries (lua/00_lib.lua memo), which bounds its memory (~1 kB an entry).
local USER_CACHE_MAX = 1000
local user_cache = memo(USER_CACHE_MAX)

local function decode_user(raw)
  local user = user_cache[raw]
  if user == nil then
    user = cjson.decode(raw)
    user.pool_domestic = user.country .. ':' .. user.plan .. ':domestic'
    user.pool_international = user.country .. ':' .. user.plan .. ':international'
    remember(user_cache, raw, user)
  end
  return user
end

-- t: the tenant's HMGET (maxc, act at 3, 4).
local function over_concurrency(c, user, k_uact, t)
  local umax = user.max_concurrent_calls
  if umax ~= nil and num(redis.call('HGET', k_uact, c.uid)) >= umax then return true end
  local maxc = t[3]
  return maxc ~= '' and maxc ~= false and num(t[4]) >= num(maxc)
end

-- Outbound rules in order: emergency (D11) > unknown user (D26) > invalid / blocked (D13,
-- D14) > no plan (D24) > dial-out policy (D23) > concurrency (D25) > toll-free (D12) >
-- sources (D15, D16).
local function decide_outbound(c, st, KEYS, t, grant_max, emergency_regions, predeny, dzone,
    dtype)
  local raw = redis.call('HGET', KEYS[2], c.uid)
  local user = raw and decode_user(raw)
  if emergency_regions ~= '' then
    -- Decided before Redis already; here only confirmed against the user's country. A
    -- caller we cannot place (unknown user) still gets the call: life safety first.
    if not user or in_list(emergency_regions, user.country) then
      return allow_free('emergency', 'emergency', grant_max, false)
    end
    return deny('invalid_destination')
  end
  if not user then return deny('unknown_user') end
  if predeny ~= '' then return deny(predeny) end
  local domestic = in_list(dzone, user.country)
  local class = domestic and 'domestic' or 'international'
  if not user.pstn then return deny('no_calling_plan', class) end
  if user.dial_out == 'none' or (user.dial_out == 'domestic_only' and not domestic) then
    return deny('dial_out_policy', class)
  end
  if over_concurrency(c, user, KEYS[8], t) then return deny('concurrency_limit', class) end
  if dtype == 'toll_free' and domestic then
    return allow_free('toll_free', 'toll_free', grant_max, true)
  end
  c.credits_allowed = user.credits_allowed
  c.limit = user.monthly_spend_limit_micro
  st.kind = class
  st.pool = domestic and user.pool_domestic or user.pool_international
  local g, what = pay(c, st, grant_max)
  if g == 0 then return deny(what, class) end
  return 'allow', what, what, g, class, false, true
end

-- Inbound (D27, D28): to the tenant's toll-free number (credits at the origin's toll-free
-- rate), to a user's number (free, or D15 when the tenant charges inbound calls).
local function decide_inbound(c, st, KEYS, to, grant_max)
  if redis.call('HEXISTS', KEYS[7], to) == 1 then
    c.credits_allowed, c.credits_only = true, true
    local g, what = pay(c, st, grant_max)
    if g == 0 then return deny('insufficient_credits', 'toll_free_inbound') end
    return 'allow', 'credits', 'credits', g, 'toll_free_inbound', false, false
  end
  local uid = redis.call('HGET', KEYS[6], to)
  if not uid then return deny('unknown_user', 'inbound') end
  c.uid = uid
  if redis.call('HGET', c.k_tenant, 'chg_in') ~= '1' then
    return allow_free('inbound_free', 'inbound', grant_max, false)
  end
  local user = decode_user(redis.call('HGET', KEYS[2], uid))
  c.credits_allowed = user.credits_allowed
  c.limit = user.monthly_spend_limit_micro
  st.kind = 'domestic'
  st.pool = user.pool_domestic
  local g, what = pay(c, st, grant_max)
  if g == 0 then return deny(what, 'inbound') end
  return 'allow', what, what, g, 'inbound', false, false
end

-- One new call from the tenant's bucket of the current second (see default_rate); rl: the
-- tenant's own rate ('' or false: default_rate). False when the bucket is empty.
local function take_token(k_rate, rl, default_rate)
  if not rl or rl == '' then rl = default_rate end
  local rate = num(rl)
  if rate <= 0 then return true end
  local n = redis.call('INCR', k_rate)
  if n == 1 then redis.call('EXPIRE', k_rate, 2) end
  return n <= rate
end

local AUTHORIZE_ARGV = ('s'):rep(27)

-- The context (c) and paying state (st) of the call being decided, as pay reads them: one
-- table each for the life of the library, every field set again at the start of each call,
-- rather than two new tables a call (their fields cost more to make, and to collect, than
-- to set: BENCHMARKS.md). Redis runs one function at a time, to its end, so they always
-- belong to the running call. Made with every field pay may set, so that none is added.
local CONTEXT = {k_tenant = '', k_pools = '', k_month = '', uid = '', credits_only = false,
  credits_allowed = true, limit = false, rate = false, rp = '', rr = '', rf = '', ra = '',
  rb = ''}
local STATE = {pool = '', kind = '', pool_s = 0, pool_r = 0, cred_s = 0, cred_r = 0, pend = 0}

local function authorize(KEYS, ARGV)
  local tid, cid, now_text, month, currency, timezone, direction, uid, to, from, dcountry,
    dtype, dzone, eregions, predeny, credits_only, rp, rr, rf, ra, rb, grant_max, retention,
    started_text, deadline, attempt, default_rate = args(AUTHORIZE_ARGV, ARGV)
  local now, started = num(now_text), num(started_text)
  local k_call, k_active, k_events = KEYS[3], KEYS[9], KEYS[10]
  if past_deadline(deadline) then return {LATE} end

  -- The tenant's cap and count of active calls (D25) come with its settings: one read.
  local t = redis.call('HMGET', KEYS[1], 'cur', 'tz', 'maxc', 'act', 'rl')
  if not t[1] then return {TENANT_NOT_FOUND} end
  if t[1] ~= currency or t[2] ~= timezone then return {TENANT_SETTINGS_CHANGED, t[1], t[2]} end
  if redis.call('EXISTS', k_call) == 1 then return call_reply(k_call, 1, attempt) end  -- D32
  if eregions == '' and not take_token(KEYS[11], t[5], default_rate) then
    return {OK, 0, 'deny', 'rate_limited', '', 0, now, '', dcountry, dtype}
  end

  -- What pay (lua/06_grants.lua) reads, and no more: decide_outbound / decide_inbound read
  -- the rest of the request from KEYS and the arguments. Every field set again (CONTEXT).
  local c, st = CONTEXT, STATE
  c.k_tenant, c.k_pools, c.k_month, c.uid = KEYS[1], KEYS[4], KEYS[5], uid
  c.credits_only, c.credits_allowed, c.limit, c.rate = credits_only == '1', true, nil, nil
  c.rp, c.rr, c.rf, c.ra, c.rb = rp, rr, rf, ra, rb  -- rate_of
  st.pool, st.kind, st.pool_s, st.pool_r, st.cred_s, st.cred_r, st.pend = '', '', 0, 0, 0, 0, 0
  alert_context(tid, now, month, k_events, KEYS[12])  -- lua/05_alerts.lua
  local decision, reason, source, granted, class, free, counted
  if direction == 'inbound' then
    decision, reason, source, granted, class, free, counted = decide_inbound(c, st, KEYS, to,
      num(grant_max))
  else
    decision, reason, source, granted, class, free, counted = decide_outbound(c, st, KEYS, t,
      num(grant_max), eregions, predeny, dzone, dtype)
  end

  local granted_text = istr(granted)
  if decision ~= 'allow' then
    -- Denied: the call hash is its closed record from the start (close_call); the event
    -- carries the rest, for the ledger.
    close_call(k_call, closed_text('denied', decision, reason, source, granted_text, now_text,
      class, dcountry, dtype, month, c.uid, st.pool, st.kind, c.rp), retention)
    emit(k_events, 'call.denied', tid, now, {
      call_id = cid, direction = direction, user = c.uid, to = to, from = from,
      reason = reason, source = source, granted_seconds = granted, class = class,
      country = dcountry, number_type = dtype, month = month, started_at = started,
      pool = st.pool, pool_reserved_minutes = st.pool_r, credits_reserved_micro = st.cred_r,
      rate_prefix = c.rp, counted = counted and true or false})
    return {OK, 0, decision, reason, source, granted, now, class, dcountry, dtype}
  end

  local expires = now + granted
  local expires_text = istr(expires)
  local grants = '[' .. grant_json(source, granted_text, now_text, expires_text) .. ']'
  -- The call hash, every value as the text Redis stores: the fields that never change packed
  -- in 'i' (CALL_PACKED's order) and the others by name; the hash holds the same values in
  -- 'v' (lua/00_lib.lua load_call), written with one HSET (tests/test_call_records.py checks
  -- that the two agree). Integer arguments are stored as sent (store.py sends plain
  -- decimal integers); 'sl' comes from the user's JSON record and is printed as redis.call
  -- prints a Lua number.
  local sl = c.limit and string.format('%.17g', c.limit) or ''
  -- The text from outside that the call's record and its event carry (user, pool, numbers,
  -- rate prefix, call and tenant ids, attempt) is plain when cjson, encoding it, adds
  -- nothing but the quotes: no quote, backslash, '/' or control character to escape. Then
  -- both are written out, the same text cjson writes, for a small part of cjson's cost on
  -- the whole record (27 values) and less than a pattern scan (figures: BENCHMARKS.md).
  -- Every other value is our own word or text store.py makes (integers, country, type).
  local uid, pool, attempt = c.uid, st.pool, attempt
  local outside = uid .. pool .. to .. from .. c.rp .. cid .. tid .. attempt
  local plain = #cjson.encode(outside) == #outside + 2
  local packed
  if plain then
    packed = '["' .. uid .. '","' .. month .. '","' .. (counted and '1' or '0') .. '","' ..
      pool .. '","' .. st.kind .. '","' .. c.rp .. '","' .. c.rr .. '","' .. c.rf ..
      '","' .. c.ra .. '","' .. c.rb .. '","' .. direction .. '","' .. to .. '","' .. from ..
      '","' .. now_text .. '","' .. started_text .. '","' .. decision .. '","' .. reason ..
      '","' .. source .. '","' .. granted_text .. '","' .. expires_text .. '","' ..
      class .. '","' .. dcountry .. '","' .. dtype .. '","' .. (free and '1' or '0') ..
      '","' .. (c.credits_only and '1' or '0') .. '","' ..
      (c.credits_allowed and '1' or '0') .. '","' .. sl .. '"]'
  else
    packed = cjson.encode({uid, month, counted and '1' or '0', pool, st.kind,
      c.rp, c.rr, c.rf, c.ra, c.rb, direction, to, from, now_text, started_text, decision,
      reason, source, granted_text, expires_text, class, dcountry, dtype,
      free and '1' or '0', c.credits_only and '1' or '0', c.credits_allowed and '1' or '0',
      sl})
  end
  local ps, cs, pr, cr = istr(st.pool_s), istr(st.cred_s), istr(st.pool_r), istr(st.cred_r)
  if plain then  -- no value holds a NUL (cjson would have escaped it): lua/00_lib.lua load_call
    local z = '\0'
    redis.call('HSET', k_call, 'v', counters_text(granted_text, ps, cs, pr, cr, expires_text,
      '0', attempt, '', '') .. uid .. z .. month .. z .. (counted and '1' or '0') .. z .. pool .. z ..
      st.kind .. z .. c.rp .. z .. c.rr .. z .. c.rf .. z .. c.ra .. z .. c.rb .. z ..
      direction .. z .. to .. z .. from .. z .. now_text .. z .. started_text .. z .. decision ..
      z .. reason .. z .. source .. z .. granted_text .. z .. expires_text .. z .. class .. z ..
      dcountry .. z .. dtype .. z .. (free and '1' or '0') .. z ..
      (c.credits_only and '1' or '0') .. z .. (c.credits_allowed and '1' or '0') .. z .. sl ..
      z .. grants)
  else  -- the older layout, which every reader reads
    redis.call('HSET', k_call, 'n', attempt, 'st', 'active', 'i', packed, 'h', granted_text,
      'ps', ps, 'cs', cs, 'pr', pr, 'cr', cr, 'gexp', expires_text, 'ext', '0', 'grants', grants)
  end
  redis.call('ZADD', k_active, expires_text, tid .. '/' .. cid)
  if counted then
    redis.call('HINCRBY', c.k_tenant, 'act', '1')
    redis.call('HINCRBY', KEYS[8], c.uid, '1')
  end
  -- The open call's whole record, so that `callgate rebuild` can restore it from the
  -- ledger. Everything else the ledger keeps of the call is a field of it (dir, uid, to,
  -- rsn, ...: gateway/ledger/project.py reads them there), so the event carries nothing
  -- twice: smaller XADD, AOF and persister reads on the hottest event of all.
  -- Written out rather than through cjson, which would escape the packed text whole
  -- (measured in BENCHMARKS.md, "measurements behind choices in lua/"): the record's two JSON fields, 'i' and 'grants', stand beside it as JSON, not
  -- as escaped strings, and every other value is integer text or our own word. The call
  -- and tenant ids are the only text from outside; one the API would never let through
  -- takes the cjson way, whose event reads the same.
  if plain then
    emit_text(k_events, '{"call_id":"' .. cid ..
      '","call":["n","' .. attempt .. '","st","active","h","' .. granted_text .. '","ps","' ..
      ps .. '","cs","' .. cs .. '","pr","' .. pr .. '","cr","' .. cr ..
      '","gexp","' .. expires_text .. '","ext","0"],"i":' .. packed .. ',"grants":' ..
      grants .. ',"type":"call.allowed","tenant":"' .. tid .. '","ts":' .. now_text .. '}')
  else
    emit(k_events, 'call.allowed', tid, now, {call_id = cid, call = {'n', attempt,
      'st', 'active', 'i', packed, 'h', granted_text, 'ps', ps, 'cs', cs, 'pr', pr, 'cr', cr,
      'gexp', expires_text, 'ext', '0', 'grants', grants}})
  end
  return {OK, 0, decision, reason, source, granted, expires, class, dcountry, dtype}
end

redis.register_function('authorize', authorize)
