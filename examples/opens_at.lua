-- opens_at.lua: the sale opens at a fixed time. Before it, every attempt is refused with
-- 409 {"error":"not_started","detail":"opens at 2030-01-01T09:00:00Z (1893488400000)"}
-- and nothing is deducted. Set OPENS_AT_MS, check with `snatch-host --test`, reload (SIGHUP).
--
-- The hosts' clocks decide, so keep them in sync (NTP); a host a little fast opens a little
-- early. Names are already restricted by the host to [A-Za-z0-9_.:@-]: order() needs no escaping.

local OPENS_AT_MS = 1893488400000 -- 2030-01-01T09:00:00Z, ms since the epoch (UTC)

local M = {}

M.max_qty = 4

local USER_RATE, USER_BURST = 5, 10

-- UTC calendar date of a day count since 1970-01-01 (no os library in the policy sandbox).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

local function iso(ms)
  local s = math.floor(ms / 1000)
  local y, m, d = civil(math.floor(s / 86400))
  local sod = s % 86400
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', y, m, d,
    math.floor(sod / 3600), math.floor(sod / 60) % 60, sod % 60)
end

-- Built once: the refusal is the hot path until the sale opens.
local NOT_STARTED = string.format('opens at %s (%d)', iso(OPENS_AT_MS), OPENS_AT_MS)

function M.allocate(_event, cluster)
  local live = cluster.hosts - (cluster.hosts > 1 and 1 or 0)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

function M.admit(req)
  if req.now_ms < OPENS_AT_MS then
    return false, 409, 'not_started', NOT_STARTED
  end
  if req.qty < 1 or req.qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  if not host.limit('u:' .. req.user, USER_RATE, USER_BURST) then
    return false, 429, 'rate_limited', 'too many requests for this buyer'
  end
  return true
end

function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
