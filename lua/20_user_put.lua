--[[
user_put: a user's licence, policy, limits and numbers. A licence change updates pool
capacity in the same atomic step (D4, D6): capacity is derived from the licence count, never
stored, so it can never drift from the assignments.

KEYS[1] tenant      {p}:t:T           tenant hash
KEYS[2] users       {p}:t:T:users     hash
KEYS[3] pools       {p}:t:T:pools     hash
KEYS[4] numbers     {p}:t:T:numbers   hash
KEYS[5] tollfree    {p}:t:T:tollfree  hash
KEYS[6] events      {p}:events        partition stream
KEYS[7] audit       {p}:t:T:audit     the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] user_id
ARGV[3] now         (s)
ARGV[4] record      user record, JSON, stored verbatim: {country, plan, pstn (bool: the
                    plan may call the PSTN), dial_out, credits_allowed, numbers ([+E164]),
                    dmin / imin (domestic / international minutes per user of (country,
                    plan) from configuration; 0: no pool), and, when set,
                    monthly_spend_limit_micro, max_concurrent_calls (absent: no limit)}
ARGV[5] actor       id of the token that made the change (audit trail)
REPLY   {OK, created}                   created 1 | 0
ERRORS  TENANT_NOT_FOUND NUMBER_CONFLICT  {NUMBER_CONFLICT, number}
--]]

local function user_put(KEYS, ARGV)
  local k_tenant, k_users, k_pools, k_numbers, k_tollfree, k_events, k_audit =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
  local tid, uid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
  local user = cjson.decode(ARGV[4])
  local dmin, imin = tonumber(user.dmin) or 0, tonumber(user.imin) or 0

  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  for _, n in ipairs(user.numbers) do
    local owner = redis.call('HGET', k_numbers, n)
    if (owner and owner ~= uid) or redis.call('HEXISTS', k_tollfree, n) == 1 then
      return {NUMBER_CONFLICT, n}
    end
  end

  local raw_old = redis.call('HGET', k_users, uid)
  if raw_old then release_user(k_users, k_pools, k_numbers, uid, cjson.decode(raw_old)) end

  if dmin > 0 or imin > 0 then
    local pool = user.country .. ':' .. user.plan
    redis.call('HINCRBY', k_pools, 'lic:' .. pool, 1)
    -- Minutes per user follow the configuration in force at the latest licence change.
    redis.call('HSET', k_pools, 'dmin:' .. pool, dmin, 'imin:' .. pool, imin)
  end
  for _, n in ipairs(user.numbers) do redis.call('HSET', k_numbers, n, uid) end
  redis.call('HSET', k_users, uid, ARGV[4])
  audit(k_audit, k_events, raw_old and 'user.updated' or 'user.created', tid, now,
    {user = uid, record = ARGV[4], actor = ARGV[5]})
  return {OK, raw_old and 0 or 1}
end

redis.register_function('user_put', user_put)
