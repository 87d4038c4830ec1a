-- bench/process_run.lua N K: process.run{"true"} N times, K at a time;
-- prints `RESULT runs_per_s=X`. bench/process_run.js is the Node.js peer
-- (child_process.execFile), bench/process_run.sh runs both.
local process = require "tide.process"
local N = tonumber(arg[1]) or 1000
local K = tonumber(arg[2]) or 8
local started = 0
local t0 = tide.hrtime()
local tasks = {}
for k = 1, K do
  tasks[k] = tide.spawn(function()
    while started < N do
      started = started + 1
      local r = assert(process.run{"true"})
      assert(r.code == 0)
    end
  end)
end
for k = 1, K do assert(tasks[k]:join()) end
print(("RESULT runs_per_s=%.0f"):format(N / (tide.hrtime() - t0)))
