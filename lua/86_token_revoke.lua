--[[
token_revoke: delete a run-time API token.

KEYS[1] tokens      {tokens}:all      hash
KEYS[2] version     {tokens}:version  counter, and the channel its new value is published on
KEYS[3] used        {tokens}:used     last-use hash
KEYS[4] events      {tokens}:events   stream (token.revoked)
ARGV[1] token_id
ARGV[2] tenant_id   or "" for any token (operator). With a tenant, only a switch token whose
                    tenants are exactly that one tenant is revoked; any other is NOT_FOUND,
                    as if it did not exist.
ARGV[3] now         (s)
ARGV[4] actor       id of the token that revoked it
REPLY   {OK, version}
ERRORS  NOT_FOUND
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
  local version = redis.call('INCR', KEYS[2])
  redis.pcall('PUBLISH', KEYS[2], version)  -- announced as token_create does
  return {OK, version}
end

redis.register_function('token_revoke', token_revoke)
