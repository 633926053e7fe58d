-- access_code.lua: only buyers sent by a registration or waiting-room system may buy. That
-- system gives each admitted buyer a code for one event, signed with a secret it shares with
-- this policy, and the buyer's client sends it in a header:
--
--   X-Access-Code: <expires_ms>.<hex HMAC-SHA-256(SECRET, event .. "|" .. user .. "|" .. expires_ms)>
--
-- expires_ms is when the code stops working (ms since the epoch, UTC). A request without a
-- valid, unexpired code for this event and this buyer is refused with 403 before anything
-- reaches Redis: access_code_required (no header), access_code_invalid (malformed, or the MAC
-- does not match: another event, another buyer, another secret, a changed expiry) or
-- access_code_expired. The MAC is compared in constant time (host.ct_equal).
--
-- Issuing a code, in the waiting room (Python):
--   mac = hmac.new(SECRET, f"{event}|{user}|{expires_ms}".encode(), hashlib.sha256).hexdigest()
--   code = f"{expires_ms}.{mac}"
--
-- SECRET: put your own (32 random bytes or more, e.g. `openssl rand -hex 32`) and keep this file
-- readable by the host's user only: the policy sandbox reads no file, so the secret lives here.
-- To rotate, list the new secret first and keep the old one until its codes have expired.
-- The buyer id must be one the proxy in front vouches for (X-User-Id from a --trusted-proxy):
-- the code binds the ticket to it. Hosts compare expiries with their own clock (NTP).

local SECRETS = { 'change-me-to-32-random-bytes-in-hex-0123456789abcdef' }
local HEADER = 'X-Access-Code'
local CODE_MAX = 96 -- 13..16 digits, a dot, 64 hex digits: anything longer is not a code

local M = {}

M.max_qty = 4

local USER_RATE, USER_BURST = 5, 10
local hmac, ct_equal, limit = host.hmac_sha256, host.ct_equal, host.limit

function M.allocate(_event, cluster)
  local live = cluster.hosts - (cluster.hosts > 1 and 1 or 0)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

-- nil when the code is good for this event and buyer, else the refusal's reason.
local function refuse_code(code, event, user, now_ms)
  if code == nil then return 'access_code_required' end
  if #code > CODE_MAX then return 'access_code_invalid' end
  local expires, mac = string.match(code, '^(%d+)%.(%x+)$')
  if expires == nil or #mac ~= 64 then return 'access_code_invalid' end
  local signed = event .. '|' .. user .. '|' .. expires
  local ok = false
  for i = 1, #SECRETS do
    -- No early exit: every secret is tried, so timing says nothing about which one matched.
    if ct_equal(hmac(SECRETS[i], signed), string.lower(mac)) then ok = true end
  end
  if not ok then return 'access_code_invalid' end
  if tonumber(expires) <= now_ms then return 'access_code_expired' end
  return nil
end

function M.admit(req)
  local qty = req.qty
  if qty < 1 or qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  -- Rate first: a guesser pays for every try, valid code or not.
  if not limit('u:' .. req.user, USER_RATE, USER_BURST) then
    return false, 429, 'rate_limited', 'too many requests for this buyer'
  end
  local why = refuse_code(req.header(HEADER), req.event, req.user, req.now_ms)
  if why then
    host.counter(why, 1)
    return false, 403, why, 'this sale needs a valid ' .. HEADER .. ' for this event and buyer'
  end
  return true
end

function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
