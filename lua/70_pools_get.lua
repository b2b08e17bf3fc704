--[[
Read-only views, consistent snapshots in one round trip (flag no-writes: runs on replicas).

pools_get
KEYS[1] tenant hash {p}:t:T   KEYS[2] pools hash {p}:t:T:pools   KEYS[3] month hash
Returns {OK, pools hash flat, month hash flat} | {TENANT_NOT_FOUND}

credits_get
KEYS[1] tenant hash
Returns {OK, currency, balance micro, reserved micro} | {TENANT_NOT_FOUND}
--]]
local function pools_get(KEYS, ARGV)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {TENANT_NOT_FOUND} end
  return {OK, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
end

redis.register_function{function_name = 'pools_get', callback = pools_get,
  flags = {'no-writes'}}
