-- bench/spawn_join.lua N: N times, tide.spawn a task that returns a value at
-- once and join it from the main task (one op = spawn + 2 context switches +
-- join). Prints `RESULT ops=N ms=X ops_per_s=Y`.
local N = tonumber(arg and arg[1]) or 1000000
local spawn, hrtime = tide.spawn, tide.hrtime

local function work(i) return i end

local t0 = hrtime()
for i = 1, N do
  local ok, v = spawn(work, i):join()
  if not ok or v ~= i then error("join failed at " .. i .. ": " .. tostring(v)) end
end
local ms = (hrtime() - t0) * 1e3
print(("RESULT ops=%d ms=%.1f ops_per_s=%.0f"):format(N, ms, N / ms * 1e3))
