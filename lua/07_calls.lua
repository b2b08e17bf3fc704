--[[
Library: what extend, end_call and void_call share (their KEYS[4..6] / ARGV[5..7] are the
call's three candidate months). Declares month_key and missing_call; registers nothing.
--]]

-- The month hash of the call's month among the caller's candidates, or nil.
local function month_key(KEYS, ARGV, mon)
  for i = 0, 2 do
    if ARGV[5 + i] == mon then return KEYS[4 + i] end
  end
  return nil
end

-- Only on the not-found path: costs nothing to a call that exists.
local function missing_call(k_tenant)
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  return {CALL_NOT_FOUND}
end
