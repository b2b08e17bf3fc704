--[[
Webhooks (api.md, Notifications): their records, and the notifier's deliveries.

webhook_put
KEYS[1] tenant hash  KEYS[2] webhooks hash {p}:t:T:webhooks  KEYS[3] events  KEYS[4] audit
ARGV[1] tenant id  ARGV[2] now (s)  ARGV[3] webhook id  ARGV[4] record JSON (secret
included)  ARGV[5] the same without the secret, for the audit trail  ARGV[6] actor
ARGV[7] most webhooks a tenant may have
Returns {OK, created 1|0} | {TENANT_NOT_FOUND} | {BALANCE_LIMIT} (too many webhooks)

webhook_delete
KEYS as webhook_put, KEYS[5] delivery log of the webhook
ARGV[1] tenant id  ARGV[2] now  ARGV[3] webhook id  ARGV[4] actor
Returns {OK} | {TENANT_NOT_FOUND} | {NOT_FOUND}

delivery_enqueue: the deliveries of one notify-stream entry, and its acknowledgement, at once
(a notifier killed before this call reads the entry again; after it, the deliveries exist).
KEYS[1] notify stream  KEYS[2] due zset {p}:wh:due  KEYS[3] pending zset {p}:wh:pending
KEYS[4..] per delivery: its hash, its webhook's delivery log
ARGV[1] group  ARGV[2] entry id  ARGV[3] now (ms)  ARGV[4] event id  ARGV[5] type
ARGV[6] body  ARGV[7] tenant id  ARGV[8] log cap  ARGV[9..] per delivery: id, webhook id
Returns {OK, deliveries created}

delivery_result: one attempt's outcome.
KEYS[1] due zset  KEYS[2] pending zset  KEYS[3] delivery hash
ARGV[1] delivery id  ARGV[2] state pending|delivered|failed  ARGV[3] attempts
ARGV[4] last status ("" none)  ARGV[5] next attempt (ms; pending only)
ARGV[6] seconds a settled delivery's record is kept
Returns {OK}
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

local function webhook_delete(KEYS, ARGV)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {TENANT_NOT_FOUND} end
  if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return {NOT_FOUND} end
  redis.call('DEL', KEYS[5])
  audit(KEYS[4], KEYS[3], 'webhook.deleted', ARGV[1], tonumber(ARGV[2]),
    {webhook_id = ARGV[3], actor = ARGV[4]})
  return {OK}
end

local function delivery_enqueue(KEYS, ARGV)
  local now_ms = ARGV[3]
  local made = 0
  for i = 4, #KEYS, 2 do
    local j = 9 + (i - 4)
    local id = ARGV[j]
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('HSET', KEYS[i], 'tenant', ARGV[7], 'webhook', ARGV[j + 1], 'event_id', ARGV[4],
        'type', ARGV[5], 'body', ARGV[6], 'attempts', '0', 'state', 'pending',
        'created', now_ms, 'next', now_ms)
      redis.call('ZADD', KEYS[2], now_ms, id)
      redis.call('ZADD', KEYS[3], now_ms, id)
      redis.call('LPUSH', KEYS[i + 1], id)
      redis.call('LTRIM', KEYS[i + 1], 0, tonumber(ARGV[8]) - 1)
      made = made + 1
    end
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  return {OK, made}
end

local function delivery_result(KEYS, ARGV)
  local state = ARGV[2]
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {OK}
  end
  redis.call('HSET', KEYS[3], 'state', state, 'attempts', ARGV[3], 'last_status', ARGV[4],
    'next', state == 'pending' and ARGV[5] or '')
  if state == 'pending' then
    redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  else
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('EXPIRE', KEYS[3], ARGV[6])
  end
  return {OK}
end

redis.register_function('webhook_put', webhook_put)
redis.register_function('webhook_delete', webhook_delete)
redis.register_function('delivery_enqueue', delivery_enqueue)
redis.register_function('delivery_result', delivery_result)
