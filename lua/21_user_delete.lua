--[[

user_delete
KEYS[1..7] as user_put;  ARGV[1] tenant id, ARGV[2] user id, ARGV[3] now, ARGV[4] actor
Returns {OK} | {TENANT_NOT_FOUND} | {NOT_FOUND}
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
