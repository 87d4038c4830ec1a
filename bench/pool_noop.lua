-- bench/pool_noop.lua N [CONC]: N empty round trips through the worker
-- pool (submit a no-op job, resume the task), CONC tasks at a time
-- (default 1: each round trip waits for the previous one).
-- Prints `RESULT ops=N ms=X ops_per_s=Y`.
local pool = require "tide.pool"
local N = tonumber(arg and arg[1]) or 100000
local CONC = tonumber(arg and arg[2]) or 1
local hrtime, noop = tide.hrtime, pool.noop

local t0 = hrtime()
local per = math.floor(N / CONC)
local tasks = {}
for c = 1, CONC do
  tasks[c] = tide.spawn(function() for _ = 1, per do noop() end end)
end
for c = 1, CONC do assert(tasks[c]:join()) end
local ms = (hrtime() - t0) * 1e3
print(("RESULT ops=%d ms=%.1f ops_per_s=%.0f"):format(per * CONC, ms, per * CONC / ms * 1e3))
