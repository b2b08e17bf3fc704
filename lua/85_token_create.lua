--[[
token_create: an API token made at run time (api.md, "Tokens").

A token is known here only by the SHA-256 of its secret, inside the JSON record that the
gateway builds and validates. Every change bumps the version counter in the same atomic
step, so a worker that sees a new version reloads a table that already holds the change.
The new version is also PUBLISHed on a channel named like the version key, where every
worker listens: a revocation reaches them at once, not at their next poll.

KEYS[1] tokens      {tokens}:all      hash tok_… -> JSON record
KEYS[2] version     {tokens}:version  counter, and the channel its new value is published on
KEYS[3] events      {tokens}:events   stream (token.created, with the record: its SHA-256,
                                      never the token)
ARGV[1] token_id    tok_…
ARGV[2] record      JSON
ARGV[3] now         (s)
REPLY   {OK, version}
ERRORS  IDEMPOTENCY_CONFLICT          the id is taken (the caller draws another)
--]]
local function token_create(KEYS, ARGV)
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return {IDEMPOTENCY_CONFLICT}
  end
  emit(KEYS[3], 'token.created', '', tonumber(ARGV[3]), {token_id = ARGV[1], record = ARGV[2]})
  local version = redis.call('INCR', KEYS[2])
  redis.pcall('PUBLISH', KEYS[2], version)  -- pcall: as in deck_put (an ACL without the channel)
  return {OK, version}
end

redis.register_function('token_create', token_create)
