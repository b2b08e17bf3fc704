--[[
tollfree_put / tollfree_delete: the tenant's toll-free numbers (D28).

KEYS[1] tenant hash     {p}:t:T
KEYS[2] toll-free hash  {p}:t:T:tollfree
KEYS[3] numbers hash    {p}:t:T:numbers
KEYS[4] events stream   {p}:events
KEYS[5] audit list      {p}:t:T:audit (the event, newest first, capped)
ARGV[1] tenant id
ARGV[2] number (+E164)
ARGV[3] now (seconds)
ARGV[4] actor: id of the token that made the change (audit trail)

tollfree_put returns {OK, created 1|0} | {TENANT_NOT_FOUND} | {NUMBER_CONFLICT, number}
tollfree_delete returns {OK} | {TENANT_NOT_FOUND} | {NOT_FOUND}
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
