--[[
Library: what extend, end_call and void_call share (their KEYS[4..6] / ARGV[5..7] are the
call's three candidate months). Declares month_key and missing_call; registers nothing.
--]]

-- The month hash of the call's month mon among the caller's candidates (m1, m2, m3, the
-- months of KEYS[4..6]), or nil.
local function month_key(KEYS, m1, m2, m3, mon)
  if mon == m1 then return KEYS[4] end
  if mon == m2 then return KEYS[5] end
  if mon == m3 then return KEYS[6] end
  return nil
end

-- Only on the not-found path: costs nothing to a call that exists.
local function missing_call(k_tenant)
  if redis.call('EXISTS', k_tenant) == 0 then return {TENANT_NOT_FOUND} end
  return {CALL_NOT_FOUND}
end
