local function release_user(k_users, k_pools, k_numbers, uid, old)
  if old.dmin and old.dmin > 0 or old.imin and old.imin > 0 then
    hincr_or_del(k_pools, 'lic:' .. old.country .. ':' .. old.plan, -1)
  end
  for _, n in ipairs(old.numbers or {}) do
    if redis.call('HGET', k_numbers, n) == uid then redis.call('HDEL', k_numbers, n) end
  end
end
