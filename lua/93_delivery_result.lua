--[[
delivery_result: one delivery attempt's outcome.

KEYS[1] due                 {p}:wh:due      zset
KEYS[2] pending             {p}:wh:pending  zset
KEYS[3] delivery            {p}:wh:d:T/W/E  hash
ARGV[1] delivery_id
ARGV[2] state               pending | delivered | failed
ARGV[3] attempts
ARGV[4] last_status         HTTP status ("": none)
ARGV[5] next_ms             next attempt (ms since the epoch; pending only)
ARGV[6] retention_seconds   how long a settled delivery's record is kept (s)
REPLY   {OK}
--]]

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

redis.register_function('delivery_result', delivery_result)
