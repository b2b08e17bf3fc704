--[[
pools_get: a read-only view, a consistent snapshot in one round trip (flag no-writes: runs
on replicas).

KEYS[1] tenant      {p}:t:T          tenant hash
KEYS[2] pools       {p}:t:T:pools    hash
KEYS[3] month       {p}:t:T:m:YYYYMM hash
REPLY   {OK, pools, month}           each hash flat (field, value, ...)
ERRORS  TENANT_NOT_FOUND
--]]
local function pools_get(KEYS, ARGV)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {TENANT_NOT_FOUND} end
  return {OK, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
end

redis.register_function{function_name = 'pools_get', callback = pools_get,
  flags = {'no-writes'}}
