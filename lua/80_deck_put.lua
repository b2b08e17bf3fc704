--[[
deck_put: replace the rate deck of one currency (PUT /v1/rate-decks/{currency}).

The gateway has parsed and validated the whole CSV before calling: a deck reaches Redis
only whole and valid. Storing it, bumping the version the workers read and recording the
change happen in this one atomic step, so no worker can see a new version without its deck,
nor a deck change without its event. The new version is also PUBLISHed on a channel named
like the version key: the workers listen there and reload at once instead of polling.

KEYS[1] deck        {decks}:deck:CUR  string: the CSV as uploaded
KEYS[2] version     {decks}:version   counter, one for every currency; also the channel
                                      its new value is published on
KEYS[3] events      {decks}:events    stream
KEYS[4] versions    {decks}:versions  hash currency -> version of its last upload, so a
                                      worker re-parses only the decks that changed
KEYS[5] rows        {decks}:rows:CUR  string: the same deck as JSON rows (workers load it
                                      without parsing the CSV again)
ARGV[1] currency    ISO 4217
ARGV[2] csv         the deck, CSV text
ARGV[3] rows        rows in the deck
ARGV[4] now         (s)
ARGV[5] actor       id of the token that made the change (audit trail)
ARGV[6] rows_json   the deck as JSON rows
REPLY   {OK, version}                 the counter after this upload
--]]
local function deck_put(KEYS, ARGV)
  local k_deck, k_version, k_events, k_versions = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local currency, csv, rows, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local actor = ARGV[5]
  redis.call('SET', k_deck, csv)
  redis.call('SET', KEYS[5], ARGV[6])
  local version = redis.call('INCR', k_version)
  redis.call('HSET', k_versions, currency, version)
  -- pcall: a Redis user without this channel (ACL) must not fail the upload; the workers'
  -- recheck then finds it
  redis.pcall('PUBLISH', k_version, version)
  emit(k_events, 'deck.replaced', '', now,
    {currency = currency, rows = rows, bytes = #csv, version = version, actor = actor,
     csv = csv})  -- the deck itself, so that `callgate rebuild` can restore it
  return {OK, version}
end

redis.register_function('deck_put', deck_put)
