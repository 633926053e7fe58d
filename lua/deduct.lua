-- deduct.lua: the one place stock is taken. Runs inside Redis (EVALSHA), atomically, O(K) for
-- a batch of K buyers (a single buyer is a batch of one).
--
-- The keyspace (key names, their order here, the events index, the order id layout) is defined
-- once, in host/common/keyspace.h: change it there and here together.
-- Keys of one event share the hash tag {event}, so Redis Cluster can hold them on one slot:
--   KEYS[1] {E}:meta     hash  stock, sold, limit, gen, seq, paused, sold_before
--                              (written by PUT/PATCH /admin/events/E and .../pause|resume),
--                              owner, base                    (written by lua/repair.lua)
--   KEYS[2] {E}:users    hash  user -> units bought
--   KEYS[3] {E}:orders   hash  order_id -> order record (JSON, the built-in payload)
--   KEYS[4] {E}:uorders  hash  user -> order ids, comma separated
--   KEYS[5] {E}:pending  hash  order_id -> ms; deleted once JetStream acknowledged the order,
--                              so what is left is what reconciliation must republish
-- ARGV: event, host_id, deadline_ms, n, then n times (user, qty), then any number of order ids
--   of this event that JetStream acknowledged, deleted from KEYS[5] (riding on a batch costs no
--   round trip of its own; they are deleted whatever the buyers' outcome).
--   deadline_ms: the host's clock when it stops waiting for this reply (it then answers 503
--   "nothing deducted"). A script that only gets to run later, e.g. after Redis was paused,
--   refuses, so that 503 stays true. Host and Redis clocks must agree to well within the
--   host's --redis-timeout-ms (NTP does); 0 disables the check.
--
-- Reply: an array of n replies, one per buyer in ARGV order. Buyers are served in that order,
-- each checked against what the earlier ones left (the same user twice sees their first count):
--   {"ok", order_id, remaining, gen, created_ms}
--   {"sold_out", remaining, gen}        nothing left (remaining 0)
--   {"insufficient", remaining, gen}    fewer left than qty
--   {"limit_reached", held, gen}        the buyer would exceed per_user_limit
--   {"unknown_event"}                   (then for every buyer)
--   {"repairing"}                       this node is not the event's owner: it may miss orders
--                                       that were persisted (a failover lost writes) until
--                                       lua/repair.lua restores them; no change (every buyer)
--   {"paused", gen}                     the sale is paused (admin): no change (then for every
--                                       buyer)
--   {"expired"}                         the host gave up waiting before this ran: no change
--                                       (then for every buyer)
-- A malformed batch (bad n or qty) is an error reply and changes nothing.
--
-- The order id is minted here, once: "<13-digit ms>-<10-digit seq>-<event>". It increases with
-- time (Redis's clock, the same for every host), so SQLite appends; it is unique because seq
-- only grows (a reset keeps it); and it names its event, so GET /v1/orders/{id} finds it.
local event, host, n = ARGV[1], ARGV[2], tonumber(ARGV[4])
if not n or n < 1 or #ARGV < 4 + 2 * n then
  return redis.error_reply('ERR snatch: bad batch')
end
-- Numbers are kept as the strings they arrived as where they go back to Redis or into JSON:
-- formatting a Lua number (a double) costs more than the rest of a buyer's Lua.
local qtys = {}
for i = 1, n do
  local q = ARGV[4 + 2 * i]
  if not string.find(q, '^[1-9]%d*$') then
    return redis.error_reply('ERR snatch: bad qty')
  end
  qtys[i] = tonumber(q)
end
if #ARGV > 4 + 2 * n then
  redis.call('HDEL', KEYS[5], unpack(ARGV, 5 + 2 * n))
end

local function all(reply)
  local out = {}
  for i = 1, n do out[i] = reply end
  return out
end

local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[3]) or 0
if deadline > 0 and ms > deadline then
  return all({'expired'})
end

local meta = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'limit', 'gen', 'seq', 'owner', 'paused')
if not meta[1] then
  return all({'unknown_event'})
end
-- Sell only on the node that last verified the event (repair.lua, whose identity rule this is):
-- on a cluster always (an event without an owner is verified first), on a standalone server
-- once a repair claimed the event (otherwise nothing changes there).
local owner = meta[6]
if string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) then
  if owner ~= redis.call('CLUSTER', 'MYID') then
    return all({'repairing'})
  end
elseif owner and owner ~= string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') then
  return all({'repairing'})
end
-- Paused by POST /admin/events/E/pause: decided here, so every host agrees at once.
if meta[7] == '1' then
  return all({'paused', meta[4] or '0'})
end
local stock, sold, limit, gen = tonumber(meta[1]), tonumber(meta[2]) or 0,
  tonumber(meta[3]) or 1, meta[4] or '0'
local seq0 = tonumber(meta[5]) or 0

-- Redis work per batch, not per buyer: one HMGET of the buyers' counts, one of their order
-- lists, one HSET per hash written. What is left per buyer is Lua (a few microseconds).
local users, distinct = {}, {}
for i = 1, n do
  local u = ARGV[3 + 2 * i]
  if distinct[u] == nil then
    distinct[u] = true
    users[#users + 1] = u
  end
end
local got = redis.call('HMGET', KEYS[2], unpack(users))
local held = {}
for j = 1, #users do
  held[users[j]] = tonumber(got[j]) or 0
end

-- Names the host accepts need no JSON escaping: the record is built by concatenation then,
-- the same JSON cjson would write (any other name still goes through cjson).
local function plain(s) return string.find(s, '^[%w_.:@%-]+$') ~= nil end
local fast = plain(event) and plain(host)
local ms_str = string.format('%d', ms)
local head = '{"event":"' .. event .. '","host":"' .. host .. '","created_at":' .. ms_str ..
  ',"order_id":"'

local out, orders, pending = {}, {}, {}
local bought, bought_ids = {}, {} -- users who bought in this batch, in order; their new ids
local sold_now, seq = 0, seq0
for i = 1, n do
  local user, qty = ARGV[3 + 2 * i], qtys[i]
  local remaining = stock - sold - sold_now
  local h = held[user]
  if remaining <= 0 then
    out[i] = {'sold_out', 0, gen}
  elseif qty > remaining then
    out[i] = {'insufficient', remaining, gen}
  elseif h + qty > limit then
    out[i] = {'limit_reached', h, gen}
  else
    held[user] = h + qty
    sold_now = sold_now + qty
    seq = seq + 1
    local id = string.format('%013d-%010d-%s', ms, seq, event)
    local rec
    if fast and plain(user) then
      rec = head .. id .. '","qty":' .. ARGV[4 + 2 * i] .. ',"user":"' .. user .. '"}'
    else
      rec = cjson.encode({
        order_id = id, event = event, user = user, qty = qty, host = host, created_at = ms })
    end
    orders[#orders + 1] = id
    orders[#orders + 1] = rec
    pending[#pending + 1] = id
    pending[#pending + 1] = ms_str
    local ids = bought_ids[user]
    if ids == nil then
      bought[#bought + 1] = user
      bought_ids[user] = id
    else
      bought_ids[user] = ids .. ',' .. id
    end
    out[i] = {'ok', id, remaining - qty, gen, ms}
  end
end

if sold_now > 0 then
  redis.call('HSET', KEYS[1], 'sold', sold + sold_now, 'seq', seq)
  redis.call('HSET', KEYS[3], unpack(orders))
  redis.call('HSET', KEYS[5], unpack(pending))
  local prev = redis.call('HMGET', KEYS[4], unpack(bought))
  local u, c = {}, {}
  for j = 1, #bought do
    local user = bought[j]
    local p = prev[j]
    u[#u + 1] = user
    u[#u + 1] = p and (p .. ',' .. bought_ids[user]) or bought_ids[user]
    c[#c + 1] = user
    c[#c + 1] = held[user]
  end
  redis.call('HSET', KEYS[4], unpack(u))
  redis.call('HSET', KEYS[2], unpack(c))
end
return out
