-- bench/immediate.lua burst|chain N: setImmediate analogues with tide.immediate.
--   burst: N immediates queued at once (one check phase runs them all)
--   chain: each callback queues the next (N loop iterations)
-- Prints `RESULT ms=X`, wall time from the first tide.immediate call.
-- The same workload as the peers' luv/immediate.lua and node/immediate.js.
local mode = arg and arg[1] or "burst"
local N = tonumber(arg and arg[2]) or 1000000
local immediate, hrtime = tide.immediate, tide.hrtime
local fired = 0
local t0

local function done()
  print(("RESULT ms=%.1f"):format((hrtime() - t0) * 1e3))
end

if mode == "burst" then
  local function cb()
    fired = fired + 1
    if fired == N then done() end
  end
  t0 = hrtime()
  for _ = 1, N do immediate(cb) end
elseif mode == "chain" then
  local cb
  function cb()
    fired = fired + 1
    if fired == N then done() else immediate(cb) end
  end
  t0 = hrtime()
  immediate(cb)
else
  io.stderr:write("usage: tide bench/immediate.lua burst|chain [N]\n")
  tide.exit(2)
end
