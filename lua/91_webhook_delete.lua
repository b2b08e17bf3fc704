--[[
webhook_delete: remove a webhook of the tenant and its delivery log.

KEYS[1] tenant        {p}:t:T             tenant hash
KEYS[2] webhooks      {p}:t:T:webhooks    hash
KEYS[3] events        {p}:events          partition stream
KEYS[4] audit         {p}:t:T:audit       list
KEYS[5] delivery_log  {p}:t:T:wh:W:log    list
ARGV[1] tenant_id
ARGV[2] now           (s)
ARGV[3] webhook_id
ARGV[4] actor
REPLY   {OK}
ERRORS  TENANT_NOT_FOUND NOT_FOUND
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
