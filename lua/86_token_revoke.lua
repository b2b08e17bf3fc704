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

redis.register_function('token_revoke', token_revoke)
