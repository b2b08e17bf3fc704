--[[
API tokens made at run time (api.md, "Tokens"): create, revoke, and the coarse last use.

A token is known here only by the SHA-256 of its secret, inside the JSON record that the
gateway builds and validates. Every change bumps the version counter in the same atomic
step, so a worker that sees a new version reloads a table that already holds the change.

token_create
  KEYS[1] tokens hash     {tokens}:all (tok_… -> JSON record)
  KEYS[2] version         {tokens}:version
  KEYS[3] events stream   {tokens}:events (token.created, with the record: its SHA-256,
                          never the token)
  ARGV[1] token id (tok_…)
  ARGV[2] the record, JSON
  ARGV[3] now (seconds)
  Returns {OK, version}, or {IDEMPOTENCY_CONFLICT} if the id is taken (the caller draws
  another).
--]]
local function token_create(KEYS, ARGV)
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return {IDEMPOTENCY_CONFLICT}
  end
  emit(KEYS[3], 'token.created', '', tonumber(ARGV[3]), {token_id = ARGV[1], record = ARGV[2]})
  return {OK, redis.call('INCR', KEYS[2])}
end

--[[
token_revoke
  KEYS[1] tokens hash     {tokens}:all
  KEYS[2] version         {tokens}:version
  KEYS[3] last-use hash   {tokens}:used
  KEYS[4] events stream   {tokens}:events (token.revoked)
  ARGV[1] token id
  ARGV[3] now (seconds)   ARGV[4] actor: id of the token that revoked it
  ARGV[2] tenant id, or '' for any token (operator). With a tenant, only a switch token
          whose tenants are exactly that one tenant is revoked; any other is NOT_FOUND,
          as if it did not exist.
  Returns {OK, version} or {NOT_FOUND}.
--]]
local function token_revoke(KEYS, ARGV)
  local raw = redis.call('HGET', KEYS[1], ARGV[1])
  if not raw then return {NOT_FOUND} end
  if ARGV[2] ~= '' then
    local rec = cjson.decode(raw)
    local t = rec.tenants
    if rec.role ~= 'switch' or type(t) ~= 'table' or #t ~= 1 or t[1] ~= ARGV[2] then
      return {NOT_FOUND}
    end
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  emit(KEYS[4], 'token.revoked', '', tonumber(ARGV[3]), {token_id = ARGV[1], actor = ARGV[4]})
  return {OK, redis.call('INCR', KEYS[2])}
end

--[[
tokens_seen: a worker's batch of the token ids it authenticated since its last batch.
  KEYS[1] tokens hash     {tokens}:all
  KEYS[2] last-use hash   {tokens}:used
  ARGV[1] now (seconds, the worker's clock)
  ARGV[2..] token ids
  Sets last use to now for each id still in the table whose recorded use is older (a worker
  with a slower clock never moves it back; a revoked token gets no entry back).
  Returns {OK, ids updated}.
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

redis.register_function('token_create', token_create)
redis.register_function('token_revoke', token_revoke)
redis.register_function('tokens_seen', tokens_seen)
