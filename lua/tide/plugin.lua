-- lua/tide/plugin.lua - plugins: Lua files loaded into environments of
-- their own, with the capabilities they are granted, hooks called under a
-- CPU and memory budget, errors kept to themselves, and reloads (by hand
-- or when the file changes). docs/plugins.md has the threat model.
--
-- The C half (modules/plugin.c) keeps the budgets with a count hook; it
-- fires only in interpreted code, so every function of a plugin is loaded
-- with the JIT off (jit.off(chunk, true) covers the functions it defines).

local tide = require "tide"
local C = require "tide.plugin.c"
local fs = require "tide.fs"
local jit = require "jit"

local type, pairs, next, select, error, pcall, xpcall, tostring, unpack =
  type, pairs, next, select, error, pcall, xpcall, tostring, unpack
local rawget, rawset, rawequal, setmetatable, getmetatable =
  rawget, rawset, rawequal, setmetatable, getmetatable
local setfenv, loadstring, tonumber = setfenv, loadstring, tonumber
local traceback, raw_getmetatable = debug.traceback, debug.getmetatable
local C_budget, C_enter, C_leave, C_killed =
  C.budget, C.enter, C.leave, C.killed
local is_cancel = tide._is_cancel
local stderr = io.stderr

local plugin = {}
local Plugin = {}
Plugin.__index = Plugin

local DEFAULT_BUDGET = 1            -- CPU seconds per call
local DEFAULT_MEMORY = 64 * 2^20    -- bytes a call may grow the heap by
local DEFAULT_MAX_FAILURES = 5
local WATCH_DELAY = 0.05            -- a burst of file events, one reload

local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

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

-- budgets of ended calls, for the next calls (no allocation per call)
local spare, nspare = {}, 0

local function finish(b, prev, ok, ...)
  local _, _, killed = C_leave(b, prev)
  if nspare < 64 then
    nspare = nspare + 1
    spare[nspare] = b
  end
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
  if ok then return true, ... end
  return false, message((...))
end

-- fn(...) under p's budget, in the calling task: true, results or false,
-- message
local function run_budgeted(p, fn, ...)
  local b
  if nspare > 0 then
    b = spare[nspare]
    spare[nspare] = nil
    nspare = nspare - 1
  end
  b = C_budget(p.name, p.budget, p.memory, b)
  local prev = C_enter(b)
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
      local t = tide.spawn(fn, ...)
      tasks[t] = true
      return task_proxy(t)
    end,
    sleep = tide.sleep, yield = tide.yield, next = tide.next,
    timeout = tide.timeout, now = tide.now, time = tide.time,
    hrtime = tide.hrtime,
    channel = function(n) return channel_proxy(tide.channel(n)) end,
  }, function(env) -- "timer": after, every, immediate
    local t = env.tide
    local function timer(name)
      local f = tide[name]
      t[name] = function(...)
        local tm = f(...)
        timers[tm] = true
        return timer_proxy(tm)
      end
    end
    timer("after")
    timer("every")
    local imm = tide.immediate
    t.immediate = function(...)
      local m = imm(...)
      timers[m] = true
      return {stop = function() return m:stop() end}
    end
  end
end

-- Capabilities: name -> function(env, p, v) that puts what it grants into
-- the environment.
local capabilities = {}

local function module_grant(var, modname, skip)
  return function(env)
    env[var] = copy(require(modname), skip)
  end
end

capabilities.net = module_grant("net", "tide.net")
capabilities.dns = module_grant("dns", "tide.dns", {configure = true})
capabilities.fs = module_grant("fs", "tide.fs")
capabilities["fs.read"] = function(env)
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
  env.fs = r
end
capabilities.json = function(env)
  local ok, cjson = pcall(require, "cjson")
  if not ok then error("capability 'json' needs lua-cjson", 0) end
  local j = cjson.new() -- its own settings: a plugin cannot change the host's
  env.json = {encode = j.encode, decode = j.decode, null = j.null,
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
    capabilities[name] = function(env) env[name] = copy(value) end
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
    local len = #tostring(s) * (tonumber(n) or 0)
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
      local parts, n = {}, 0
      while true do
        local piece = chunk()
        if piece == nil or piece == "" then break end
        if type(piece) ~= "string" then return nil, "reader function must return a string" end
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
  env.load = load_text
  env.loadstring = function(s, name) return load_text(s, name) end

  env.print = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = message((select(i, ...))) end
    stderr:write("[", p.name, "] ", table.concat(parts, "\t"), "\n")
  end

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

-- A version of p: its file compiled in a new environment and run; returns
-- the version, or nil and a message naming the file (and line).
local function compile(p)
  local src, err = fs.read_file(p.path)
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
             timers = setmetatable({}, {__mode = "k"})}
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
  local hooks
  ok, hooks = run_budgeted(p, chunk)
  if not ok then return nil, hooks end
  if type(hooks) ~= "table" then
    return nil, p.path .. ": the plugin returned " .. type(hooks) ..
                ", not a table of hooks"
  end
  for k, f in next, hooks do
    if type(f) ~= "function" and k ~= "state" then
      return nil, ("%s: hook %s is a %s, not a function"):format(
        p.path, type(k) == "string" and "'" .. k .. "'" or "(a " .. type(k) .. " key)",
        type(f))
    end
  end
  v.hooks = hooks
  return v
end

local function stop_version(v, tasks_too)
  for tm in pairs(v.timers) do pcall(tm.stop, tm) end
  if tasks_too then
    for t in pairs(v.tasks) do
      local s = t:status()
      if s == "ready" or s == "waiting" or s == "running" then
        pcall(t.cancel, t, "plugin unloaded")
      end
    end
  end
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(2, "load", "table expected, got " .. type(opts))
  end
  local allowed = {name = "string", grants = "table", budget = "number",
                   memory = "number", on_error = "function",
                   max_failures = "number", watch = "boolean",
                   on_reload = "function", log = "function"}
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then argerror(2, "load", "unknown option '" .. tostring(k) .. "'") end
    if type(v) ~= want then
      argerror(2, "load", ("option '%s': %s expected, got %s"):format(k, want, type(v)))
    end
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

local check_plugin = function(self, fname)
  if getmetatable(self) ~= Plugin then
    error(("bad argument #1 to '%s' (plugin expected, got %s)"):format(
      fname, type(self)), 3)
  end
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

-- p:call(hook, ...) -> true, results | nil, message: the hook runs in the
-- calling task, under the plugin's budget
function Plugin:call(hook, ...)
  check_plugin(self, "call")
  local st = self._status
  if st ~= "loaded" then
    return nil, ("plugin '%s' is %s"):format(self.name, st)
  end
  local fn = rawget(self.version.hooks, hook)
  if type(fn) ~= "function" then
    return nil, ("plugin '%s' has no hook '%s'"):format(self.name, message(hook))
  end
  return call_done(self, hook, run_budgeted(self, fn, ...))
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
  self.version = v
  self.failures = 0
  self.reloads = self.reloads + 1
  self._status = "loaded"
  stop_version(old, false) -- its timers; its tasks finish
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

return plugin
