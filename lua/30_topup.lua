--[[
topup: add to a tenant's wallet, once per idempotency key (D19).

KEYS[1] tenant            {p}:t:T         tenant hash
KEYS[2] topups            {p}:t:T:topups  hash
KEYS[3] events            {p}:events      partition stream
KEYS[4] audit             {p}:t:T:audit   the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] idempotency_key
ARGV[3] amount_micro      (micro-units, > 0)
ARGV[4] now               (s)
ARGV[5] actor             id of the token that made the change (audit trail)
REPLY   {OK, balance_micro, replayed}     balance as decimal text; replayed 1 | 0
ERRORS  TENANT_NOT_FOUND IDEMPOTENCY_CONFLICT BALANCE_LIMIT
        (IDEMPOTENCY_CONFLICT: same key, different amount)
--]]
local function topup(KEYS, ARGV)
  local k_tenant, k_topups, k_events, k_audit = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local tid, key, amount, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  local seen = redis.call('HGET', k_topups, key)
  if seen then
    local prev_amount, prev_balance = string.match(seen, '^(%d+)|(%-?%d+)$')
    if tonumber(prev_amount) ~= amount then return {IDEMPOTENCY_CONFLICT} end
    return {OK, prev_balance, 1}
  end
  -- Lua writes numbers with 14 significant digits (tostring, '..', cjson): a balance must
  -- stay below 1e14 micro-units to reach the ledger and the client exactly.
  if num(redis.call('HGET', k_tenant, 'bal')) + amount >= 1e14 then return {BALANCE_LIMIT} end
  local balance = redis.call('HINCRBY', k_tenant, 'bal', amount)
  redis.call('HSET', k_topups, key, amount .. '|' .. balance)
  local settled = alerts_rearm(k_tenant, key, balance)  -- lua/05_alerts.lua
  audit(k_audit, k_events, 'credits.topped_up', tid, now,
    {idempotency_key = key, amount_micro = amount, balance_micro = balance, actor = ARGV[5],
     recharge_settled = settled or nil})
  return {OK, string.format('%d', balance), 0}
end

redis.register_function('topup', topup)
