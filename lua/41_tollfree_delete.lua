--[[
tollfree_delete: remove a toll-free number of the tenant (D28).

KEYS[1] tenant      {p}:t:T           tenant hash
KEYS[2] tollfree    {p}:t:T:tollfree  hash
KEYS[3] numbers     {p}:t:T:numbers   hash
KEYS[4] events      {p}:events        partition stream
KEYS[5] audit       {p}:t:T:audit     the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] number      +E164
ARGV[3] now         (s)
ARGV[4] actor       id of the token that made the change (audit trail)
REPLY   {OK}
ERRORS  TENANT_NOT_FOUND NOT_FOUND
--]]

local function tollfree_delete(KEYS, ARGV)
  local k_tenant, k_tollfree, k_events, k_audit = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
  local tid, number, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  if redis.call('HDEL', k_tollfree, number) == 0 then return {NOT_FOUND} end
  audit(k_audit, k_events, 'tollfree.removed', tid, now, {number = number, actor = ARGV[4]})
  return {OK}
end

redis.register_function('tollfree_delete', tollfree_delete)
