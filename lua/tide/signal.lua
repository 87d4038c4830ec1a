-- lua/tide/signal.lua - `require "tide.signal"`: signals delivered to
-- tasks in the poll phase, and graceful shutdown. modules/signal.c is the
-- C half ("tide.signal.c"); docs/signal.md is the manual.

local tide = require "tide"
local C = require "tide.signal.c"

local type, error, tostring, setmetatable, getmetatable, pcall, pairs =
  type, error, tostring, setmetatable, getmetatable, pcall, pairs
local huge = math.huge
local await, complete, hrtime = tide._await, tide._complete, tide.hrtime

local signal = {}

local argerror = tide._argerror

local check_seconds = tide._optional_seconds

-- signals a handler cannot take: KILL and STOP, and the faults the
-- kernel raises in the faulting thread (no loop can run for them)
local UNCATCHABLE = {SIGKILL = true, SIGSTOP = true, SIGSEGV = true,
                     SIGBUS = true, SIGFPE = true, SIGILL = true}

local function check_signal(sig, n, fname)
  local signo, name = C.number(sig)
  if not signo or signo == 0 then
    argerror(n, fname, "unknown signal " .. (type(sig) == "string" and
      ("%q"):format(sig) or tostring(sig)), 4)
  end
  if UNCATCHABLE[name] then
    argerror(n, fname, name .. " cannot be caught", 4)
  end
  return signo, name
end

-- signal.number(sig) -> signo, "SIGNAME" | nil: for names ("SIGTERM",
-- "TERM", "term") and numbers
signal.number = C.number

-- signal.on(sig, fn) -> watcher: fn("SIGTERM") runs as a new task at each
-- delivery, in the poll phase. Watchers stay until closed (the script
-- need not keep them), and do not keep the loop alive: watcher:ref()
-- makes one do so.
function signal.on(sig, fn)
  local signo = check_signal(sig, 1, "on")
  if type(fn) ~= "function" then
    argerror(2, "on", "function expected, got " .. type(fn))
  end
  local w, e, code = C.watch(signo, fn, false)
  if not w then return nil, e, code end
  return w
end

-- the waiter of signal.wait: its close() (timeout, cancel) stops watching
local Waiter = {}
Waiter.__index = Waiter
function Waiter:close()
  if self.w then self.w:close() end
end

-- signal.wait(sig[, timeout]) -> "SIGTERM" | nil, "timed out", "ETIMEDOUT":
-- waits in the current task for the next delivery. Unlike a watcher, a
-- wait keeps the loop alive (a task waits for it).
function signal.wait(sig, timeout)
  local signo = check_signal(sig, 1, "wait")
  timeout = check_seconds(timeout, 2, "wait")
  local waiter = setmetatable({}, Waiter)
  local w, e, code = C.watch(signo, function(name) complete(waiter, name) end, true)
  if not w then return nil, e, code end
  waiter.w = w
  local r, m, c = await(waiter, timeout, "wait")
  w:close()
  return r, m, c
end

-- graceful shutdown ---------------------------------------------------------------

local Graceful = {}
Graceful.__index = Graceful

local function check_graceful(g, fname)
  if getmetatable(g) ~= Graceful then
    error(("bad argument #1 to '%s' (graceful shutdown expected, got %s)")
      :format(fname, type(g)), 3)
  end
end

local function report(err)
  io.stderr:write("tide: graceful shutdown: ", tostring(err), "\n")
end

-- the shutdown itself, in its own task
local function shut_down(g, name)
  for i = 1, #g.handles do
    local ok, err = pcall(g.handles[i].close, g.handles[i])
    if not ok then report(err) end
  end
  if g.on_shutdown then
    local ok, err = pcall(g.on_shutdown, name)
    if not ok then report(err) end
  end
  local deadline = hrtime() + g.grace
  while g.inflight > 0 do
    local left = deadline - hrtime()
    if left <= 0 or not g.idle:wait(left) then break end
  end
  if g.inflight > 0 then -- the grace period is over: cancel what is left
    for t in pairs(g.tasks) do t:cancel("shutting down") end
  end
  if g.exit then tide.exit(0) end
end

-- g:shutdown([name]): begins the shutdown now (what the first signal
-- does); a second call (or signal) exits at once.
function Graceful:shutdown(name)
  check_graceful(self, "shutdown")
  if self.stopping then
    local signo = name and C.number(name)
    return tide.exit(signo and 128 + signo or 1)
  end
  self.stopping = true
  tide.spawn(shut_down, self, name)
end

-- g:track(fn) -> function: calls of it (handler tasks) are in-flight
-- work that the shutdown waits for
function Graceful:track(fn)
  check_graceful(self, "track")
  if type(fn) ~= "function" then
    argerror(1, "track", "function expected, got " .. type(fn))
  end
  local g = self
  local function finish(t, ok, ...)
    g.tasks[t] = nil
    g.inflight = g.inflight - 1
    if g.inflight == 0 then g.idle:broadcast() end
    if not ok then error((...), 0) end
    return ...
  end
  return function(...)
    local t = tide.current()
    g.tasks[t] = true
    g.inflight = g.inflight + 1
    return finish(t, pcall(fn, ...))
  end
end

-- g:add(handle): a handle (a server) closed when the shutdown begins
function Graceful:add(h)
  check_graceful(self, "add")
  if (type(h) ~= "table" and type(h) ~= "userdata") or not h.close then
    argerror(1, "add", "a handle with close() expected, got " .. type(h))
  end
  self.handles[#self.handles + 1] = h
  return h
end

-- g:close(): stops listening for the signals
function Graceful:close()
  check_graceful(self, "close")
  for i = 1, #self.watchers do self.watchers[i]:close() end
end

local GRACEFUL_OPTS = {grace = true, signals = true, on_shutdown = true,
                       exit = true}

-- signal.graceful{grace=10, signals={"SIGTERM", "SIGINT"}, on_shutdown=fn,
-- exit=true} -> g. The first of the signals closes the handles given to
-- g:add (servers stop accepting), calls on_shutdown(name), waits up to
-- grace seconds for the calls of the functions made by g:track (handler
-- tasks) to end, cancels those still running, and exits with status 0
-- (unless exit=false). A second signal exits at once with 128 + its
-- number.
function signal.graceful(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    argerror(1, "graceful", "options table expected, got " .. type(opts))
  end
  for k in pairs(opts) do
    if not GRACEFUL_OPTS[k] then
      argerror(1, "graceful", "unknown option '" .. tostring(k) .. "'")
    end
  end
  local grace = opts.grace
  if grace == nil then grace = 10 end
  grace = check_seconds(grace, 1, "graceful", "option 'grace'")
  if opts.on_shutdown ~= nil and type(opts.on_shutdown) ~= "function" then
    argerror(1, "graceful", "option 'on_shutdown' must be a function")
  end
  local sigs = opts.signals or {"SIGTERM", "SIGINT"}
  if type(sigs) ~= "table" then
    argerror(1, "graceful", "option 'signals' must be a list of signals")
  end
  local g = setmetatable({grace = grace, on_shutdown = opts.on_shutdown,
                          exit = opts.exit ~= false, stopping = false,
                          inflight = 0, tasks = {}, idle = tide.cond(),
                          handles = {}, watchers = {}}, Graceful)
  for i = 1, #sigs do
    local signo = check_signal(sigs[i], 1, "graceful")
    g.watchers[i] = C.watch(signo, function(name) g:shutdown(name) end, false)
  end
  return g
end

return signal
