-- examples/demo.lua - a tour of the core: timers, tasks, channels and
-- the loop's phases, each step printed as it happens. Ends by itself.
local t0 = tide.now()
local function say(fmt, ...)
  print(("[%6.1f ms] %-7s " .. fmt):format((tide.now() - t0) * 1000,
                                           tide.phase(), ...))
end

say("tide %s: the main script is the first task", tide.version)

-- next runs before any other callback; from the main script, the first
-- pass of the loop runs due timers (phase 1) before immediates (phase 4).
tide.after(0, function() say("after(0): the timers phase of the first pass") end)
tide.immediate(function() say("immediate: the check phase") end)
tide.next(function() say("next: before any other callback") end)

-- A producer and two consumers talking through a channel.
local jobs = tide.channel(2)
local results = tide.channel()
local function worker(name)
  while true do
    local n = jobs:recv()
    if not n then return name .. " done" end
    tide.sleep(0.01 * n) -- pretend to work; other tasks run meanwhile
    results:send(("%s squared %d = %d"):format(name, n, n * n))
  end
end
local a, b = tide.spawn(worker, "worker A"), tide.spawn(worker, "worker B")
tide.spawn(function()
  for n = 1, 4 do jobs:send(n) end
  jobs:close()
end)
for _ = 1, 4 do say("%s", results:recv()) end
say("joined: %s, %s", select(2, a:join()), select(2, b:join()))

-- A repeating timer that does not drift, stopped after five beats.
local beats = 0
local ticker
ticker = tide.every(0.02, function()
  beats = beats + 1
  say("every(0.02) beat %d", beats)
  if beats == 5 then ticker:stop() end
end)

-- A deadline around a slow call, and a task cancelled while it sleeps.
say("timeout: %s", select(2, tide.timeout(0.03, tide.sleep, 10)))
local sleeper = tide.spawn(function() tide.sleep(60) end)
tide.sleep(0.01)
sleeper:cancel("not needed")
say("cancelled sleeper: %s", select(2, sleeper:join()))

tide.sleep(0.1)
local s = tide.stats()
say("%d loop iterations, %d timer callbacks, utilization %.0f%%",
    s.iterations, s.phases.timers.callbacks, s.utilization * 100)
