--[[
alerts_put: a tenant's alert settings (PUT /v1/tenants/{t}/alerts). The low-balance alert
is re-armed (a new threshold is news); a recharge still awaited stays awaited unless
auto-recharge is switched off. Where the settings live: lua/05_alerts.lua.

KEYS[1] tenant                  {p}:t:T        tenant hash
KEYS[2] pools                   {p}:t:T:pools  hash
KEYS[3] events                  {p}:events     partition stream
KEYS[4] audit                   {p}:t:T:audit  list
ARGV[1] tenant_id
ARGV[2] now                     (s)
ARGV[3] pool_thresholds         percent, "80,100" ("": none)
ARGV[4] low_balance_micro       ("": none)
ARGV[5] recharge_below_micro    auto-recharge below ("": none)
ARGV[6] recharge_amount_micro   auto-recharge amount ("" with ARGV[5])
ARGV[7] actor
REPLY   {OK}
ERRORS  TENANT_NOT_FOUND
--]]
local function alerts_put(KEYS, ARGV)
  local k_tenant, k_pools = KEYS[1], KEYS[2]
  local tid, now = ARGV[1], tonumber(ARGV[2])
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  redis.call('HSET', k_pools, 'apct', ARGV[3])
  redis.call('HDEL', k_tenant, 'alf')
  if ARGV[4] == '' then redis.call('HDEL', k_tenant, 'alb')
  else redis.call('HSET', k_tenant, 'alb', ARGV[4]) end
  if ARGV[5] == '' then redis.call('HDEL', k_tenant, 'arb', 'ara', 'arr')
  else redis.call('HSET', k_tenant, 'arb', ARGV[5], 'ara', ARGV[6]) end
  audit(KEYS[4], KEYS[3], 'alerts.updated', tid, now, {
    pool_thresholds_percent = ARGV[3], low_balance_micro = ARGV[4],
    auto_recharge_below_micro = ARGV[5], auto_recharge_amount_micro = ARGV[6],
    actor = ARGV[7]})
  return {OK}
end

redis.register_function('alerts_put', alerts_put)
