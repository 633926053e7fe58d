-- deduct.lua: the one place stock is taken. Runs inside Redis (EVALSHA), atomically, O(1).
--
-- The keyspace (key names, their order here, the events index, the order id layout) is defined
-- once, in host/common/keyspace.h: change it there and here together.
-- Keys of one event share the hash tag {event}, so Redis Cluster can hold them on one slot:
--   KEYS[1] {E}:meta     hash  stock, sold, limit, gen, seq   (written by PUT /admin/events/E)
--   KEYS[2] {E}:users    hash  user -> units bought
--   KEYS[3] {E}:orders   hash  order_id -> order record (JSON, the built-in payload)
--   KEYS[4] {E}:uorders  hash  user -> order ids, comma separated
--   KEYS[5] {E}:pending  hash  order_id -> ms; deleted once JetStream acknowledged the order,
--                              so what is left is what reconciliation must republish
-- ARGV: event, user, qty, host_id, deadline_ms
--   deadline_ms: the host's clock when it stops waiting for this reply (it then answers 503
--   "nothing deducted"). A script that only gets to run later, e.g. after Redis was paused,
--   refuses, so that 503 stays true. Host and Redis clocks must agree to well within the
--   host's --redis-timeout-ms (NTP does); 0 disables the check.
--
-- Replies (the host maps them to HTTP):
--   {"ok", order_id, remaining, gen, created_ms}
--   {"sold_out", remaining, gen}        nothing left (remaining 0)
--   {"insufficient", remaining, gen}    fewer left than qty
--   {"limit_reached", held, gen}        the buyer would exceed per_user_limit
--   {"unknown_event"}
--   {"expired"}                         the host gave up waiting before this ran: no change
--
-- The order id is minted here, once: "<13-digit ms>-<10-digit seq>-<event>". It increases with
-- time (Redis's clock, the same for every host), so SQLite appends; it is unique because seq
-- only grows (a reset keeps it); and it names its event, so GET /v1/orders/{id} finds it.
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[5]) or 0
if deadline > 0 and ms > deadline then
  return {'expired'}
end

local meta = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'limit', 'gen')
if not meta[1] then
  return {'unknown_event'}
end
local stock, sold, limit, gen = tonumber(meta[1]), tonumber(meta[2]) or 0,
  tonumber(meta[3]) or 1, meta[4] or '0'
local event, user, qty, host = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not qty or qty < 1 then
  return redis.error_reply('ERR snatch: bad qty')
end

local remaining = stock - sold
if remaining <= 0 then
  return {'sold_out', 0, gen}
end
if qty > remaining then
  return {'insufficient', remaining, gen}
end
local held = tonumber(redis.call('HGET', KEYS[2], user)) or 0
if held + qty > limit then
  return {'limit_reached', held, gen}
end

redis.call('HINCRBY', KEYS[1], 'sold', qty)
redis.call('HINCRBY', KEYS[2], user, qty)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local id = string.format('%013d-%010d-%s', ms, seq, event)
redis.call('HSET', KEYS[3], id, cjson.encode({
  order_id = id, event = event, user = user, qty = qty, host = host, created_at = ms }))
local prev = redis.call('HGET', KEYS[4], user)
redis.call('HSET', KEYS[4], user, prev and (prev .. ',' .. id) or id)
redis.call('HSET', KEYS[5], id, ms)
return {'ok', id, remaining - qty, gen, ms}
