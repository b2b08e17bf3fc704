--[[

delivery_result: one attempt's outcome.
KEYS[1] due zset  KEYS[2] pending zset  KEYS[3] delivery hash
ARGV[1] delivery id  ARGV[2] state pending|delivered|failed  ARGV[3] attempts
ARGV[4] last status ("" none)  ARGV[5] next attempt (ms; pending only)
ARGV[6] seconds a settled delivery's record is kept
Returns {OK}
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
