-- repair.lua: brings an event's Redis state back up to what JetStream persisted, after the node
-- that serves the event changed (a failover that lost writes, a restart, a promoted replica).
-- Run by the host's reconciler thread (host/server/repair.c), which replays the event's orders
-- from the ORDERS stream and feeds them here in chunks. Every step is idempotent: an order
-- already in {E}:orders is left alone, so a repair cut short can simply run again.
--
-- The event's keys (host/common/keyspace.h), all in the {E} tag:
--   KEYS[1] {E}:meta  KEYS[2] {E}:users  KEYS[3] {E}:orders  KEYS[4] {E}:uorders
--   KEYS[5] {E}:repair  the repair lock: a token, expiring, so that hosts repairing at once take
--                       turns and a repairer that dies leaves nothing stuck
-- ARGV: op, event, token, ttl_ms, node, then what op takes:
--   'begin'  claim ('1': an event with no owner on a standalone server is claimed too)
--            -> {'current', node}       the owner is this node: nothing to repair
--               {'unknown_event'}       {'unclaimed'}   (standalone, no owner, claim ~= '1')
--               {'busy', node}          another repairer holds the lock
--               {'started', node, base} lock taken; replay the orders with seq > base
--   'chunk'  n, then n times (order_id, user, qty, host, created_at) (host '' and created_at ''
--            when the persisted order had none)
--            -> {'ok', restored orders, restored units, skipped}
--   'held'   n, then n times (order_id, user, qty, host, created_at, life): orders sold with a
--            hold (lua/order.lua), life what the stream says of them: 'held <until>' (no
--            transition persisted), 'paid <at> <until>', 'expired <at> <until>' or
--            'cancelled <at> <until>'. A missing one is restored with its {E}:state entry; held
--            also in {E}:holds (the sweepers expire it), held and paid count in sold and in the
--            buyer's count, released ones do not (their record and id stay, as order.lua keeps
--            them). -> as 'chunk' (units: the units counted in sold)
--   'settle' n, then n times (order_id, state, at): persisted transitions. An order this node
--            still has as held takes the state (what order.lua's transition does, without
--            publishing again: it is persisted). -> {'ok', settled, released units}
--   'finish' seq_max (the largest seq of any persisted order of the event), gap
--            -> {'done', sold, stock}
--   'release' (a repair that failed after 'begin': NATS or Redis went away mid-replay) drops
--            the lock if it is still this token, so the next attempt, this host's or another's,
--            need not wait out the ttl while every buyer of the event gets 503 repairing
--            -> {'released'} or {'not_held'}
--   'chunk', 'held', 'settle' and 'finish' answer {'lost_lock'} when the lock is no longer this token, and
--   {'moved'} when they run on another node than 'begin' did (node ~= this node's id): the
--   repairer starts again from 'begin'.
-- node is '' for 'begin' (it answers this node's id) and that id afterwards.
--
-- {E}:meta fields this script owns:
--   owner  the node that last verified the event: deduct.lua sells only on that node
--   base   the seq when the event was last reset (PUT /admin/events): orders with a seq at or
--          below it belong to an earlier sale of the same name and are never restored. An event
--          without it (created before repairs existed) gets this node's seq at its first 'begin':
--          what this node holds up to there is taken as the truth (docs/RELIABILITY.md).
-- What a repair restores: each missing order's record, its buyer's count, the buyer's order
-- list, sold (even past stock: the event then answers sold out, and the repairer reports it) and
-- seq, raised past every persisted id and then by gap, so the new owner never mints again an id
-- that the old one may still have in flight.

local op, event, token, ttl, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

-- The same identity deduct.lua checks: the cluster node id, else the server's run id (a
-- standalone server that restarted or a replica promoted by hand is another node).
local function on_cluster()
  return string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) ~= nil
end

local function this_node(cluster)
  if cluster then return redis.call('CLUSTER', 'MYID') end
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

local function holds_lock()
  return redis.call('GET', KEYS[5]) == token
end

local function guard()
  if node ~= this_node(on_cluster()) then return {'moved'} end
  if not holds_lock() then return {'lost_lock'} end
  redis.call('PEXPIRE', KEYS[5], ttl)
  return nil
end

if op == 'release' then
  if not holds_lock() then return {'not_held'} end
  redis.call('DEL', KEYS[5])
  return {'released'}
end

if op == 'begin' then
  local meta = redis.call('HMGET', KEYS[1], 'stock', 'seq', 'owner', 'base')
  if not meta[1] then return {'unknown_event'} end
  local cluster = on_cluster()
  if not meta[3] and not cluster and ARGV[6] ~= '1' then return {'unclaimed'} end
  local me = this_node(cluster)
  if meta[3] == me then return {'current', me} end
  local held = redis.call('GET', KEYS[5])
  if held and held ~= token then return {'busy', me} end
  redis.call('SET', KEYS[5], token, 'PX', ttl)
  local base = meta[4]
  if not base then
    base = meta[2] or '0'
    redis.call('HSET', KEYS[1], 'base', base)
  end
  return {'started', me, base}
end

-- {E}:holds and {E}:state (lua/order.lua), named from KEYS[1]'s "{E}:" (same slot).
local tag = string.sub(KEYS[1], 1, -5)
local holds_key, state_key = tag .. 'holds', tag .. 'state'

local function words(x)
  local w = {}
  for v in string.gmatch(x, '%S+') do w[#w + 1] = v end
  return w
end

if op == 'settle' then
  local stop = guard()
  if stop then return stop end
  local n = tonumber(ARGV[6])
  if not n or n < 0 or #ARGV ~= 6 + 3 * n then
    return redis.error_reply('ERR snatch: bad repair settle')
  end
  local settled, released = 0, 0
  for i = 0, n - 1 do
    local id, to, at = ARGV[7 + 3 * i], ARGV[8 + 3 * i], ARGV[9 + 3 * i]
    local st = redis.call('HGET', state_key, id)
    local w = st and words(st) or {}
    if w[1] == 'held' and (to == 'paid' or to == 'expired' or to == 'cancelled') then
      local untl, keep, qty, user = w[2], w[3], tonumber(w[4]), w[5]
      redis.call('ZREM', holds_key, id)
      if to ~= 'paid' then
        redis.call('HINCRBY', KEYS[1], 'sold', -qty)
        if keep ~= '1' and redis.call('HINCRBY', KEYS[2], user, -qty) <= 0 then
          redis.call('HDEL', KEYS[2], user)
        end
        released = released + qty
      end
      redis.call('HSET', state_key, id, to .. ' ' .. at .. ' ' .. untl)
      settled = settled + 1
    end
  end
  return {'ok', settled, released}
end

if op == 'chunk' or op == 'held' then
  local stop = guard()
  if stop then return stop end
  local n = tonumber(ARGV[6])
  local F = op == 'held' and 6 or 5 -- fields per order
  if not n or n < 0 or #ARGV ~= 6 + F * n then
    return redis.error_reply('ERR snatch: bad repair chunk')
  end
  local meta = redis.call('HMGET', KEYS[1], 'base', 'seq')
  local base = tonumber(meta[1]) or 0
  -- Candidates: well-formed ids of this event and of this sale, each once.
  local ids, cand, seen, skipped = {}, {}, {}, 0
  local pattern = '^(%d%d%d%d%d%d%d%d%d%d%d%d%d)%-(%d%d%d%d%d%d%d%d%d%d)%-(.+)$'
  for i = 0, n - 1 do
    local at = 7 + F * i
    local id, user, qty = ARGV[at], ARGV[at + 1], ARGV[at + 2]
    local _, seq, ev = string.match(id, pattern)
    if not seq or ev ~= event or user == '' or not string.find(qty, '^[1-9]%d*$') then
      skipped = skipped + 1
    elseif tonumber(seq) > base and not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
      cand[#cand + 1] = at
    end
  end
  if #ids == 0 then return {'ok', 0, 0, skipped} end
  local have = redis.call('HMGET', KEYS[3], unpack(ids))
  local restored, units, max_seq = 0, 0, 0
  for j = 1, #ids do
    if not have[j] then
      local at = cand[j]
      local id, user, qty = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
      local host, created = ARGV[at + 3], tonumber(ARGV[at + 4])
      local rec = {order_id = id, event = event, user = user, qty = qty}
      if host ~= '' then rec.host = host end
      if created then rec.created_at = created end
      -- Restored as JSON (a record may lack host or created_at, which the compact form of
      -- deduct.lua cannot say); every reader takes both forms.
      redis.call('HSET', KEYS[3], id, cjson.encode(rec))
      local prev = redis.call('HGET', KEYS[4], user)
      redis.call('HSET', KEYS[4], user, prev and (prev .. ',' .. id) or id)
      -- Sold: paid at once ('chunk'), or held or paid; a released hold gave its units back.
      local counts = true
      if F == 6 then
        local w = words(ARGV[at + 5])
        if w[1] == 'held' then
          redis.call('ZADD', holds_key, w[2], id)
          -- keep '0': the policy's hold_keeps_limit is not in the stream (README, limits).
          redis.call('HSET', state_key, id, 'held ' .. w[2] .. ' 0 ' .. ARGV[at + 2] .. ' ' .. user)
        else
          redis.call('HSET', state_key, id, ARGV[at + 5])
          counts = w[1] == 'paid'
        end
      end
      if counts then
        redis.call('HINCRBY', KEYS[2], user, qty)
        units = units + qty
      end
      restored = restored + 1
      local s = tonumber(string.sub(id, 15, 24))
      if s > max_seq then max_seq = s end
    end
  end
  if units > 0 then
    redis.call('HINCRBY', KEYS[1], 'sold', units)
    local seq = tonumber(meta[2]) or 0
    if max_seq > seq then redis.call('HSET', KEYS[1], 'seq', max_seq) end
  end
  return {'ok', restored, units, skipped}
end

if op == 'finish' then
  local stop = guard()
  if stop then return stop end
  local seq_max, gap = tonumber(ARGV[6]), tonumber(ARGV[7])
  if not seq_max or not gap or seq_max < 0 or gap < 0 then
    return redis.error_reply('ERR snatch: bad repair finish')
  end
  local meta = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'seq')
  local seq = tonumber(meta[3]) or 0
  if seq_max > seq then seq = seq_max end
  redis.call('HSET', KEYS[1], 'owner', node, 'seq', string.format('%d', seq + gap))
  redis.call('DEL', KEYS[5])
  return {'done', tonumber(meta[2]) or 0, tonumber(meta[1]) or 0}
end

return redis.error_reply('ERR snatch: unknown repair op')
