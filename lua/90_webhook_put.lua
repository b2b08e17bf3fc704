--[[
Webhooks (api.md, Notifications): their records, and the notifier's deliveries.

webhook_put
KEYS[1] tenant hash  KEYS[2] webhooks hash {p}:t:T:webhooks  KEYS[3] events  KEYS[4] audit
ARGV[1] tenant id  ARGV[2] now (s)  ARGV[3] webhook id  ARGV[4] record JSON (secret
included)  ARGV[5] the same without the secret, for the audit trail  ARGV[6] actor
ARGV[7] most webhooks a tenant may have
Returns {OK, created 1|0} | {TENANT_NOT_FOUND} | {BALANCE_LIMIT} (too many webhooks)

--]]

local function webhook_put(KEYS, ARGV)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {TENANT_NOT_FOUND} end
  local created = redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0
  if created and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[7]) then return {BALANCE_LIMIT} end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  audit(KEYS[4], KEYS[3], created and 'webhook.created' or 'webhook.updated', ARGV[1],
    tonumber(ARGV[2]), {webhook_id = ARGV[3], webhook = ARGV[5], actor = ARGV[6]})
  return {OK, created and 1 or 0}
end

redis.register_function('webhook_put', webhook_put)
