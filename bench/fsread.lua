-- bench/fsread.lua FILE [N] [CONC]: N reads of FILE with tide.fs.read_file
-- (one pool job each: open, fstat, read, close), CONC tasks reading at
-- once. The same workload as the peers' luv/fsread.lua and node/fsread.js.
-- Prints `RESULT ops=N ms=X ops_per_s=Y`.
local fs = require "tide.fs"
local path = assert(arg[1], "usage: fsread.lua FILE [N] [CONC]")
local N = tonumber(arg[2]) or 100000
local CONC = tonumber(arg[3]) or 64
local size = #assert(fs.read_file(path))
local hrtime, read_file = tide.hrtime, fs.read_file

local t0 = hrtime()
local per = math.floor(N / CONC)
local tasks = {}
for c = 1, CONC do
  tasks[c] = tide.spawn(function()
    for _ = 1, per do
      local data = read_file(path)
      if #data ~= size then error("short read: " .. #data) end
    end
  end)
end
for c = 1, CONC do assert(tasks[c]:join()) end
local n = per * CONC
local ms = (hrtime() - t0) * 1e3
print(("RESULT ops=%d ms=%.1f ops_per_s=%.0f"):format(n, ms, n / ms * 1e3))
