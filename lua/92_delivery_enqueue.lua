--[[
delivery_enqueue: the deliveries of one notify-stream entry, and its acknowledgement, at
once (a notifier killed before this call reads the entry again; after it, the deliveries
exist).

KEYS[1] notify      {p}:notify        stream
KEYS[2] due         {p}:wh:due        zset
KEYS[3] pending     {p}:wh:pending    zset
KEYS[4..] deliveries                  per delivery: its hash, its webhook's delivery log
ARGV[1] group       the notifier's consumer group
ARGV[2] entry_id    of the notify-stream entry
ARGV[3] now_ms      (ms since the epoch)
ARGV[4] event_id
ARGV[5] type        event type
ARGV[6] body        the webhook body
ARGV[7] tenant_id
ARGV[8] log_max     entries kept in a webhook's delivery log
ARGV[9..] deliveries                  per delivery: its id, its webhook's id
REPLY   {OK, created}                 deliveries created
--]]

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

redis.register_function('delivery_enqueue', delivery_enqueue)
