--[[
webhook_put: create or replace a webhook of the tenant (api.md, Notifications).

KEYS[1] tenant            {p}:t:T           tenant hash
KEYS[2] webhooks          {p}:t:T:webhooks  hash
KEYS[3] events            {p}:events        partition stream
KEYS[4] audit             {p}:t:T:audit     list
ARGV[1] tenant_id
ARGV[2] now               (s)
ARGV[3] webhook_id
ARGV[4] record            JSON, secret included
ARGV[5] record_redacted   the same without the secret, for the audit trail
ARGV[6] actor
ARGV[7] webhooks_max      most webhooks a tenant may have
REPLY   {OK, created}     created 1 | 0
ERRORS  TENANT_NOT_FOUND BALANCE_LIMIT  (BALANCE_LIMIT: too many webhooks)
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
