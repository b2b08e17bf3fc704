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

redis.register_function('token_create', token_create)
