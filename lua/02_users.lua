--[[
Library: what user_put and user_delete share. Declares release_user; registers nothing.
--]]

-- Give back what a user record held: its licence (one fewer in its (country, plan) pool
-- capacity, D4, D6) and its inbound numbers.
local function release_user(k_users, k_pools, k_numbers, uid, old)
  if old.dmin and old.dmin > 0 or old.imin and old.imin > 0 then
    hincr_or_del(k_pools, 'lic:' .. old.country .. ':' .. old.plan, -1)
  end
  for _, n in ipairs(old.numbers or {}) do
    if redis.call('HGET', k_numbers, n) == uid then redis.call('HDEL', k_numbers, n) end
  end
end
