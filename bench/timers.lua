-- bench/timers.lua N [exit]: N one-shot 1 ms timers (tide.after), all created
-- up front; prints `RESULT ms=X` when the last one fires. X is wall time from
-- the first tide.after call, read with tide.hrtime() (not the cached loop
-- clock). The same workload as the peers' luv/timers.lua and node/timers.js.
-- With `exit`, the process ends right after printing (os.exit without closing
-- the Lua state), so that an instruction count under callgrind leaves out the
-- clean-up at exit.
local N = tonumber(arg and arg[1]) or 1000000
local quit = arg and arg[2] == "exit"
local after, hrtime = tide.after, tide.hrtime
local fired = 0
local t0

local function cb()
  fired = fired + 1
  if fired == N then
    print(("RESULT ms=%.1f"):format((hrtime() - t0) * 1e3))
    if quit then io.stdout:flush(); os.exit(0, false) end
  end
end

t0 = hrtime()
for _ = 1, N do after(0.001, cb) end
