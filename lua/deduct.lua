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
--   KEYS[3] {E}:orders   hash  order_id -> order record: "<qty> <host> <user>" when the names
--                              are plain (see `rec` below); a record starting with '{' is the
--                              order's JSON (this script's for other names, an earlier
--                              version's, repair.lua's), which every reader still takes
--   KEYS[4] {E}:uorders  hash  user -> order ids, comma separated
--   KEYS[5] {E}:pending  hash  one entry per batch that sold: its first order id -> "<ms> <n>"
--                              (its n orders: consecutive seqs, same ms and event); deleted once
--                              JetStream acknowledged all n, so what is left is what
--                              reconciliation must republish. The previous version wrote one
--                              entry per order, "<ms>": readers still take it as n = 1.
-- and, named from KEYS[1]'s "{E}:" (same hash tag, same slot), only when used:
--   {E}:holds zset and {E}:state hash (an order sold with a hold; see lua/order.lua)
--   {E}:idem:<user>|<key>  string, expires after the window (a buyer with an idempotency key)
-- ARGV: event, host_id, deadline_ms, n, hold_ms, keep, idem_window_ms, then n times (user, qty,
--   idempotency key or ""), then any number of KEYS[5] fields (batches' first order ids) whose
--   orders JetStream all acknowledged, deleted (riding on a batch costs no round trip of its
--   own; they are deleted whatever the buyers' outcome).
--   hold_ms > 0: each order is held until created + hold_ms (lua/order.lua pays, cancels or
--   expires it); keep "1": a released hold does not give the buyer's per-user count back.
--   idem_window_ms: how long an idempotency key's decision is kept.
--   deadline_ms: the host's clock when it stops waiting for this reply (it then answers 503
--   "nothing deducted"). A script that only gets to run later, e.g. after Redis was paused,
--   refuses, so that 503 stays true. Host and Redis clocks must agree to well within the
--   host's --redis-timeout-ms (NTP does); 0 disables the check.
--
-- Reply: an array of n replies, one per buyer in ARGV order, then, when any buyer bought, one
-- more: {gen, created_ms, hold_until, first_seq}. Buyers are served in that order, each checked
-- against what the earlier ones left (the same user twice sees their first count):
--   remaining (an integer)              bought: the units left after this buyer. The order id is
--                                       the batch's: the k-th buyer who bought (k from 0) has
--                                       seq first_seq + k, so its id is "<created_ms>-<seq>-<event>"
--                                       (host/common/keyspace.h); hold_until 0: paid at once
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
-- With an idempotency key, the first decision (ok, sold_out, insufficient, limit_reached) is
-- kept for the window, and a later buyer with the same user and key gets it again, taking
-- nothing (see "Idempotency keys" below):
--   {"replay", order_id, remaining, gen, created_ms, hold_until, host}   the first one's order
--   {"sold_out" | "insufficient" | "limit_reached", n, gen, "replay"}  its refusal
--   {"key_reused", qty}                 the key was first used with another qty
-- A malformed batch (bad n or qty), or one that could mint an order id past 10 seq digits, is
-- an error reply and changes nothing.
--
-- The order id is minted here, once: "<13-digit ms>-<10-digit seq>-<event>". It increases with
-- time (Redis's clock, the same for every host), so SQLite appends; it is unique because seq
-- only grows (a reset keeps it); and it names its event, so GET /v1/orders/{id} finds it.
-- Globals read per buyer are locals here: a global is a table lookup at each use.
local ARGV, KEYS, redis, tonumber, unpack = ARGV, KEYS, redis, tonumber, unpack
local find, format = string.find, string.format
local event, host, n = ARGV[1], ARGV[2], tonumber(ARGV[4])
-- Buyers start at ARGV[B + 1]: B + 3 * i - 2 .. B + 3 * i are buyer i's user, qty and key.
local B = 7
if not n or n < 1 or #ARGV < B + 3 * n then
  return redis.error_reply('ERR snatch: bad batch')
end
local hold_ms, keep = tonumber(ARGV[5]) or 0, ARGV[6] == '1' and '1' or '0'
-- Numbers are kept as the strings they arrived as where they go back to Redis or into JSON:
-- formatting a Lua number (a double) costs more than the rest of a buyer's Lua.
local qtys = {}
for i = 1, n do
  local q = ARGV[B + 3 * i - 1]
  if q ~= '1' and not find(q, '^[1-9]%d*$') then
    return redis.error_reply('ERR snatch: bad qty')
  end
  qtys[i] = tonumber(q)
end
if #ARGV > B + 3 * n then
  redis.call('HDEL', KEYS[5], unpack(ARGV, B + 1 + 3 * n))
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
-- Order ids carry 10 seq digits (keyspace.h), the layout every reader parses: a batch that could
-- mint past them is refused whole and changes nothing (ten billion orders of one event).
if seq0 + n > 9999999999 then
  return redis.error_reply('ERR snatch: order ids exhausted')
end

-- Redis work per batch, not per buyer: one HMGET of the buyers' counts, one of their order
-- lists, one HSET per hash written. What is left per buyer is Lua (a few microseconds).
local users, distinct = {}, {}
for i = 1, n do
  local u = ARGV[B + 3 * i - 2]
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

-- Names the host accepts are plain: the record is then the compact "<qty> <host> <user>", from
-- which (with the id, which names the ms and the event) order_record_json() in
-- host/common/order_msg.c rebuilds the order's JSON byte for byte. Plain names have no space,
-- so the form is unambiguous; a record starting with '{' is JSON (any other name, via cjson).
local function plain(s) return find(s, '^[%w_.:@%-]+$') ~= nil end
local fast = plain(event) and plain(host)
local ms_str = format('%d', ms)
local host_sp = ' ' .. host .. ' '
local until_str = hold_ms > 0 and format('%d', ms + hold_ms) or '0'

-- ---- Idempotency keys (only buyers that send one pay for this) ----
-- {E}:idem:<user>|<key>, a string that expires after the window: {qty, gen, first reply}.
-- The key lives in the event's hash tag (KEYS[1] is "{E}:meta"), so the batch stays on one
-- Redis Cluster slot. Its decision is written at once, so the same key twice in one batch is
-- a replay too. A decision of an earlier generation (the event was reset) is not replayed.
local idem_prefix = string.sub(KEYS[1], 1, -5) .. 'idem:'
local idem_window = ARGV[7]
local function idem_replay(user, key, qty)
  local v = redis.call('GET', idem_prefix .. user .. '|' .. key)
  if not v then return nil end
  local d = cjson.decode(v)
  if d[2] ~= gen then return nil end
  if d[1] ~= qty then return {'key_reused', d[1]} end
  local r = d[3]
  if r[1] == 'ok' then
    return {'replay', r[2], r[3], r[4], r[5], r[6], r[7]}
  end
  r[4] = 'replay'
  return r
end
local function idem_keep(user, key, qty, reply)
  redis.call('SET', idem_prefix .. user .. '|' .. key, cjson.encode({qty, gen, reply}),
    'PX', idem_window)
end

local out, orders, no = {}, {}, 0 -- no: #orders
local holds, states = {}, {}
local bought, bought_ids = {}, {} -- users who bought in this batch, in order; their new ids
local held_str = {}
local sold_now, seq = 0, seq0
for i = 1, n do
  local user, qty, key = ARGV[B + 3 * i - 2], qtys[i], ARGV[B + 3 * i]
  local replay = key ~= '' and idem_replay(user, key, ARGV[B + 3 * i - 1])
  local remaining = stock - sold - sold_now
  local h = held[user]
  if replay then
    out[i] = replay
  elseif remaining <= 0 then
    out[i] = {'sold_out', 0, gen}
  elseif qty > remaining then
    out[i] = {'insufficient', remaining, gen}
  elseif h + qty > limit then
    out[i] = {'limit_reached', h, gen}
  else
    held[user] = h + qty
    -- A first purchase's count is the qty as it arrived: no number to format for HSET.
    held_str[user] = h == 0 and ARGV[B + 3 * i - 1] or nil
    sold_now = sold_now + qty
    seq = seq + 1
    local id = format('%013d-%010d-%s', ms, seq, event)
    local rec
    if fast and plain(user) then
      rec = ARGV[B + 3 * i - 1] .. host_sp .. user
    else
      rec = cjson.encode({
        order_id = id, event = event, user = user, qty = qty, host = host, created_at = ms })
    end
    orders[no + 1], orders[no + 2] = id, rec
    no = no + 2
    if hold_ms > 0 then
      holds[#holds + 1] = until_str
      holds[#holds + 1] = id
      states[#states + 1] = id
      states[#states + 1] = 'held ' .. until_str .. ' ' .. keep .. ' ' ..
        ARGV[B + 3 * i - 1] .. ' ' .. user
    end
    local ids = bought_ids[user]
    if ids == nil then
      bought[#bought + 1] = user
      bought_ids[user] = id
    else
      bought_ids[user] = ids .. ',' .. id
    end
    -- The rest of an "ok" is the batch's (see the reply's last element): a number is what a
    -- buyer's reply costs least, in Lua and on the wire.
    out[i] = remaining - qty
    if key ~= '' then
      idem_keep(user, key, ARGV[B + 3 * i - 1],
        {'ok', id, remaining - qty, gen, ms_str, until_str, host})
    end
  end
  if key ~= '' and not replay and type(out[i]) == 'table' then
    idem_keep(user, key, ARGV[B + 3 * i - 1], out[i])
  end
end

if sold_now > 0 then
  redis.call('HSET', KEYS[1], 'sold', sold + sold_now, 'seq', seq)
  redis.call('HSET', KEYS[3], unpack(orders))
  -- One entry names the batch's orders: seq0 + 1 .. seq, all minted at ms.
  redis.call('HSET', KEYS[5], format('%013d-%010d-%s', ms, seq0 + 1, event),
    ms_str .. ' ' .. format('%d', seq - seq0))
  local prev = redis.call('HMGET', KEYS[4], unpack(bought))
  local u, c = {}, {}
  for j = 1, #bought do
    local user = bought[j]
    local p = prev[j]
    u[#u + 1] = user
    u[#u + 1] = p and (p .. ',' .. bought_ids[user]) or bought_ids[user]
    c[#c + 1] = user
    c[#c + 1] = held_str[user] or held[user]
  end
  redis.call('HSET', KEYS[4], unpack(u))
  redis.call('HSET', KEYS[2], unpack(c))
  -- Holds (lua/order.lua): {E}:holds orders by deadline, {E}:state what each one is.
  if #holds > 0 then
    local prefix = string.sub(KEYS[1], 1, -5)
    redis.call('ZADD', prefix .. 'holds', unpack(holds))
    redis.call('HSET', prefix .. 'state', unpack(states))
  end
  out[n + 1] = {gen, ms_str, until_str, seq0 + 1}
end
return out
