-- max4_per_buyer.lua: buyers may ask for up to 4 tickets in one request, and the per-buyer
-- rate limit counts tickets asked for, not requests (host.limit's cost argument).
--
-- How many tickets a buyer may HOLD is not decided here: that is the event's per_user_limit,
-- set with PUT /admin/events/{event} ({"stock":..., "per_user_limit":4}) and enforced
-- atomically by Redis. This policy only bounds each request and slows down hoarding attempts.
-- Names are already restricted by the host to [A-Za-z0-9_.:@-], so order() needs no escaping.

local M = {}

M.max_qty = 4                               -- qty 5 and more: 400 before admit() runs

local TICKETS_PER_SEC, TICKET_BURST = 4, 8  -- tickets asked for, per buyer

function M.allocate(_event, cluster)
  local live = cluster.hosts - (cluster.hosts > 1 and 1 or 0)
  if live <= 0 then return cluster.stock end
  return math.ceil(cluster.stock / live)
end

function M.admit(req)
  if req.qty < 1 or req.qty > M.max_qty then
    return false, 400, 'bad_qty', 'qty must be between 1 and ' .. M.max_qty
  end
  if not host.limit('t:' .. req.user, TICKETS_PER_SEC, TICKET_BURST, req.qty) then
    return false, 429, 'rate_limited', 'too many tickets asked for by this buyer'
  end
  return true
end

function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
