-- vip_early_access.lua: the sale opens to everyone at OPENS_AT_MS, and to holders of a signed
-- VIP code VIP_LEAD_MS earlier. The code comes in a header, issued by the system that knows who
-- the VIPs are (a fan club, a loyalty programme), signed with a secret it shares with this policy:
--
--   X-VIP-Code: <expires_ms>.<hex HMAC-SHA-256(SECRET, "vip|" .. event .. "|" .. user .. "|" .. expires_ms)>
--
-- Before OPENS_AT_MS - VIP_LEAD_MS nobody buys: 409 not_started. In the VIP window a request
-- with a valid, unexpired code for this event and buyer is admitted; one without a code gets
-- 409 not_started (the detail says when the sale opens, and when for VIPs); one with a code
-- that is malformed, expired or signed for someone else gets 403 vip_code_invalid. From
-- OPENS_AT_MS on, the header is not even read. Nothing refused here reaches Redis.
--
-- Issuing a code (Python):
--   mac = hmac.new(SECRET, f"vip|{event}|{user}|{expires_ms}".encode(), hashlib.sha256).hexdigest()
--   code = f"{expires_ms}.{mac}"
-- SECRET: your own (`openssl rand -hex 32`); keep this file readable by the host's user only.
-- "vip|" in the signed text keeps a VIP code and an access code (access_code.lua) from ever
-- being taken for each other, even under one secret. Hosts use their own clock (NTP).

local OPENS_AT_MS = 1893488400000   -- 2030-01-01T09:00:00Z, ms since the epoch (UTC)
local VIP_LEAD_MS = 15 * 60 * 1000  -- VIPs may buy 15 minutes earlier
local SECRET = 'change-me-vip-secret-32-random-bytes-in-hex-01234567'
local HEADER = 'X-VIP-Code'
local CODE_MAX = 96

local M = {}

M.max_qty = 4

local USER_RATE, USER_BURST = 5, 10
local hmac, ct_equal, limit = host.hmac_sha256, host.ct_equal, host.limit
local VIP_FROM_MS = OPENS_AT_MS - VIP_LEAD_MS
local NOT_STARTED = string.format('opens at %d, for VIP codes at %d (ms since the epoch)',
  OPENS_AT_MS, VIP_FROM_MS)

function M.allocate(_event, cluster)
  local live = cluster.hosts - (cluster.hosts > 1 and 1 or 0)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

local function valid_vip(code, event, user, now_ms)
  if #code > CODE_MAX then return false end
  local expires, mac = string.match(code, '^(%d+)%.(%x+)$')
  if expires == nil or #mac ~= 64 then return false end
  local want = hmac(SECRET, 'vip|' .. event .. '|' .. user .. '|' .. expires)
  return ct_equal(want, string.lower(mac)) and tonumber(expires) > now_ms
end

function M.admit(req)
  local now = req.now_ms
  if now < OPENS_AT_MS then
    if now < VIP_FROM_MS then
      return false, 409, 'not_started', NOT_STARTED
    end
    local code = req.header(HEADER)
    if code == nil then
      return false, 409, 'not_started', NOT_STARTED
    end
    if not valid_vip(code, req.event, req.user, now) then
      host.counter('vip_code_invalid', 1)
      return false, 403, 'vip_code_invalid', 'the VIP code is not valid for this event and buyer'
    end
  end
  local qty = req.qty
  if qty < 1 or qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  if not limit('u:' .. req.user, USER_RATE, USER_BURST) then
    return false, 429, 'rate_limited', 'too many requests for this buyer'
  end
  return true
end

function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
