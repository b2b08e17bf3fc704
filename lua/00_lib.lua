#!lua name=callgate
--[[
callgate Redis function library: shared helpers.

The files of lua/ are concatenated in name order into ONE Redis Functions library, one Lua
chunk (this file first: it carries the shebang). Two kinds of file:
  * library files, 00-09: declare the locals that other files use (this file: statuses,
    numbers, money, events, the call record; 02 users; 05 alerts; 06 grants; 07 the
    month candidates of a call) and register nothing;
  * operation files, 10-99: each registers exactly one function and uses only its own
    locals and those of library files (tests/test_redis_contract.py checks both).

Each operation file opens with its header, whose lines are machine-read and compared with
gateway/redis/contract.py, the one declaration of the Python side:
  KEYS[i] name   (then the key's template and role)      one line per key, in order
  ARGV[i] name   (then unit and meaning)                 one line per argument, in order
  KEYS[i..] name / ARGV[i..] name                        a repeated tail
  REPLY   {OK, name, ...}                                the OK reply's fields
  ERRORS  NAME ...                                       the other statuses it answers
Other lines, and indented continuations, are prose.

Conventions of every function:
  * keys arrive through KEYS only; no function builds a key name;
  * ARGV are strings; each is converted once, at the top, with tonumber where numeric;
  * time is integer seconds since the epoch, given by the caller (injectable clock);
  * money is integer micro-units (1e-6) of the tenant's currency; every per-call charge is
    a multiple of 100 micro-units (0.0001), so balances stay exact to four decimals;
  * pools count whole minutes;
  * the first element of every reply is a status code, shared with Python through
    gateway/redis/contract.py (Status):
       0 OK, -1 TENANT_NOT_FOUND, -2 TENANT_SETTINGS_CHANGED, -3 CALL_NOT_FOUND,
      -4 CALL_ENDED, -5 NUMBER_CONFLICT, -6 IDEMPOTENCY_CONFLICT, -7 CURRENCY_LOCKED,
      -8 NOT_FOUND (user / number), -9 BALANCE_LIMIT, -10 MONTH_NEEDED,
      -11 LATE (the caller had given up on the request: nothing done),
      -12 USED_BACKWARDS (extend: used seconds below those already reported)
  * every change of state XADDs one event to the partition stream in the same atomic step.

Lua numbers are IEEE doubles: integers are exact below 2^53 (9e15 micro-units = 9e9 units
of currency), far above any balance or per-call product computed here.
--]]

-- This library's version (gateway/redis/contract.py LIBRARY_VERSION holds the same value):
-- a process refuses to replace a library of a higher version with its own
-- (gateway/redis/store.py load_functions). Raised with every change that the code of an
-- earlier version cannot read or call: the layout of what the functions store, their KEYS
-- and ARGV.
local LIBRARY_VERSION = 3

local OK = 0
local TENANT_NOT_FOUND = -1
local TENANT_SETTINGS_CHANGED = -2
local CALL_NOT_FOUND = -3
local CALL_ENDED = -4
local NUMBER_CONFLICT = -5
local IDEMPOTENCY_CONFLICT = -6
local CURRENCY_LOCKED = -7
local NOT_FOUND = -8
local BALANCE_LIMIT = -9
local MONTH_NEEDED = -10
local LATE = -11

local USED_BACKWARDS = -12

-- The arguments of the call path's functions (authorize, extend, end_call), in their
-- header's order. They come packed: ARGV[1] holds every value, each followed by a NUL byte
-- (gateway/redis/contract.py Function.packed), read with one struct.unpack (format: an 's'
-- per value), because each argument of an FCALL costs Redis more to read than the unpacking
-- (figures: BENCHMARKS.md). A caller whose values hold a NUL, and one of the previous
-- version, sends them as arguments of their own.
--
-- args is the first step of those functions, and sets, once per Lua VM, the pace of its
-- collector, which Redis leaves at Lua's default pause of 200 %: a new cycle each time the
-- heap doubles. The functions' live heap is small (this library and its bounded memos), so
-- at that pace cycles are frequent, and each marks and sweeps every live object again. At
-- 300 % the heap may grow to three times its live size (a few MB) and the collector's
-- share of a call falls by about a third (figures: BENCHMARKS.md). Not settable at load:
-- the library's code sees no globals then.
-- Through pcall: a Redis whose sandbox had no collectgarbage would keep its own pace, and
-- the call would go on.
local GC_PAUSE_PERCENT = 300
local gc_paced = false

local function pace_collector()
  collectgarbage('setpause', GC_PAUSE_PERCENT)
end

local function args(format, ARGV)
  if not gc_paced then
    pcall(pace_collector)
    gc_paced = true
  end
  if #ARGV == 1 then return struct.unpack(format, ARGV[1]) end
  return unpack(ARGV)
end

-- Minutes are 60 s; pools are charged in whole minutes per call (D8).
local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

-- An integer as decimal text, for redis.call arguments and stored fields. redis.call would
-- print a Lua number itself with "%.17g" (a float formatting, dearer than "%d":
-- BENCHMARKS.md), and tostring / '..' / cjson keep only 14 significant digits. The same text Redis
-- printed for every integer below 1e17 (all times, seconds and amounts here: balances stay
-- below 1e14).
--
-- istr and num remember what they converted: the values of the call path recur from call
-- to call (the time of the current second, grant sizes, a tenant's settings, pool sizes,
-- durations), and a table lookup costs a small part of string.format or of tonumber's
-- strtod (figures: BENCHMARKS.md). A value seen once costs one insert more. Each memo is
-- emptied when it reaches MEMO_MAX entries, which bounds its memory (~100 bytes an entry).
--
-- A memo (memo, remember): a table of at most max entries, looked up by the caller as
-- m[key] (the hit is the hot path: a function call or a second index there would cost more
-- than the memo saves); on a miss the caller computes the value and remembers it. Full, it
-- is emptied in place, which bounds its memory. Its count and size are kept under keys of
-- their own (tables, equal to no key of the callers).
local MEMO_COUNT, MEMO_SIZE = {}, {}

local function memo(max)
  return {[MEMO_COUNT] = 0, [MEMO_SIZE] = max}
end

local function remember(m, key, value)
  local count = m[MEMO_COUNT]
  if count >= m[MEMO_SIZE] then
    for k in next, m do
      if k ~= MEMO_COUNT and k ~= MEMO_SIZE then m[k] = nil end
    end
    count = 0
  end
  m[key] = value
  m[MEMO_COUNT] = count + 1
  return value
end

local MEMO_MAX = 4096
local istr_memo = memo(MEMO_MAX)

local function istr(n)
  if n == 0 then return '0' end  -- the most common value, without a lookup
  return istr_memo[n] or remember(istr_memo, n, string.format('%d', n))
end

-- A number from a field or reply that may be missing ('', false, nil: 0). '0', the most
-- common value of the call's counters, needs no lookup.
local num_memo = memo(MEMO_MAX)

local function num(v)
  if v == '0' or v == false or v == nil or v == '' then return 0 end
  return num_memo[v] or remember(num_memo, v, tonumber(v))
end

-- As num, for a value rarely seen twice (a month's running totals, a wallet's balance):
-- converted without the memo, which it would only fill.
local function num_once(v)
  if v == '0' or v == false or v == nil or v == '' then return 0 end
  return tonumber(v)
end

-- True when the caller's deadline (microseconds since the epoch, "" or "0": none) has
-- passed on Redis's clock: the caller has answered without us, so we must change nothing.
-- TIME's two parts are joined as text into microseconds (PAD: the zeros that make its
-- microseconds six digits, by their length), and two texts of as many digits compare as
-- their numbers do: no conversion, which cost as much as TIME itself (figures:
-- BENCHMARKS.md). A deadline of another length is compared as a number: of 13 digits or
-- fewer, it is in milliseconds, as a gateway of the previous version sends it during an
-- upgrade.
local PAD = {'00000', '0000', '000', '00', '0', ''}

local function past_deadline(deadline_us)
  if deadline_us == '' or deadline_us == '0' or deadline_us == nil then return false end
  local t = redis.call('TIME')
  local now = t[1] .. PAD[#t[2]] .. t[2]
  if #now == #deadline_us then return now > deadline_us end
  local deadline = tonumber(deadline_us)
  if #deadline_us <= 13 then deadline = deadline * 1000 end
  return tonumber(now) > deadline
end

-- Billable seconds under increments A/B (D20): 0 unanswered, else max(A, A + ceil((d-A)/B)*B).
local function billable_seconds(d, a, b)
  if d <= 0 then return 0 end
  if d <= a then return a end
  return a + ceil_div(d - a, b) * b
end

-- Credits for d answered seconds at a rate (micro-units per minute), connection fee once
-- per answered call, rounded UP to 100 micro-units (0.0001) per call (D20).
local function credit_cost(d, rate, fee, a, b)
  if d <= 0 then return 0 end
  local exact = fee + ceil_div(rate * billable_seconds(d, a, b), 60)
  return ceil_div(exact, 100) * 100
end

-- Largest L in [0, cap] with credit_cost(L) <= budget (closed form; mirrors
-- gateway.rules.rating.max_affordable_seconds, which is its tested reference).
-- Budgets above 1e14 micro-units are capped: 60 x budget must stay below 2^53, and no
-- grant (cap <= 1 day) at any sane rate needs more.
local BUDGET_CAP = 1e14

local function max_affordable(budget, rate, fee, a, b, cap)
  if cap <= 0 or budget < 0 then return 0 end
  if budget > BUDGET_CAP then budget = BUDGET_CAP end
  if rate == 0 then
    if credit_cost(1, rate, fee, a, b) <= budget then return cap end
    return 0
  end
  -- cost(L) <= budget  <=>  fee + ceil(rate*bill/60) <= floor(budget/100)*100
  --                     <=>  rate*bill <= 60*(floor(budget/100)*100 - fee)
  local room = math.floor(budget / 100) * 100 - fee
  if room < 0 then return 0 end
  local max_bill = math.floor(60 * room / rate)
  if max_bill < a then return 0 end
  local k = math.floor((max_bill - a) / b)
  local max_len = a + k * b
  if max_len > cap then return cap end
  return max_len
end

-- A call's rate (D20) as numbers {rate, fee, a, b}, from its text (c.rr, c.rf, c.ra, c.rb:
-- micro-units per minute, micro-units, seconds, seconds), converted on first use: a call
-- paid from a pool never needs it.
local function rate_of(c)
  local r = c.rate
  if r == nil then
    r = {rate = num(c.rr), fee = num(c.rf), a = num(c.ra), b = num(c.rb)}
    c.rate = r
  end
  return r
end

-- One element of a call's 'grants' JSON array, written out rather than through cjson (a
-- tenth of the cost): source is one of our identifiers (nothing to escape), the others
-- integer text; used_text is nil for the first grant. Keys in cjson's order, so the text is
-- the same as cjson.encode wrote before.
local function grant_json(source, seconds_text, at_text, expires_text, used_text)
  local used = used_text and (',"used_seconds":' .. used_text) or ''
  return '{"at":' .. at_text .. ',"seconds":' .. seconds_text .. ',"source":"' .. source ..
    '","expires_at":' .. expires_text .. used .. '}'
end

local function in_list(list, item)
  -- list is ",A,B," ; item a bare token
  if list == '' or item == '' then return false end
  return string.find(list, ',' .. item .. ',', 1, true) ~= nil
end

local function emit(stream, etype, tenant_id, now, data)
  data.type = etype
  data.tenant = tenant_id
  data.ts = now
  return redis.call('XADD', stream, '*', 'type', etype, 'tenant', tenant_id,
    'data', cjson.encode(data))
end

-- An event whose data the caller wrote as JSON text, type, tenant and ts included: the entry
-- is that one field, 'data' (two fields fewer to write, AOF and read: BENCHMARKS.md). The
-- persisters of this version and of library version 2 read type and tenant in the text
-- (gateway/ledger/base.py); those of earlier versions did not, hence docs/operations.md,
-- "Upgrading".
local function emit_text(stream, data_text)
  return redis.call('XADD', stream, '*', 'data', data_text)
end

-- An admin change: its event on the partition stream and, in the same atomic step, the same
-- record (plus the stream entry id) on the tenant's capped audit list, newest first.
-- data.actor is the id of the token that made the change, never the token.
-- AUDIT_MAX_ENTRIES: gateway/redis/contract.py holds the same value (a test compares them).
local AUDIT_MAX_ENTRIES = 1000

local function audit(k_audit, stream, etype, tenant_id, now, data)
  local id = emit(stream, etype, tenant_id, now, data)
  data.id = id
  redis.call('LPUSH', k_audit, cjson.encode(data))
  redis.call('LTRIM', k_audit, 0, AUDIT_MAX_ENTRIES - 1)
  return id
end

-- The hash fields of pool "CC:PLAN:KIND" (kind: its last part, domestic | international,
-- as every call records it): u, r its used and reserved minutes in a month hash; lic, per
-- its licences and minutes per licence in the pools hash. Made once per pool name and
-- remembered (a memo of MEMO_MAX entries): a tenant's few pools recur on every call, and
-- each name made is a string to intern and collect (figures: BENCHMARKS.md).
local pool_fields_memo = memo(MEMO_MAX)

local function pool_fields(pool, kind)
  local f = pool_fields_memo[pool]
  if f == nil then
    local cc_plan = string.sub(pool, 1, #pool - #kind - 1)
    local per_field = (kind == 'domestic') and 'dmin:' or 'imin:'
    f = remember(pool_fields_memo, pool,
      {u = 'u:' .. pool, r = 'r:' .. pool, lic = 'lic:' .. cc_plan, per = per_field .. cc_plan})
  end
  return f
end

-- Current used and reserved minutes of a pool in one month hash, the reserved field's
-- name, and whether the pool has neither field yet this month.
local function pool_usage(month_key, pool, kind)
  local f = pool_fields(pool, kind)
  local vals = redis.call('HMGET', month_key, f.u, f.r)
  return num_once(vals[1]), num_once(vals[2]), f.r, not vals[1] and not vals[2]
end

-- Capacity in minutes of pool "CC:PLAN:KIND" (D4, D6): licences x minutes per user. kind
-- (domestic | international) is the pool name's last part, as every call records it.
local function pool_capacity(pools_key, pool, kind)
  local f = pool_fields(pool, kind)
  local vals = redis.call('HMGET', pools_key, f.lic, f.per)
  return num(vals[1]) * num(vals[2])
end

-- Adds delta to an integer hash field. A zero delta is skipped: Lua formats -0 as "-0",
-- which HINCRBY rejects.
local function hincr(key, field, delta)
  if delta == 0 then return nil end
  return redis.call('HINCRBY', key, field, istr(delta))
end

-- USER_ACTIVE: a user's count of active calls (the user_active hash) stays at 0 when its
-- last call ends, rather than being deleted: in service most ends take a user from one call
-- to none, and the HDEL was a write of its own at each (figures: BENCHMARKS.md). The hash
-- holds at most one field per user who has called.

-- As hincr, deleting the field at zero so hashes stay small.
local function hincr_or_del(key, field, delta)
  if delta == 0 then return 0 end
  local v = redis.call('HINCRBY', key, field, istr(delta))
  if v == 0 then redis.call('HDEL', key, field) end
  return v
end

-- A closed call (ended, expired, denied or voided) keeps in Redis only what its repeats
-- answer, for the replay window (D31, D32): authorize's first answer, end's bill, and what
-- an end reports of a call not yet ended (month, user, pool, rate prefix). Everything else
-- is in the ledger. The call's key becomes a string (close_call): the values of
-- CLOSED_FIELDS in that order joined by '|' (mirrors gateway/redis/keys.py CLOSED_FIELDS, which
-- names each): st state, d decision, rsn reason, src source, g first grant (s), exp its expiry (s), cls class, dc
-- destination country, dt number type, mon month YYYYMM, uid user, pool, rp rate prefix,
-- dur answered duration (s), bdp / bip billed domestic / international pool minutes, bc
-- billed credits (micro-units), over overrun (s), ended (s).
-- Packed small, so that a closed call costs Redis a fraction of an open one:
--   * the words of CLOSED_WORDS in the fields st, d, rsn, src, cls, dt are one character,
--     their code (CLOSED_CODE; a field of one character is always a code, no word is one);
--   * pool drops its last part when it is the class's kind (pool_kind);
--   * ended is written as seconds after exp;
--   * a cjson array instead when a value holds '|' (the state's code is never '[').
local CLOSED_FIELDS = {'st', 'd', 'rsn', 'src', 'g', 'exp', 'cls', 'dc', 'dt', 'mon', 'uid',
  'pool', 'rp', 'dur', 'bdp', 'bip', 'bc', 'over', 'ended'}
local CLOSED_CODED = {1, 2, 3, 4, 7, 9}  -- positions in CLOSED_FIELDS
-- Mirrors gateway/redis/keys.py CLOSED_WORDS and CODE_ALPHABET: a word's code is the
-- alphabet's character at the word's position. CLOSED_CODE (word -> code) and its inverse
-- CLOSED_WORD are built from the two at load.
local CLOSED_WORDS = {'ended', 'expired', 'denied', 'allow', 'deny', 'free', 'domestic_pool',
  'international_pool', 'credits', 'emergency', 'toll_free', 'inbound_free',
  'no_calling_plan', 'dial_out_policy', 'destination_blocked', 'invalid_destination',
  'pool_exhausted_no_credits', 'insufficient_credits', 'credits_not_allowed',
  'spend_limit_reached', 'concurrency_limit', 'unknown_user', 'service_unavailable',
  'rate_limited', 'domestic', 'international', 'toll_free_inbound', 'inbound', 'fixed_line',
  'mobile', 'fixed_line_or_mobile', 'premium_rate', 'shared_cost', 'voip',
  'personal_number', 'pager', 'uan', 'voicemail', 'unknown', 'invalid'}
local CODE_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
local CLOSED_CODE, CLOSED_WORD = {}, {}
for i = 1, #CLOSED_WORDS do
  local code = CODE_ALPHABET:sub(i, i)  -- (the global string is not reachable at load)
  CLOSED_CODE[CLOSED_WORDS[i]] = code
  CLOSED_WORD[code] = CLOSED_WORDS[i]
end

-- The kind (pool name's last part) of a call of class cls: its own for an outbound call,
-- domestic for an inbound one.
local function pool_kind(cls)
  if cls == 'international' then return 'international' end
  return 'domestic'
end

-- The text of a closed record, given its CLOSED_FIELDS in that order, each text ('' when
-- none), with the kind of its pool after pool: st to rp (the answer and the call) and, once
-- the call is billed (dur not nil), dur to ended_after_exp (the bill). Values rather than
-- a table: end_call, its hottest caller, reads the call into locals (a table of the call's
-- fields costs more than the rest of the closing: BENCHMARKS.md). Written out as one
-- concatenation rather than looped over CLOSED_FIELDS. Only uid and pool come from outside
-- (the API's id grammar has no '|'); with a '|' in them, the cjson way.
local function closed_text(st, d, rsn, src, g, exp, cls, dc, dt, mon, uid, pool, kind, rp,
    dur, bdp, bip, bc, over, ended_after_exp)
  -- "C:P:K" without ":K" when K is the class's kind: second ':' right before K.
  if kind ~= '' and kind == pool_kind(cls) then
    local first = string.find(pool, ':', 1, true)
    if first and string.find(pool, ':', first + 1, true) == #pool - #kind then
      pool = string.sub(pool, 1, -#kind - 2)
    end
  end
  if string.find(uid, '|', 1, true) or string.find(pool, '|', 1, true) then
    local v = {CLOSED_CODE[st] or st, CLOSED_CODE[d] or d, CLOSED_CODE[rsn] or rsn,
      CLOSED_CODE[src] or src, g, exp, CLOSED_CODE[cls] or cls, dc,
      CLOSED_CODE[dt] or dt, mon, uid, pool, rp}
    if dur then
      v[14], v[15], v[16], v[17], v[18], v[19] = dur, bdp, bip, bc, over, ended_after_exp
    end
    return cjson.encode(v)
  end
  local z = (CLOSED_CODE[st] or st) .. '|' .. (CLOSED_CODE[d] or d) .. '|' ..
    (CLOSED_CODE[rsn] or rsn) .. '|' .. (CLOSED_CODE[src] or src) .. '|' .. g .. '|' ..
    exp .. '|' .. (CLOSED_CODE[cls] or cls) .. '|' .. dc .. '|' ..
    (CLOSED_CODE[dt] or dt) .. '|' .. mon .. '|' .. uid .. '|' .. pool .. '|' .. rp
  if dur == nil then return z end
  return z .. '|' .. dur .. '|' .. bdp .. '|' .. bip .. '|' .. bc .. '|' .. over .. '|' ..
    ended_after_exp
end

-- Replaces call k_call by its closed record (closed_text), kept retention seconds (ARGV
-- text): a string key, written over the open call's hash by one SET (the type changes with
-- it).
local function close_call(k_call, text, retention)
  redis.call('SET', k_call, text, 'EX', retention)
end

local function split_part(text, v)
  if string.sub(text, 1, 1) == '[' then
    for _, item in ipairs(cjson.decode(text)) do v[#v + 1] = item end
  else
    for item in string.gmatch(text .. '|', '([^|]*)|') do v[#v + 1] = item end
  end
end

-- s (with its 'z', the closed record's text) given the closed record's fields by name,
-- and those of the open record a closed call has no more, as a call without a grant has.
local function unpack_closed(s)
  local v = {}
  split_part(s.z, v)
  for k = #v + 1, #CLOSED_FIELDS do v[k] = '' end
  for _, k in ipairs(CLOSED_CODED) do
    if #v[k] == 1 then v[k] = CLOSED_WORD[v[k]] end
  end
  local _, colons = string.gsub(v[12], ':', ':')
  if colons == 1 then v[12] = v[12] .. ':' .. pool_kind(v[7]) end
  if v[19] ~= '' then v[19] = istr(tonumber(v[6]) + tonumber(v[19])) end
  for k = 1, #CLOSED_FIELDS do s[CLOSED_FIELDS[k]] = v[k] end
  s.h, s.ps, s.cs, s.pr, s.cr, s.gexp, s.cnt = '0', '0', '0', '0', '0', s.exp, '0'
  s.kind = s.pool ~= '' and pool_kind(s.cls) or ''
  return s
end

-- The closed record of call k_call by field name (unpack_closed). Readers of a call read
-- its hash with redis.pcall and come here when the reply is WRONGTYPE (is_closed_reply):
-- nothing more to pay on the paths of an open call.
local function read_closed(k_call)
  return unpack_closed({z = redis.call('GET', k_call)})
end

-- True when a redis.pcall reply is the error of a command on the closed record's string.
local function is_closed_reply(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- The fields of a call that authorize sets and nothing changes after, in the order they are
-- packed, as one JSON array of strings, into the call hash's field 'i' (mirrors
-- gateway/redis/keys.py CALL_PACKED_FIELDS): what call.allowed carries as 'i', and what a call
-- hash of an older layout holds in 'i'. An open call's hash holds them in 'v' (below).
local CALL_PACKED = {'uid', 'mon', 'cnt', 'pool', 'kind', 'rp', 'rr', 'rf', 'ra',
  'rb', 'dir', 'to', 'from', 't0', 'sa', 'd', 'rsn', 'src', 'g', 'exp', 'cls', 'dc', 'dt', 'free',
  'co', 'ca', 'sl'}

-- s (a call's fields by name) with its packed fields, if any, unpacked into it.
local function unpack_call(s)
  local packed = s.i
  if packed then
    local v = cjson.decode(packed)
    for k = 1, #CALL_PACKED do s[CALL_PACKED[k]] = v[k] end
  end
  return s
end

-- An open call is a hash of one field, 'v': its values, each followed by a NUL byte, first
-- those that change over its life (CALL_COUNTERS: horizon, pool and credit seconds, pool and
-- credit reservations, the current grant's expiry, extensions so far, the attempt that
-- created it, the attempt that confirmed it since ('' none), the used seconds a denied
-- extend reported ('' none)), then CALL_PACKED's, then the grants (JSON, to the end). Both
-- lists mirror gateway/redis/keys.py (CALL_COUNTER_FIELDS, CALL_PACKED_FIELDS). One HGET and
-- two struct.unpack read the call, for a fraction of what a field per value, or a pattern,
-- or cjson cost, and every write of it is one HSET of one field (figures: BENCHMARKS.md).
-- No value holds a NUL: authorize writes this layout only when its text from outside is
-- plain (lua/50_authorize.lua), else the older one below. The ledger keeps the record by
-- field name, as the events carry it.
local CALL_COUNTERS = {'h', 'ps', 'cs', 'pr', 'cr', 'gexp', 'ext', 'n', 'cn', 'ru'}
local COUNTER_VALUES, PACKED_VALUES = ('s'):rep(#CALL_COUNTERS), ('s'):rep(#CALL_PACKED)

-- The counters' part of 'v' (the packed fields and the grants follow it).
local function counters_text(h, ps, cs, pr, cr, gexp, ext, n, cn, ru)
  return h .. '\0' .. ps .. '\0' .. cs .. '\0' .. pr .. '\0' .. cr .. '\0' .. gexp .. '\0' ..
    ext .. '\0' .. n .. '\0' .. cn .. '\0' .. ru .. '\0'
end

-- The call at k_call by field name ('' cn and ru read as nil); its closed record once
-- closed (read_closed); nil if it does not exist. 'v', 'at' and 'grants_at' are kept: the
-- packed fields are string.sub(v, at, grants_at - 1), which its writers write back as they
-- are, and the grants follow (call_grants, read only by those who need them). A hash
-- of an older layout (every value its own field, or 'i', the packed fields as JSON, beside
-- the others: such calls are in Redis when a new library is loaded, and authorize writes
-- one for text that is not plain) is read whole, and marked 'legacy': its writers keep its
-- layout.
local function load_call(k_call)
  local v = redis.pcall('HGET', k_call, 'v')
  if is_closed_reply(v) then return read_closed(k_call) end
  if not v then
    local flat = redis.call('HGETALL', k_call)
    if #flat == 0 then return nil end
    -- Sized by naming the fields (a hint only): a table grown key by key from empty is
    -- rehashed six times on the way to 40 keys.
    local s = {st = nil, i = nil, grants = nil, ru = nil, cn = nil, h = nil, ps = nil,
      cs = nil, pr = nil, cr = nil, gexp = nil, ext = nil, n = nil, dir = nil, uid = nil,
      to = nil, from = nil, mon = nil, t0 = nil, sa = nil, d = nil, rsn = nil, src = nil,
      g = nil, exp = nil, cls = nil, dc = nil, dt = nil, free = nil, cnt = nil, pool = nil,
      kind = nil, co = nil, ca = nil, sl = nil, rp = nil, rr = nil, rf = nil, ra = nil,
      rb = nil, dur = nil, bdp = nil, bip = nil, bc = nil, over = nil, ended_after_exp = nil,
      legacy = true}
    for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
    return unpack_call(s)
  end
  local h, ps, cs, pr, cr, gexp, ext, n, cn, ru, at = struct.unpack(COUNTER_VALUES, v)
  local uid, mon, cnt, pool, kind, rp, rr, rf, ra, rb, dir, to, from, t0, sa, d, rsn, src, g,
    exp, cls, dc, dt, free, co, ca, sl, grants_at = struct.unpack(PACKED_VALUES, v, at)
  -- More than 32 fields: the table has room for 64, and for what its users add (end_call's
  -- bill, extend's paying state) without growing.
  return {st = 'active', v = v, at = at, grants_at = grants_at,
    cn = cn ~= '' and cn or nil, ru = ru ~= '' and ru or nil,
    h = h, ps = ps, cs = cs, pr = pr, cr = cr, gexp = gexp, ext = ext, n = n, uid = uid,
    mon = mon, cnt = cnt, pool = pool, kind = kind, rp = rp, rr = rr, rf = rf, ra = ra, rb = rb,
    dir = dir, to = to, from = from, t0 = t0, sa = sa, d = d, rsn = rsn, src = src, g = g,
    exp = exp, cls = cls, dc = dc, dt = dt, free = free, co = co, ca = ca, sl = sl}
end

-- The grants of call s (as load_call read it), JSON text.
local function call_grants(s)
  return s.grants or string.sub(s.v, s.grants_at)
end

-- Writes call s (as load_call read it) with its counters as given and grants: its one field,
-- or the older layout's fields for a hash of that layout.
local function save_call(k_call, s, h, ps, cs, pr, cr, gexp, ext, cn, ru, grants)
  if s.legacy then
    redis.call('HSET', k_call, 'h', h, 'ps', ps, 'cs', cs, 'pr', pr, 'cr', cr, 'gexp', gexp,
      'ext', ext, 'grants', grants)
    if cn then redis.call('HSET', k_call, 'cn', cn) end
    if ru then redis.call('HSET', k_call, 'ru', ru) end
    return
  end
  redis.call('HSET', k_call, 'v', counters_text(h, ps, cs, pr, cr, gexp, ext, s.n, cn or '',
    ru or '') .. string.sub(s.v, s.at, s.grants_at - 1) .. grants)
end

-- How long a month hash outlives its first write: long after its month ends (the spec's
-- "expires after the month"), so a write need not renew it. 400 days, as text: an EXPIRE
-- argument (string.format is not reachable at load time). gateway/redis/contract.py holds
-- the same value (a test compares them).
local MONTH_TTL_SECONDS = '34560000'
