--[[

webhook_delete
KEYS as webhook_put, KEYS[5] delivery log of the webhook
ARGV[1] tenant id  ARGV[2] now  ARGV[3] webhook id  ARGV[4] actor
Returns {OK} | {TENANT_NOT_FOUND} | {NOT_FOUND}

--]]

local function webhook_delete(KEYS, ARGV)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {TENANT_NOT_FOUND} end
  if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return {NOT_FOUND} end
  redis.call('DEL', KEYS[5])
  audit(KEYS[4], KEYS[3], 'webhook.deleted', ARGV[1], tonumber(ARGV[2]),
    {webhook_id = ARGV[3], actor = ARGV[4]})
  return {OK}
end

redis.register_function('webhook_delete', webhook_delete)
