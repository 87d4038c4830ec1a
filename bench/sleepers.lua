-- bench/sleepers.lua N: memory per parked task. Spawns N tasks that each
-- tide.sleep(1) at the same time; once all of them are parked, prints the
-- process's VmRSS (/proc/self/status) before and after creating them:
--   RESULT tasks=N rss_before_kib=A rss_after_kib=B bytes_per_task=C
-- and exits at once with tide.exit(0) (the sleeps never complete).
-- A full GC runs before each reading, so only live memory is left to count
-- (freed memory is not necessarily returned to the OS, so RSS can only
-- over-state). An INFO line also gives the Lua heap (collectgarbage "count").
local N = tonumber(arg and arg[1]) or 100000
local spawn, sleep = tide.spawn, tide.sleep

local function vmrss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local parked = 0
local function sleeper()
  parked = parked + 1
  sleep(1)
end

collectgarbage("collect")
collectgarbage("collect")
local heap0, rss0 = collectgarbage("count"), vmrss_kib()

for _ = 1, N do spawn(sleeper) end
tide.yield() -- runs after every task spawned above has run up to its sleep

collectgarbage("collect")
collectgarbage("collect")
local heap1, rss1 = collectgarbage("count"), vmrss_kib()
if parked ~= N then error(("only %d of %d tasks parked"):format(parked, N)) end
print(("RESULT tasks=%d rss_before_kib=%d rss_after_kib=%d bytes_per_task=%.0f")
  :format(N, rss0, rss1, (rss1 - rss0) * 1024 / N))
print(("INFO lua_heap_kib_before=%.0f lua_heap_kib_after=%.0f lua_heap_bytes_per_task=%.0f")
  :format(heap0, heap1, (heap1 - heap0) * 1024 / N))
io.stdout:flush()
tide.exit(0)
