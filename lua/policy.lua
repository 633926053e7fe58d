-- policy.lua: the sale's business rules, run by snatch-host in LuaJIT (one copy per loop
-- thread). Edit, check with `snatch-host --test`, then `kill -HUP` the host to reload it: a
-- policy that fails to load is refused and the old one keeps running.
--
-- The host calls these functions:
--   allocate(event, cluster)  how many tickets this host may sell from its local quota
--   admit(req)                may this request try to buy? (every request not already sold out)
--   order(o)                  optional: the order's JSON payload, published to JetStream and
--                             stored (without it: the built-in format, see below)
-- and reads the settings below. From the host you get `host`:
--   host.now_ms()                      wall clock, ms
--   host.log(msg)                      one line on stderr: "policy: msg"
--   host.counter(name, inc)            a counter in GET /metrics
--   host.limit(key, rate, burst[, cost]) token bucket shared by all threads -> true if allowed
--   host.hmac_sha256(key, msg[, 'raw']) HMAC-SHA-256, lower-case hex (or the 32 bytes)
--   host.ct_equal(a, b)                constant-time string compare (for MACs)
--   host.id, host.hosts                this host's id, how many hosts sell the event
-- admit()'s req: event, user, qty, client, now_ms, and req.header(name) (any request header).
-- docs/POLICY.md is the reference.
--
-- Keep it pure and small: admit() runs tens of thousands of times a second per thread, and a
-- loop that never ends cannot be interrupted. The request table passed to admit() and the order
-- table passed to order() are reused between calls: copy what you want to keep.
--
-- The host has already validated the input: event names and buyer ids are 1..64 characters of
-- [A-Za-z0-9_.:@-] (or less, see user_max_len / event_max_len), qty is an integer <= max_qty.
-- Redis, not this file, enforces stock and the per-buyer limit (set by PUT /admin/events/...).

local M = {}

-- Settings read by the host --------------------------------------------------------------------
M.max_qty = 4         -- tickets per request; more is a 400 before admit() is called
M.user_max_len = 64   -- longest buyer id accepted (at most 64)
M.event_max_len = 64  -- longest event name accepted (at most 64)
-- When this host has sold its whole quota but Redis still has stock (more hosts died than
-- `tolerate` covers, or the load balancer sent it more than its share), top the quota up from
-- what Redis has left (checked twice a second). Redis still makes overselling impossible.
-- false: a host sells at most its allocate() quota, the leftover needs an operator.
M.refill = true

-- Settings of this policy ----------------------------------------------------------------------
local USER_RATE, USER_BURST = 5, 10           -- requests/s per buyer id, and the burst allowed
-- Per client address. Loose on purpose: real buyers behind one NAT share an address. Set
-- CLIENT_RATE = nil to switch it off. req.client is the TCP peer or, from a --trusted-proxy
-- peer, the client it names in X-Forwarded-For. Loopback clients are exempt: there it is the
-- load tool or a local reverse proxy speaking for everyone (without X-Forwarded-For), so a
-- per-address limit would throttle the sale. List other trusted proxies here too.
local CLIENT_RATE, CLIENT_BURST = 2000, 4000
local CLIENT_EXEMPT = { ['127.0.0.1'] = true, ['::1'] = true }

-- allocate -----------------------------------------------------------------------------------
-- Each host sells from a local quota so it can answer "sold out" without asking Redis. Quotas
-- add up to more than the stock, so the sale survives `tolerate` dead hosts without unsold
-- tickets; Redis still makes overselling impossible.
local function tolerate(hosts)
  if hosts > 1 then return 1 end
  return 0
end

function M.allocate(_event, cluster)
  local live = cluster.hosts - tolerate(cluster.hosts)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

-- admit --------------------------------------------------------------------------------------
-- Returns true, or false, HTTP status (4xx), reason (the JSON "error"), detail (optional).
local limit = host.limit

function M.admit(req)
  local qty = req.qty
  if qty < 1 or qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  if not limit('u:' .. req.user, USER_RATE, USER_BURST) then
    return false, 429, 'rate_limited', 'too many requests for this buyer'
  end
  local client = req.client
  if CLIENT_RATE and not CLIENT_EXEMPT[client]
      and not limit('ip:' .. client, CLIENT_RATE, CLIENT_BURST) then
    return false, 429, 'rate_limited', 'too many requests from this address'
  end
  return true
end

-- order --------------------------------------------------------------------------------------
-- The payload every consumer of the ORDERS stream reads. This policy defines no order(), so the
-- host publishes its built-in format, in C, without a Lua call per sold ticket:
--   {"order_id":"...","event":"...","user":"...","qty":1,"host":"...","created_at":1700000000000}
-- To add fields, define M.order(o) returning that JSON object with your fields added (keep these);
-- o has order_id, event, user, qty, host, created_at. It must be a pure function of o:
-- reconciliation calls it again for an order whose publish was not acknowledged (the host's
-- reconciler thread, snatch-reconcile --policy), from the facts Redis recorded, and the stored
-- row must not depend on which call delivered it. The values are already restricted to
-- [A-Za-z0-9_.:@-]; escape them anyway if you build JSON from other data.

return M
