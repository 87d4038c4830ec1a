-- bench/sleep0.lua N: N tide.sleep(0) round trips in one task (each is one
-- loop iteration: arm the task's timer, park, fire in the next timers phase,
-- resume). Prints `RESULT ops=N ms=X ops_per_s=Y`.
local N = tonumber(arg and arg[1]) or 1000000
local sleep, hrtime = tide.sleep, tide.hrtime

local t0 = hrtime()
for _ = 1, N do sleep(0) end
local ms = (hrtime() - t0) * 1e3
print(("RESULT ops=%d ms=%.1f ops_per_s=%.0f"):format(N, ms, N / ms * 1e3))
