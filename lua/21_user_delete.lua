--[[
user_delete: remove a user, its licence (pool capacity, D4, D6) and its numbers.

KEYS[1] tenant      {p}:t:T           tenant hash
KEYS[2] users       {p}:t:T:users     hash
KEYS[3] pools       {p}:t:T:pools     hash
KEYS[4] numbers     {p}:t:T:numbers   hash
KEYS[5] tollfree    {p}:t:T:tollfree  hash (unused: the keys of user_put)
KEYS[6] events      {p}:events        partition stream
KEYS[7] audit       {p}:t:T:audit     the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] user_id
ARGV[3] now         (s)
ARGV[4] actor       id of the token that made the change (audit trail)
REPLY   {OK}
ERRORS  TENANT_NOT_FOUND NOT_FOUND
--]]

local function user_delete(KEYS, ARGV)
  local k_tenant, k_users, k_pools, k_numbers, k_events, k_audit = KEYS[1], KEYS[2], KEYS[3],
    KEYS[4], KEYS[6], KEYS[7]
  local tid, uid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  local raw_old = redis.call('HGET', k_users, uid)
  if not raw_old then return {NOT_FOUND} end
  release_user(k_users, k_pools, k_numbers, uid, cjson.decode(raw_old))
  redis.call('HDEL', k_users, uid)
  audit(k_audit, k_events, 'user.deleted', tid, now, {user = uid, actor = ARGV[4]})
  return {OK}
end

redis.register_function('user_delete', user_delete)
