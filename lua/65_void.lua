--[[
void_call: undo an authorize whose allow never reached the switch (architecture.md, "Answers
that stay true under stress").

A worker that answered an authorize other than allow (service_unavailable after its deadline,
or nothing: the connection to Redis broke) while its FCALL may still have run calls this,
retrying until it lands. The call then holds no reservation, no concurrency slot and no
place in the reaper's zset, and its record says what the switch was told: deny,
service_unavailable (a retry of the same call id replays that answer, D32).

Only the attempt that last answered the call allow may void it: the attempt that created it
('n') unless a replay answered allow since ('cn'); a call the switch has extended or ended
is the switch's. Voiding twice, or a call that does not exist, changes nothing.

KEYS[1] tenant        {p}:t:T           tenant hash
KEYS[2] call          {p}:t:T:c:C       hash
KEYS[3] pools         {p}:t:T:pools     hash (unused: the keys of end_call)
KEYS[4] month_1       {p}:t:T:m:YYYYMM  month hashes of ARGV[5..7], as end_call
KEYS[5] month_2
KEYS[6] month_3
KEYS[7] active        {p}:active        zset
KEYS[8] events        {p}:events        partition stream
KEYS[9] user_active   {p}:t:T:uact      hash
ARGV[1] tenant_id
ARGV[2] call_id
ARGV[3] now                 (s)
ARGV[4] attempt             authorize's ARGV[26]
ARGV[5] month_1             YYYYMM of KEYS[4]
ARGV[6] month_2             YYYYMM of KEYS[5]
ARGV[7] month_3             YYYYMM of KEYS[6]
ARGV[8] retention_seconds   of the closed record (s)
REPLY   {OK, voided}        voided 1 | 0 (nothing to undo)
ERRORS  MONTH_NEEDED        {MONTH_NEEDED, month}, as end_call
--]]

local function void_call(KEYS, ARGV)
  local k_tenant, k_call, k_active, k_events, k_uact = KEYS[1], KEYS[2], KEYS[7], KEYS[8],
    KEYS[9]
  local tid, cid, now, attempt = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
  local call = load_call(k_call)
  -- Closed, or extended: nothing to undo.
  if not call or call.st ~= 'active' or call.ext ~= '0' or attempt == '' then return {OK, 0} end
  if (call.cn or call.n) ~= attempt then return {OK, 0} end
  local pr, cr = num(call.pr), num(call.cr)
  local k_month = month_key(KEYS, ARGV[5], ARGV[6], ARGV[7], call.mon)
  if not k_month and (pr ~= 0 or cr ~= 0) then return {MONTH_NEEDED, call.mon} end
  if k_month then
    if call.pool ~= '' then hincr_or_del(k_month, pool_fields(call.pool, call.kind).r, -pr) end
    if call.uid ~= '' then hincr_or_del(k_month, 'sr:' .. call.uid, -cr) end
  end
  hincr(k_tenant, 'res', -cr)
  if call.cnt == '1' then
    redis.call('HINCRBY', k_tenant, 'act', '-1')
    redis.call('HINCRBY', k_uact, call.uid, '-1')  -- kept at 0: lua/00_lib.lua USER_ACTIVE
  end
  -- The answer the switch was given, as a denied call's closed record: a replay answers
  -- it, an end bills nothing and gives back no concurrency slot.
  close_call(k_call, closed_text('denied', 'deny', 'service_unavailable', '', '0', ARGV[3],
    call.cls, call.dc, call.dt, call.mon, call.uid, call.pool, call.kind, call.rp), ARGV[8])
  redis.call('ZREM', k_active, tid .. '/' .. cid)
  emit(k_events, 'call.voided', tid, now, {call_id = cid, reason = 'service_unavailable',
    attempt = attempt, pool = call.pool, pool_reserved_minutes = pr,
    credits_reserved_micro = cr, month = call.mon, user = call.uid})
  return {OK, 1}
end

redis.register_function('void_call', void_call)
