--[[
tenant_put: create or update a tenant's settings (PUT /v1/tenants/{t}).

KEYS[1] tenant                      {p}:t:T        tenant hash
KEYS[2] events                      {p}:events     partition stream
KEYS[3] audit                       {p}:t:T:audit  the event, newest first, capped
ARGV[1] tenant_id
ARGV[2] now                         (s)
ARGV[3] name
ARGV[4] currency                    ISO 4217
ARGV[5] timezone                    IANA
ARGV[6] charge_inbound_calls        "1" | "0"
ARGV[7] max_concurrent_calls        PSTN calls of the tenant ("": no cap)
ARGV[8] actor                       id of the token that made the change (audit trail)
ARGV[9] authorizations_per_second   of the tenant ("": the deployment's default, which
                                    authorize receives)
REPLY   {OK, created}               created 1 | 0
ERRORS  CURRENCY_LOCKED             the currency would change while the wallet holds or
                                    reserves credits (money never silently changes currency)
--]]
local function tenant_put(KEYS, ARGV)
  local k_tenant, k_events, k_audit = KEYS[1], KEYS[2], KEYS[3]
  local tid, now = ARGV[1], tonumber(ARGV[2])
  local name, cur, tz, chg_in, maxc = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local actor, rl = ARGV[8], ARGV[9] or ''

  local old = redis.call('HMGET', k_tenant, 'cur', 'bal', 'res', 'ver')
  local created = old[1] == false
  if not created and old[1] ~= cur and (num(old[2]) ~= 0 or num(old[3]) ~= 0) then
    return {CURRENCY_LOCKED}
  end
  if created then
    redis.call('HSET', k_tenant, 'bal', 0, 'res', 0, 'act', 0, 'created', now)
  end
  redis.call('HSET', k_tenant, 'name', name, 'cur', cur, 'tz', tz, 'chg_in', chg_in,
    'maxc', maxc, 'rl', rl, 'updated', now, 'ver', num(old[4]) + 1)
  audit(k_audit, k_events, created and 'tenant.created' or 'tenant.updated', tid, now,
    {name = name, currency = cur, timezone = tz, charge_inbound_calls = chg_in == '1',
     max_concurrent_calls = maxc, authorizations_per_second = rl, actor = actor})
  return {OK, created and 1 or 0}
end

redis.register_function('tenant_put', tenant_put)
