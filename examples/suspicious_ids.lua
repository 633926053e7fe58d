-- suspicious_ids.lua: buyer ids that look generated get a much stricter rate limit.
-- Suspicious: ids starting with "bot" (any case), or made of more than 12 digits only (phone
-- numbers and counters scripted by the thousand). They may try once a second; everyone else
-- five times a second with a burst of ten. Every slowed-down attempt is counted in GET /metrics
-- under the name suspicious_limited (host.counter).
-- Names are already restricted by the host to [A-Za-z0-9_.:@-]: order() needs no escaping.

local M = {}

M.max_qty = 4

local USER_RATE, USER_BURST = 5, 10
local SUSPICIOUS_RATE, SUSPICIOUS_BURST = 1, 1

local function suspicious(user)
  if user:sub(1, 3):lower() == 'bot' then return true end
  return #user > 12 and user:find('^%d+$') ~= nil
end

function M.allocate(_event, cluster)
  local live = cluster.hosts - (cluster.hosts > 1 and 1 or 0)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

function M.admit(req)
  if req.qty < 1 or req.qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  local user = req.user
  if suspicious(user) then
    if not host.limit('s:' .. user, SUSPICIOUS_RATE, SUSPICIOUS_BURST) then
      host.counter('suspicious_limited', 1)
      return false, 429, 'rate_limited', 'too many requests for this buyer'
    end
    return true
  end
  if not host.limit('u:' .. user, USER_RATE, USER_BURST) then
    return false, 429, 'rate_limited', 'too many requests for this buyer'
  end
  return true
end

function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
