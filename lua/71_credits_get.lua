--[[
credits_get: a read-only view, a consistent snapshot in one round trip (flag no-writes:
runs on replicas).

KEYS[1] tenant      {p}:t:T          tenant hash
REPLY   {OK, currency, balance_micro, reserved_micro}
ERRORS  TENANT_NOT_FOUND
--]]

local function credits_get(KEYS, ARGV)
  local t = redis.call('HMGET', KEYS[1], 'cur', 'bal', 'res')
  if not t[1] then return {TENANT_NOT_FOUND} end
  return {OK, t[1], t[2], t[3]}
end

redis.register_function{function_name = 'credits_get', callback = credits_get,
  flags = {'no-writes'}}
