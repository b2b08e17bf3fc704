--[[
tollfree_put: add a toll-free number of the tenant (D28).

KEYS[1] tenant      {p}:t:T           tenant hash
KEYS[2] tollfree    {p}:t:T:tollfree  hash
KEYS[3] numbers     {p}:t:T:numbers   hash
KEYS[4] events      {p}:events        partition stream
KEYS[5] audit       {p}:t:T:audit     the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] number      +E164
ARGV[3] now         (s)
ARGV[4] actor       id of the token that made the change (audit trail)
REPLY   {OK, created}     created 1 | 0
ERRORS  TENANT_NOT_FOUND NUMBER_CONFLICT  {NUMBER_CONFLICT, number}
--]]
local function tollfree_put(KEYS, ARGV)
  local k_tenant, k_tollfree, k_numbers, k_events, k_audit = KEYS[1], KEYS[2], KEYS[3],
    KEYS[4], KEYS[5]
  local tid, number, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  if redis.call('HEXISTS', k_numbers, number) == 1 then return {NUMBER_CONFLICT, number} end
  local created = redis.call('HSETNX', k_tollfree, number, now)
  if created == 1 then
    audit(k_audit, k_events, 'tollfree.added', tid, now, {number = number, actor = ARGV[4]})
  end
  return {OK, created}
end

redis.register_function('tollfree_put', tollfree_put)
