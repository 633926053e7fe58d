-- wrk script: a new buyer per request (thread number and a per-thread counter, so threads never
-- collide). The method is WRK_METHOD (default POST). Used by scripts/benchmark_wrk.sh and
-- scripts/benchmark_sell.sh (which appends its own done()).
local next_id = 0
local method = os.getenv("WRK_METHOD") or "POST"
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  n = 0
  sep = string.find(wrk.path, "?", 1, true) and "&" or "?"
end
function request()
  n = n + 1
  return wrk.format(method, wrk.path .. sep .. "user=w" .. tid .. "_" .. n)
end
