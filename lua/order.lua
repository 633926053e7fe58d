-- order.lua: an order's life after deduct.lua sold it. Runs inside Redis (EVAL), atomically, so
-- exactly one transition out of "held" ever wins, whatever races: a payment and the expiry, a
-- cancel and a payment from two hosts, two hosts expiring the same orders.
--
--   held -> paid | expired | cancelled      (an order sold with hold_ms 0 is paid at once and
--                                             has no state entry: absent means paid)
--
-- The keyspace is host/common/keyspace.h's; every key is in the event's hash tag {E}:
--   KEYS[1] {E}:meta      hash  stock, sold, ...        sold goes down when a hold is released
--   KEYS[2] {E}:users     hash  user -> units bought    idem, unless the hold said keep
--   KEYS[3] {E}:orders    hash  order_id -> record      read only (an order is never deleted):
--                               "<qty> <host> <user>" (deduct.lua) or JSON (starts with '{')
--   KEYS[4] {E}:holds     zset  order_id by hold deadline (ms): the held orders
--   KEYS[5] {E}:state     hash  order_id -> "held <until> <keep> <qty> <user>"
--                                            | "<paid|expired|cancelled> <at> <until>"
--   KEYS[6] {E}:tpending  hash  order_id -> "<at> <state> <payload>": a transition decided here
--                               and not yet acknowledged by JetStream (the host deletes it after
--                               the ack; reconciliation republishes what stays)
-- ARGV: op, event, then per op:
--   get    id                 -> {record | false, state | false}
--   pay    id                 -> {verdict, state, at, hold_until, payload | false}
--   cancel id buyer           -> idem
--   expire max                -> {id, payload, id, payload, ...}: at most max expired holds
-- verdict: "ok" this call made the transition; "done" the order already was in that state
-- (payload: its transition, still unacknowledged, to publish again); "conflict" it is in
-- another state (payload: set when this call found the hold past its deadline and expired it);
-- "forbidden" (cancel: another buyer's order); "unknown" (no such order).
-- A hold past its deadline is expired by whichever call sees it first, pay included: the
-- deadline is the contract, not the sweeper's schedule.
local op, event = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_str = string.format('%d', now)

local function words(s)
  local w = {}
  for x in string.gmatch(s, '%S+') do w[#w + 1] = x end
  return w
end

local function plain(s) return string.find(s, '^[%w_.:@%-]+$') ~= nil end

-- The buyer of an {E}:orders record, in either of its forms (deduct.lua).
local function record_user(rec)
  if string.byte(rec, 1) == 123 then return cjson.decode(rec).user end -- '{'
  return string.match(rec, '^%d+ %S+ (%S+)$')
end

local function payload_of(id, user, qty, to)
  if plain(id) and plain(event) and plain(user) then
    return '{"order_id":"' .. id .. '","event":"' .. event .. '","user":"' .. user ..
      '","qty":' .. qty .. ',"state":"' .. to .. '","at":' .. now_str .. '}'
  end
  return cjson.encode({order_id = id, event = event, user = user, qty = tonumber(qty),
    state = to, at = now})
end

-- Moves a held order (its state words w) to `to`. Returns the transition's payload, or nil
-- when the order record is gone (an admin reset dropped the sale it belonged to: the hold is
-- forgotten and nothing goes back to the new sale).
local function transition(id, w, to)
  local untl, keep, qty, user = w[2], w[3], w[4], w[5]
  redis.call('ZREM', KEYS[4], id)
  if redis.call('HEXISTS', KEYS[3], id) == 0 then
    redis.call('HDEL', KEYS[5], id)
    return nil
  end
  if to ~= 'paid' then
    -- The unit goes back to the sale; the buyer may buy again unless the policy kept the count.
    redis.call('HINCRBY', KEYS[1], 'sold', -tonumber(qty))
    if keep ~= '1' and redis.call('HINCRBY', KEYS[2], user, -tonumber(qty)) <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
  end
  redis.call('HSET', KEYS[5], id, to .. ' ' .. now_str .. ' ' .. untl)
  local payload = payload_of(id, user, qty, to)
  redis.call('HSET', KEYS[6], id, now_str .. ' ' .. to .. ' ' .. payload)
  return payload
end

-- The unacknowledged transition of id, to publish again (nil when it was acknowledged).
local function unacked(id)
  local p = redis.call('HGET', KEYS[6], id)
  if not p then return false end
  local a = string.find(p, ' ', 1, true)
  local b = string.find(p, ' ', a + 1, true)
  return string.sub(p, b + 1)
end

if op == 'get' then
  return {redis.call('HGET', KEYS[3], ARGV[3]), redis.call('HGET', KEYS[5], ARGV[3])}
end

if op == 'expire' then
  local max = tonumber(ARGV[3]) or 100
  local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, max)
  local out = {}
  for _, id in ipairs(ids) do
    local st = redis.call('HGET', KEYS[5], id)
    local w = st and words(st) or {}
    if w[1] == 'held' then
      local p = transition(id, w, 'expired')
      if p then
        out[#out + 1] = id
        out[#out + 1] = p
      end
    else
      redis.call('ZREM', KEYS[4], id) -- already decided: only the index entry was left
    end
  end
  return out
end

if op ~= 'pay' and op ~= 'cancel' then
  return redis.error_reply('ERR snatch: unknown op')
end
local id = ARGV[3]
local rec = redis.call('HGET', KEYS[3], id)
if not rec then return {'unknown'} end
local st = redis.call('HGET', KEYS[5], id)
local w = st and words(st) or nil
if op == 'cancel' then
  local owner = w and w[1] == 'held' and w[5] or record_user(rec)
  if owner ~= ARGV[4] then return {'forbidden'} end
end
local want = op == 'pay' and 'paid' or 'cancelled'
if not w then
  -- Sold without a hold: paid at once.
  return {op == 'pay' and 'done' or 'conflict', 'paid', '0', '0', false}
end
if w[1] ~= 'held' then
  if w[1] == want then
    return {'done', w[1], w[2], w[3], unacked(id)}
  end
  return {'conflict', w[1], w[2], w[3], unacked(id)}
end
if now >= tonumber(w[2]) then
  local p = transition(id, w, 'expired')
  return {'conflict', 'expired', now_str, w[2], p or false}
end
local p = transition(id, w, want)
if not p then return {'unknown'} end
return {'ok', want, now_str, w[2], p}
