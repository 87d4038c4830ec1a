-- bench/luv_work.lua N [CONC]: the same as pool_noop.lua with LuaJIT + luv:
-- N empty uv.new_work round trips, CONC in flight (run with luajit).
local uv = require "luv"
local N = tonumber(arg and arg[1]) or 100000
local CONC = tonumber(arg and arg[2]) or 1
local done = 0
local per = math.floor(N / CONC)
local t0 = uv.hrtime()
local work
work = uv.new_work(function() end, function()
  done = done + 1
  if done < per * CONC then
    if done + CONC <= per * CONC then uv.queue_work(work) end
  else
    local ms = (uv.hrtime() - t0) / 1e6
    print(("RESULT ops=%d ms=%.1f ops_per_s=%.0f"):format(done, ms, done / ms * 1e3))
  end
end)
for _ = 1, CONC do uv.queue_work(work) end
uv.run()
