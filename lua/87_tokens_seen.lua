--[[
tokens_seen: a worker's batch of the token ids it authenticated since its last batch. Sets
last use to now for each id still in the table whose recorded use is older (a worker with a
slower clock never moves it back; a revoked token gets no entry back).

KEYS[1] tokens      {tokens}:all      hash
KEYS[2] used        {tokens}:used     last-use hash
ARGV[1] now         (s, the worker's clock)
ARGV[2..] token_ids
REPLY   {OK, updated}                 ids whose last use moved
--]]
local function tokens_seen(KEYS, ARGV)
  local now = tonumber(ARGV[1])
  local updated = 0
  for i = 2, #ARGV do
    local id = ARGV[i]
    if redis.call('HEXISTS', KEYS[1], id) == 1 then
      local last = tonumber(redis.call('HGET', KEYS[2], id) or '0') or 0
      if last < now then
        redis.call('HSET', KEYS[2], id, istr(now))
        updated = updated + 1
      end
    end
  end
  return {OK, updated}
end

redis.register_function('tokens_seen', tokens_seen)
