-- lua/tide/plugin.lua - plugins: Lua files loaded into environments of
-- their own, with the capabilities they are granted, hooks called under a
-- CPU and memory budget, errors kept to themselves, and reloads (by hand
-- or when the file changes). docs/plugins.md has the threat model.
--
-- The C half (modules/plugin.c) keeps the budgets with a count hook; it
-- fires only in interpreted code, so every function of a plugin is loaded
-- with the JIT off (jit.off(chunk, true) covers the functions it defines).
-- The hook is set only while plugin code may run: every way the host runs
-- a plugin's function goes through run_budgeted (a call) or guard (a task,
-- a timer, a callback), which tell the C half.

local tide = require "tide"
local C = require "tide.plugin.c"
local fs = require "tide.fs"
local jit = require "jit"

local type, pairs, next, select, error, pcall, xpcall, tostring, unpack =
  type, pairs, next, select, error, pcall, xpcall, tostring, unpack
local rawget, rawset, rawequal, setmetatable, getmetatable =
  rawget, rawset, rawequal, setmetatable, getmetatable
local setfenv, loadstring, tonumber = setfenv, loadstring, tonumber
local hrtime = tide.hrtime
local traceback, raw_getmetatable = debug.traceback, debug.getmetatable
local C_enter, C_leave, C_killed, C_mark, C_unmark =
  C.enter, C.leave, C.killed, C.mark, C.unmark
local is_cancel = tide._is_cancel
local stderr = io.stderr

local plugin = {}
local Plugin = {}
Plugin.__index = Plugin

-- string.gsub with a function (or table) replacement calls back into Lua
-- from C with an 8 KiB buffer on the C stack: a replacement that calls
-- gsub again overflows the C stack after about 1,000 levels and crashes
-- the process (LuaJIT checks only its Lua stack). Once plugins may run,
-- the state's gsub (what `s:gsub` and string.gsub reach, in plugins and
-- host alike) refuses to nest deeper than 100 levels.
do
  local gsub, depth = string.gsub, 0
  local function back(ok, ...)
    depth = depth - 1
    if ok then return ... end
    error((...), 0)
  end
  function string.gsub(s, pattern, repl, n)
    local t = type(repl)
    if t ~= "function" and t ~= "table" then return gsub(s, pattern, repl, n) end
    if depth >= 100 then error("string.gsub nested too deeply (more than 100)", 2) end
    depth = depth + 1
    return back(pcall(gsub, s, pattern, repl, n))
  end
end

local DEFAULT_BUDGET = 1            -- CPU seconds per call
local DEFAULT_MEMORY = 64 * 2^20    -- bytes a call may grow the heap by
local DEFAULT_MAX_FAILURES = 5
-- no wall-clock limit by default: tide.timeout costs about as much as the
-- rest of a call
local DEFAULT_TIMEOUT = false
local WATCH_DELAY = 0.05            -- a burst of file events, one reload

local argerror = tide._argerror

-- a string for any error value, without running a plugin's __tostring
local function message(e)
  if type(e) == "string" then return e end
  if type(e) == "number" or type(e) == "boolean" or e == nil then
    return tostring(e)
  end
  return "(error object is a " .. type(e) .. " value)"
end

-- the message with the plugin's part of the traceback
local function handler(e)
  if type(e) ~= "string" then return e end
  local tb = traceback(e, 2)
  local i = tb:find("\n[^\n]*in function 'xpcall'")
  return i and tb:sub(1, i - 1) or tb
end

-- budgeted runs --------------------------------------------------------------

local hooked = false

-- a run that failed or ran out of its budget (killed: the message of
-- that): false, message
local function failed(ok, killed, ...)
  -- the calling task was cancelled (a timeout around the call): that is
  -- the caller's, not a failure of the plugin
  if not ok and is_cancel((...)) then error((...), 0) end
  if killed then
    local e = ...
    if ok or type(e) ~= "string" or not e:find(killed, 1, true) then
      e = killed
    end
    return false, e
  end
  return false, message((...))
end

local function finish(b, prev, ok, ...)
  local killed = C_leave(b, prev)
  if ok and not killed then return true, ... end
  return failed(ok, killed, ...)
end

-- fn(...) under p's budget, in the calling task: true, results or false,
-- message. A plugin keeps the budget of its last call for the next one
-- (C_enter makes a new one when that one is still in use).
local function run_budgeted(p, fn, ...)
  local b, prev = C_enter(p._budget, p.name, p.budget, p.memory)
  p._budget = b
  return finish(b, prev, xpcall(fn, handler, ...))
end

-- the environment ------------------------------------------------------------

-- A copy of a module table for one plugin: functions shared, tables copied,
-- names starting with "_" (internals) left out.
local function copy(t, skip, seen)
  seen = seen or {}
  if seen[t] then return seen[t] end
  local c = {}
  seen[t] = c
  for k, v in pairs(t) do
    if not (type(k) == "string" and (k:sub(1, 1) == "_" or (skip and skip[k])))
    then
      if type(v) == "table" then v = copy(v, nil, seen) end
      if type(v) ~= "userdata" and type(v) ~= "thread" then c[k] = v end
    end
  end
  return c
end

-- After a plugin's pcall (xpcall, coroutine.resume) failed: an exhausted
-- budget and a cancellation go on up, past the plugin's handler (a
-- cancellation also carries the host's task object).
local function rethrow(ok, ...)
  if not ok then
    local e = ...
    if is_cancel(e) then error(e, 0) end
    local k = C_killed()
    if k then
      if type(e) ~= "string" or not e:find(k, 1, true) then e = k end
      error(e, 0)
    end
  end
  return ok, ...
end

-- the same for what a joined task failed with: a message, never the object
local function join_result(ok, e, ...)
  if ok == nil and is_cancel(e) then return nil, tostring(e), "ECANCELED" end
  return ok, e, ...
end

-- fn for the host to call on its own (a task's body, a timer's callback,
-- a callback given to a granted module): what it raises reaches the host
-- as a string (the host's reporter would call tostring on an error object,
-- running the plugin's __tostring where nothing bounds it) or as the
-- cancellation it is
local function settle(ok, ...)
  if ok then return ... end
  local e = ...
  if is_cancel(e) then error(e, 0) end
  error(message(e), 0)
end

-- (C_mark(): plugin code begins in this coroutine, under the count hook;
-- C_unmark(was_set, ...) -> ...: it ended, the hook is as it was before)
local function guard(fn)
  if type(fn) ~= "function" then return fn end -- the host's check says so
  return function(...)
    return settle(C_unmark(C_mark(), xpcall(fn, handler, ...)))
  end
end

-- guard for a callback of the plugin's own timers, immediates and
-- tide.next: once it runs it is a task of version v (one that waits goes
-- on as that task, which unload cancels), and one due after the version
-- was unloaded does not run
local function guard_in(v, fn)
  if type(fn) ~= "function" then return fn end
  local tasks, run = v.tasks, guard(fn)
  return function(...)
    if v.dead then return end
    tasks[tide.current()] = true
    return run(...)
  end
end

-- Proxies for the scheduler's objects: a plugin gets methods, never the
-- tables the scheduler keeps its state in.
local function task_proxy(t)
  return {
    join = function(_, timeout) return join_result(t:join(timeout)) end,
    cancel = function(_, reason) return t:cancel(reason) end,
    status = function() return t:status() end,
  }
end

local function timer_proxy(tm)
  return {
    stop = function() return tm:stop() end,
    again = function(_, s) tm:again(s); return nil end,
    active = function() return tm:active() end,
    close = function() return tm:close() end,
  }
end

local function channel_proxy(ch)
  return {
    send = function(_, v, timeout) return ch:send(v, timeout) end,
    recv = function(_, timeout) return ch:recv(timeout) end,
    close = function() return ch:close() end,
    count = function() return ch:count() end,
  }
end

local function check_fn(f, n, fname)
  if type(f) ~= "function" then
    argerror(n, fname, "function expected, got " .. type(f))
  end
end

-- tide's task calls, given to every plugin
local function tide_table(v)
  local tasks, timers = v.tasks, v.timers
  return {
    spawn = function(fn, ...)
      check_fn(fn, 1, "spawn")
      local t = tide.spawn(guard(fn), ...)
      tasks[t] = true
      return task_proxy(t)
    end,
    sleep = tide.sleep, yield = tide.yield,
    next = function(fn, ...) return tide.next(guard_in(v, fn), ...) end,
    timeout = tide.timeout, now = tide.now, time = tide.time,
    hrtime = tide.hrtime,
    channel = function(n) return channel_proxy(tide.channel(n)) end,
  }, function(env) -- "timer": after, every, immediate
    local t = env.tide
    local function timer(name)
      local f = tide[name]
      t[name] = function(s, fn, ...)
        local tm = f(s, guard_in(v, fn), ...)
        timers[tm] = true
        return timer_proxy(tm)
      end
    end
    timer("after")
    timer("every")
    local imm = tide.immediate
    t.immediate = function(fn, ...)
      local m = imm(guard_in(v, fn), ...)
      timers[m] = true
      return {stop = function() return m:stop() end}
    end
  end
end

-- The membrane: what granted modules return (and pass to the plugin's
-- callbacks) reaches the plugin through proxies, never as the host's own
-- tables or userdata; a method reached through a proxy is a wrapper. Else
-- `conn.__index.read = evil` would change the class every connection of
-- the host uses, and `rawset(conn, i, x)` would tear a host object's state.
-- Proxies hand out reads of public fields only: keys that are not strings,
-- or begin with "_", read as nil; tables read through them are proxies
-- too; writes go to the proxy itself.
local function membrane(handles)
  local to_real = setmetatable({}, {__mode = "k"})     -- proxy -> value
  local to_proxy = setmetatable({}, {__mode = "kv"})   -- value -> proxy
  local fn_out = setmetatable({}, {__mode = "kv"})     -- host fn -> wrapper
  local out_fn = setmetatable({}, {__mode = "k"})      -- wrapper -> host fn
  local fn_in = setmetatable({}, {__mode = "kv"})      -- plugin fn -> wrapper
  local in_fn = setmetatable({}, {__mode = "k"})       -- wrapper -> plugin fn
  local outward, wrap_out, wrap_in, proxy

  local function pack(...) return {n = select("#", ...), ...} end

  -- a host value on its way to the plugin. read: it was read through a
  -- proxy (plain tables get a proxy too); else it was returned by a
  -- granted function or passed to a callback of the plugin's (a host
  -- object is then the plugin's, closed when it is unloaded)
  function outward(x, read)
    local tx = type(x)
    if tx == "function" then return in_fn[x] or wrap_out(x) end
    if tx == "userdata" then
      if raw_getmetatable(x) == nil then return x end -- json.null and the like
      return proxy(x, read)
    end
    if tx == "table" and to_real[x] == nil and
       (read or raw_getmetatable(x) ~= nil) then
      return proxy(x, read)
    end
    return x
  end

  -- a plugin value on its way to the host: a proxy becomes what it stands
  -- for, a function is wrapped (the host calls it with host values), a
  -- table goes as a copy without metatables (no plugin code runs when the
  -- host reads it), its keys and values so converted; seen: the copies
  -- made so far for this call
  local function inward(x, seen)
    local tx = type(x)
    if tx == "table" then
      local r = to_real[x]
      if r ~= nil then return r end
      local c = seen[x]
      if c then return c end
      c = {}
      seen[x] = c
      for k, val in next, x do c[inward(k, seen)] = inward(val, seen) end
      return c
    elseif tx == "function" then
      return out_fn[x] or wrap_in(x)
    end
    return x
  end

  local function out_all(t)
    for i = 1, t.n do t[i] = outward(t[i], false) end
    return unpack(t, 1, t.n)
  end
  local function in_all(t)
    local seen
    for i = 1, t.n do
      local x = t[i]
      if type(x) == "table" or type(x) == "function" then
        seen = seen or {}
        t[i] = inward(x, seen)
      end
    end
    return unpack(t, 1, t.n)
  end

  -- without a table for the common cases: few values, none to convert
  local function out_few(...)
    local n = select("#", ...)
    if n == 0 then return end
    if n == 1 then return (outward((...), false)) end
    if n == 2 then
      local a, b = ...
      return outward(a, false), outward(b, false)
    end
    if n == 3 then
      local a, b, c = ...
      return outward(a, false), outward(b, false), outward(c, false)
    end
    return out_all(pack(...))
  end
  local function plain(...)
    for i = 1, select("#", ...) do
      local t = type((select(i, ...)))
      if t == "table" or t == "function" then return false end
    end
    return true
  end

  function wrap_out(f)
    local w = fn_out[f]
    if w then return w end
    w = function(...)
      local a = ...
      local ta = type(a)
      if ta == "table" then -- a method called on a proxy
        local r = to_real[a]
        if r ~= nil and plain(select(2, ...)) then
          return out_few(f(r, select(2, ...)))
        end
      elseif ta ~= "function" and plain(select(2, ...)) then
        return out_few(f(...))
      end
      return out_few(f(in_all(pack(...))))
    end
    fn_out[f] = w
    out_fn[w] = f
    return w
  end

  function wrap_in(f)
    local w = fn_in[f]
    if w then return w end
    local g = guard(f)
    w = function(...) return in_all(pack(g(out_few(...)))) end
    fn_in[f] = w
    in_fn[w] = f
    return w
  end

  local P = {
    __index = function(px, k)
      -- the public fields and methods only: internals live in array
      -- slots and "_" fields, metamethods in "__" ones
      if type(k) ~= "string" or k:byte(1) == 95 then return nil end
      return outward(to_real[px][k], true)
    end,
    __tostring = function(px) return tostring(to_real[px]) end,
  }
  function proxy(x, read)
    local px = to_proxy[x]
    if not px then
      px = setmetatable({}, P)
      to_real[px] = x
      to_proxy[x] = px
    end
    if not read and handles then handles[x] = true end
    return px
  end

  return function(t) -- a module's copy: its functions wrapped, in place
    local seen = {}
    local function walk(m)
      if seen[m] then return end
      seen[m] = true
      for k, val in next, m do
        if type(val) == "function" then m[k] = wrap_out(val)
        elseif type(val) == "table" then walk(val) end
      end
    end
    walk(t)
    return t
  end
end

-- Capabilities: name -> function(env, p, v) that puts what it grants into
-- the environment.
local capabilities = {}

local function module_grant(var, modname, skip)
  return function(env, p, v)
    env[var] = v.wrap(copy(require(modname), skip))
  end
end

capabilities.net = module_grant("net", "tide.net")
capabilities.dns = module_grant("dns", "tide.dns", {configure = true})
capabilities.fs = module_grant("fs", "tide.fs")
capabilities["fs.read"] = function(env, p, v)
  local r = {}
  for _, k in ipairs{"read_file", "stat", "lstat", "exists", "readdir",
                     "realpath", "readlink", "watch"} do
    r[k] = fs[k]
  end
  r.open = function(path, flags)
    if flags ~= nil and flags ~= "r" then
      error("fs.open: this plugin may only open files for reading", 2)
    end
    return fs.open(path, "r")
  end
  env.fs = v.wrap(r)
end
-- An upper bound of the bytes json.encode would write for v, or nil when
-- it passes limit: a table met twice is written twice, so a small value
-- can stand for an output of any size (40 tables, each holding the next
-- twice: 2^40 values), which cjson would build in one C call, in memory
-- outside the Lua heap and any budget. (The walk is bounded by the limit:
-- plugins' texts are capped at their memory budget, and at 256 MiB.)
local function json_size(v, limit)
  local n = 0
  local function walk(x, depth)
    local t = type(x)
    if t == "string" then n = n + #x + 8
    elseif t ~= "table" then n = n + 24
    else
      n = n + 2
      if depth < 10000 then
        for k, y in next, x do
          if n > limit then return end
          n = n + 1 + (type(k) == "string" and #k + 3 or 24)
          walk(y, depth + 1)
        end
      end
    end
  end
  walk(v, 0)
  if n <= limit then return n end
end

capabilities.json = function(env, p)
  local ok, cjson = pcall(require, "cjson")
  if not ok then error("capability 'json' needs lua-cjson", 0) end
  local j = cjson.new() -- its own settings: a plugin cannot change the host's
  local encode = j.encode
  env.json = {encode = function(v)
                if not json_size(v, math.min(p.memory, 2^28)) then
                  error("json.encode: the text would exceed the plugin's memory budget", 2)
                end
                return encode(v)
              end,
              decode = j.decode, null = j.null,
              encode_sparse_array = j.encode_sparse_array,
              encode_max_depth = j.encode_max_depth,
              decode_max_depth = j.decode_max_depth}
end
capabilities.log = function(env, p)
  local function level(l)
    return function(...)
      local n = select("#", ...)
      local parts = {}
      for i = 1, n do parts[i] = message((select(i, ...))) end
      local text = table.concat(parts, " ")
      if p.log then
        local ok, e = pcall(p.log, p, l, text)
        if not ok then stderr:write("tide.plugin: log handler: ", message(e), "\n") end
      else
        stderr:write("[", p.name, "] ", l, ": ", text, "\n")
      end
    end
  end
  env.log = {debug = level("debug"), info = level("info"),
             warn = level("warn"), error = level("error")}
end
capabilities.timer = function(env, p, v) v.add_timers(env) end

-- plugin.define(name, value): a capability of the program's own. value is
-- a table (each plugin gets a copy, as env[name]) or function(p) that
-- returns the value to put in env[name].
function plugin.define(name, value)
  if type(name) ~= "string" or name == "" then
    argerror(1, "define", "string expected, got " .. type(name))
  end
  if type(value) == "table" then
    capabilities[name] = function(env, p, v) env[name] = v.wrap_program(copy(value)) end
  elseif type(value) == "function" then
    capabilities[name] = function(env, p) env[name] = value(p) end
  else
    argerror(2, "define", "table or function expected, got " .. type(value))
  end
end

local SAFE_BASE = {"assert", "error", "ipairs", "next", "pairs", "select",
                   "tonumber", "tostring", "type", "unpack", "rawequal",
                   "rawget", "rawset"}

local function make_env(p, v)
  local env = {}
  for _, k in ipairs(SAFE_BASE) do env[k] = _G[k] end
  env._G = env
  env._VERSION = _VERSION

  -- copies, so that nothing a plugin does to them reaches the host
  local str = copy(string, {dump = true})
  local rep = string.rep
  str.rep = function(s, n, sep)
    n = tonumber(n) or 0
    local len = #tostring(s) * n
    if sep ~= nil and n > 1 then len = len + #tostring(sep) * (n - 1) end
    if len > p.memory then error("not enough memory", 2) end
    return rep(s, n, sep)
  end
  env.string = str
  env.table = copy(table)
  env.math = copy(math, {randomseed = true})
  env.bit = copy(bit)
  env.os = {time = os.time, clock = os.clock, date = os.date,
            difftime = os.difftime}

  env.pcall = function(f, ...) return rethrow(pcall(f, ...)) end
  env.xpcall = function(f, h, ...)
    return rethrow(xpcall(f, function(e)
      if is_cancel(e) or C_killed() then return e end
      return h(e)
    end, ...))
  end

  -- coroutines: only those the plugin made (the task it runs in belongs to
  -- the scheduler: resuming or yielding it would tear the scheduler's state)
  local own_co = setmetatable({}, {__mode = "k"})
  local create, resume, status, running, yield =
    coroutine.create, coroutine.resume, coroutine.status, coroutine.running,
    coroutine.yield
  local function check_co(c, fname)
    if not own_co[c] then
      error("bad argument #1 to '" .. fname .. "' (coroutine expected)", 3)
    end
  end
  local co = {}
  co.create = function(f)
    local c = create(f)
    own_co[c] = true
    return c
  end
  co.resume = function(c, ...)
    check_co(c, "resume")
    return rethrow(resume(c, ...))
  end
  co.status = function(c)
    check_co(c, "status")
    return status(c)
  end
  co.running = function()
    local c = running()
    if own_co[c] then return c end
    return nil
  end
  co.yield = function(...)
    if not own_co[running()] then
      error("attempt to yield from outside a coroutine", 2)
    end
    return yield(...)
  end
  local function wrapped(ok, ...)
    if ok then return ... end
    error((...), 0)
  end
  co.wrap = function(f)
    local c = co.create(f)
    return function(...) return wrapped(rethrow(resume(c, ...))) end
  end
  env.coroutine = co

  -- metatables: a plugin sees only those it set itself
  local own = setmetatable({}, {__mode = "k"})
  env.setmetatable = function(t, mt)
    -- a table of the host's (a value handed to a hook) keeps its own
    local cur = type(t) == "table" and raw_getmetatable(t)
    if cur and not own[cur] then
      error("bad argument #1 to 'setmetatable' (cannot change the metatable " ..
            "of a value the plugin did not make)", 2)
    end
    local r = setmetatable(t, mt)
    if mt ~= nil then own[mt] = true end
    return r
  end
  env.getmetatable = function(x)
    local mt = raw_getmetatable(x)
    if mt ~= nil and own[mt] then return getmetatable(x) end
    return nil
  end

  env.collectgarbage = function(opt)
    if opt == "count" then return C.memory() / 1024 end
    error("collectgarbage('" .. tostring(opt) .. "') is not allowed in a plugin", 2)
  end

  -- text chunks only, in this plugin's environment, with the JIT off
  local function load_text(chunk, chunkname, mode, fenv)
    if type(chunk) == "function" then
      -- a loop of the host's, which the hook does not stop when the
      -- reader is a host function too (load(os.date) never ends): it
      -- checks the budgets itself, the CPU one as wall time of the loop
      local parts, n, size = {}, 0, 0
      local t0 = hrtime()
      while true do
        local piece = chunk()
        if piece == nil or piece == "" then break end
        if type(piece) ~= "string" then return nil, "reader function must return a string" end
        local k = C_killed()
        if not k and hrtime() - t0 > p.budget then
          k = ("plugin '%s' ran out of its CPU budget (%g s)"):format(p.name, p.budget)
        end
        if k then error(k, 0) end
        size = size + #piece
        if size > p.memory then error("not enough memory", 2) end
        n = n + 1
        parts[n] = piece
      end
      chunk = table.concat(parts)
    end
    if type(chunk) ~= "string" then
      return nil, "bad argument #1 to 'load' (string expected, got " .. type(chunk) .. ")"
    end
    if mode ~= nil and (type(mode) ~= "string" or not mode:find("t", 1, true)) then
      return nil, "attempt to load a text chunk (mode is '" .. tostring(mode) .. "')"
    end
    if chunk:byte(1) == 27 then
      return nil, "attempt to load a binary chunk (plugins load text only)"
    end
    local f, err = loadstring(chunk, p.load_name)
    if not f then return nil, err end
    jit.off(f, true)
    setfenv(f, type(fenv) == "table" and fenv or env)
    return f
  end
  jit.off(load_text)
  env.load = load_text
  env.loadstring = function(s, name) return load_text(s, name) end

  env.print = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = message((select(i, ...))) end
    stderr:write("[", p.name, "] ", table.concat(parts, "\t"), "\n")
  end

  -- host objects tide's modules open for the plugin are its own, closed
  -- at unload; those a program's capability hands it are the program's
  v.wrap = membrane(v.handles)
  v.wrap_program = membrane(nil)
  local t, add_timers = tide_table(v)
  env.tide = t
  v.add_timers = add_timers

  for _, g in ipairs(p.grants) do
    local grant = capabilities[g]
    if not grant then error("unknown capability '" .. g .. "'", 0) end
    grant(env, p, v)
  end

  -- require gives the modules granted, by their names
  local granted = {}
  for _, g in ipairs(p.grants) do
    local var = g:match("^[^.]+")
    if env[var] ~= nil then
      granted[var] = env[var]
      granted["tide." .. var] = env[var]
    end
  end
  granted.cjson = env.json
  env.require = function(name)
    local m = granted[name]
    if m == nil then
      error("module '" .. tostring(name) .. "' is not available to plugin '" ..
            p.name .. "'", 2)
    end
    return m
  end
  return env
end

-- loading ----------------------------------------------------------------------

local function stop_version(v, tasks_too)
  for tm in pairs(v.timers) do pcall(tm.stop, tm) end
  if tasks_too then
    v.dead = true -- (its callbacks still queued do not run)
    -- what its granted modules opened for it: sockets, servers, files,
    -- watchers (a value without a close method is left alone)
    for x in pairs(v.handles) do
      pcall(function() local close = x.close; close(x) end)
    end
    for t in pairs(v.tasks) do
      local s = t:status()
      if s == "ready" or s == "waiting" or s == "running" then
        pcall(t.cancel, t, "plugin unloaded")
      end
    end
  end
end

-- A version of p: its file compiled in a new environment and run; returns
-- the version, or nil and a message naming the file (and line).
local function compile(p)
  -- the file is read and compiled outside any budget: one larger than the
  -- plugin's memory budget is refused before it is read
  local src, err = fs.read_file(p.path, {max = math.floor(math.min(p.memory, 2^30))})
  if not src then return nil, p.path .. ": " .. tostring(err) end
  if src:byte(1) == 27 then
    return nil, p.path .. ": a binary chunk (plugins load text only)"
  end
  if src:sub(1, 1) == "#" then src = "--" .. src end -- a #! line
  local chunk
  chunk, err = loadstring(src, "@" .. p.path)
  if not chunk then return nil, err end
  jit.off(chunk, true)
  local v = {tasks = setmetatable({}, {__mode = "k"}),
             timers = setmetatable({}, {__mode = "k"}),
             handles = setmetatable({}, {__mode = "k"})}
  local ok, env = pcall(make_env, p, v)
  if not ok then return nil, p.path .. ": " .. message(env) end
  setfenv(chunk, env)
  C.source("@" .. p.path, p.name, p.budget, p.memory)
  C.source(p.load_name, p.name, p.budget, p.memory)
  if not hooked then
    hooked = true
    C.hook(true)
    tide._slice_hook(C.slice)
  end
  -- a version that does not load leaves nothing running: the tasks,
  -- timers and handles its code made while it ran are ended
  local function fail(e)
    stop_version(v, true)
    return nil, e
  end
  local hooks
  ok, hooks = run_budgeted(p, chunk)
  if not ok then return fail(hooks) end
  if type(hooks) ~= "table" then
    return fail(p.path .. ": the plugin returned " .. type(hooks) ..
                ", not a table of hooks")
  end
  for k, f in next, hooks do
    if type(f) ~= "function" and k ~= "state" then
      return fail(("%s: hook %s is a %s, not a function"):format(
        p.path, type(k) == "string" and "'" .. k .. "'" or "(a " .. type(k) .. " key)",
        type(f)))
    end
  end
  v.hooks = hooks
  return v
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(2, "load", "table expected, got " .. type(opts))
  end
  local allowed = {name = "string", grants = "table", budget = "number",
                   memory = "number", on_error = "function",
                   max_failures = "number", watch = "boolean",
                   on_reload = "function", log = "function",
                   timeout = {number = true, boolean = true}}
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then argerror(2, "load", "unknown option '" .. tostring(k) .. "'") end
    if type(want) == "table" then
      if not want[type(v)] then
        argerror(2, "load", ("option '%s': number or false expected, got %s"):format(
          k, type(v)))
      end
    elseif type(v) ~= want then
      argerror(2, "load", ("option '%s': %s expected, got %s"):format(k, want, type(v)))
    end
  end
  local to = opts.timeout
  if to == true or (type(to) == "number" and not (to > 0)) then
    argerror(2, "load", "option 'timeout' must be a positive number of seconds or false")
  end
  if opts.budget and not (opts.budget > 0 and opts.budget < math.huge) then
    argerror(2, "load", "option 'budget' must be a positive number of seconds")
  end
  if opts.memory and not (opts.memory > 0) then
    argerror(2, "load", "option 'memory' must be a positive number of bytes")
  end
  if opts.max_failures and not (opts.max_failures >= 1) then
    argerror(2, "load", "option 'max_failures' must be at least 1")
  end
  if opts.grants then
    for i, g in ipairs(opts.grants) do
      if type(g) ~= "string" then
        argerror(2, "load", ("grants[%d]: string expected, got %s"):format(i, type(g)))
      end
    end
  end
  return opts
end

local function report(p, err, hook)
  if p.on_error then
    local ok, e = pcall(p.on_error, p, err, hook)
    if ok then return end
    stderr:write("tide.plugin: on_error of plugin '", p.name, "' failed: ",
                 message(e), "\n")
  end
  stderr:write("tide.plugin: plugin '", p.name, "'",
               hook and (" hook '" .. tostring(hook) .. "'") or "",
               ": ", message(err), "\n")
end

local schedule_reload

-- plugin.load(path, opts) -> p, or nil and a message naming the file
function plugin.load(path, opts)
  if type(path) ~= "string" then
    argerror(1, "load", "string expected, got " .. type(path))
  end
  opts = check_opts(opts)
  local name = opts.name or path:match("([^/]+)%.lua$") or path:match("[^/]+$")
  local p = setmetatable({
    name = name, path = path, failures = 0, reloads = 0,
    grants = opts.grants or {},
    budget = opts.budget or DEFAULT_BUDGET,
    memory = opts.memory or DEFAULT_MEMORY,
    max_failures = opts.max_failures or DEFAULT_MAX_FAILURES,
    timeout = opts.timeout == nil and DEFAULT_TIMEOUT or opts.timeout,
    on_error = opts.on_error, on_reload = opts.on_reload, log = opts.log,
    load_name = "=plugin " .. name .. " (load)",
    _status = "loading",
  }, Plugin)
  local v, err = compile(p)
  if not v then return nil, err end
  p.version = v
  p._status = "loaded"
  if opts.watch then
    local dir, base = path:match("^(.*)/([^/]+)$")
    if not dir then dir, base = ".", path end
    if dir == "" then dir = "/" end
    local w, werr = fs.watch(dir, function(event, entry)
      if entry == base and event ~= "delete" and event ~= "overflow" then
        schedule_reload(p)
      end
    end)
    if not w then
      p:unload()
      return nil, path .. ": cannot watch: " .. tostring(werr)
    end
    w:unref() -- a plugin's watch does not keep the program alive
    p.watcher = w
  end
  return p
end

function schedule_reload(p)
  if p.reload_timer then p.reload_timer:stop() end
  p.reload_timer = tide.after(WATCH_DELAY, function()
    p.reload_timer = nil
    if p._status == "unloaded" then return end
    local ok, err = p:reload()
    if not ok then report(p, "reload failed: " .. message(err), nil) end
    if p.on_reload then
      local cok, e = pcall(p.on_reload, p, ok or false, err)
      if not cok then report(p, "on_reload: " .. message(e), nil) end
    end
  end)
  p.reload_timer:unref()
end

local function check_plugin(self, fname)
  if getmetatable(self) ~= Plugin then
    error(("bad argument #1 to '%s' (plugin expected, got %s)"):format(
      fname, type(self)), 3)
  end
end

-- a call's result through tide.timeout: a hook that waited past the
-- plugin's timeout failed
local function timed(p, to, ok, ...)
  if ok then return ... end
  return false, ("plugin '%s' did not return within %g s"):format(p.name, to)
end

local function call_done(p, hook, ok, ...)
  if ok then return true, ... end
  local err = ...
  p.failures = p.failures + 1
  if p.failures >= p.max_failures and p._status == "loaded" then
    p._status = "disabled"
    stop_version(p.version, false)
  end
  report(p, err, hook)
  return nil, err
end

-- the end of a call without a timeout (run_budgeted and call_done, with
-- no more frames than needed on the way of a call that returned)
local function called(p, hook, b, prev, ok, ...)
  local killed = C_leave(b, prev)
  if ok and not killed then return true, ... end
  return call_done(p, hook, failed(ok, killed, ...))
end

local HUGE = math.huge

-- p:call(hook, ...) -> true, results | nil, message: the hook runs in the
-- calling task, under the plugin's budget
function Plugin:call(hook, ...)
  if getmetatable(self) ~= Plugin then check_plugin(self, "call") end
  local st = self._status
  if st ~= "loaded" then
    return nil, ("plugin '%s' is %s"):format(self.name, st)
  end
  local fn = rawget(self.version.hooks, hook)
  if type(fn) ~= "function" then
    return nil, ("plugin '%s' has no hook '%s'"):format(self.name, message(hook))
  end
  local to = self.timeout
  if to and to ~= HUGE then
    return call_done(self, hook, timed(self, to, tide.timeout(to, run_budgeted, self, fn, ...)))
  end
  local b, prev = C_enter(self._budget, self.name, self.budget, self.memory)
  self._budget = b
  return called(self, hook, b, prev, xpcall(fn, handler, ...))
end

-- p:has(hook) -> whether the current version has that hook
function Plugin:has(hook)
  check_plugin(self, "has")
  local v = self.version
  return v ~= nil and type(rawget(v.hooks, hook)) == "function"
end

-- p:reload() -> true | nil, message: the new version takes over once it
-- loaded and its migrate(old_state) ran; calls running go on in the old
function Plugin:reload()
  check_plugin(self, "reload")
  if self._status == "unloaded" then
    return nil, ("plugin '%s' is unloaded"):format(self.name)
  end
  local v, err = compile(self)
  if not v then return nil, err end
  local old = self.version
  local migrate = rawget(v.hooks, "migrate")
  if type(migrate) == "function" then
    local ok, e = run_budgeted(self, migrate, rawget(old.hooks, "state"))
    if not ok then
      stop_version(v, true)
      return nil, e
    end
  end
  if self._status == "unloaded" then -- unloaded while it compiled
    stop_version(v, true)
    return nil, ("plugin '%s' is unloaded"):format(self.name)
  end
  -- another reload may have taken over while this one compiled or
  -- migrated: the version replaced is the one current now
  old = self.version
  self.version = v
  self.failures = 0
  self.reloads = self.reloads + 1
  self._status = "loaded"
  stop_version(old, false) -- its timers; its tasks finish
  -- ... and, with what it opened, end at unload()
  for t in pairs(old.tasks) do v.tasks[t] = true end
  for x in pairs(old.handles) do v.handles[x] = true end
  return true
end

function Plugin:unload()
  check_plugin(self, "unload")
  if self._status == "unloaded" then return end
  self._status = "unloaded"
  if self.watcher then self.watcher:close(); self.watcher = nil end
  if self.reload_timer then self.reload_timer:stop(); self.reload_timer = nil end
  if self.version then stop_version(self.version, true) end
end

function Plugin:status()
  check_plugin(self, "status")
  return self._status
end

function Plugin:__tostring()
  return ("plugin '%s' (%s)"):format(self.name, self._status)
end

plugin.DEFAULT_BUDGET = DEFAULT_BUDGET
plugin.DEFAULT_MEMORY = DEFAULT_MEMORY
plugin.DEFAULT_MAX_FAILURES = DEFAULT_MAX_FAILURES
plugin.DEFAULT_TIMEOUT = DEFAULT_TIMEOUT

return plugin
