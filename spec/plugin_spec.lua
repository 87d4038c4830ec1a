-- spec/plugin_spec.lua - tide.plugin (API.md, "Plugins"; docs/plugins.md):
-- loading and its errors, capabilities, every sandbox escape the threat
-- model lists (each its own test), CPU and memory budgets, error isolation
-- and the failure policy, reload (with migrate and calls in flight),
-- reload on file change, and unload; then "hostile plugins": attacks tried
-- against the sandbox, each its own test named after what it pins.
--
-- Plugins are written to a temporary folder. The tests run in tide's main
-- task, so they may wait; reloads on change are awaited through on_reload.

local S = require "spec.support"
local fs = require "tide.fs"
local plugin = require "tide.plugin"

local dir
local watchdog
local n = 0

-- writes a plugin file and returns its path
local function write(code, name)
  n = n + 1
  local path = dir .. "/" .. (name or ("p" .. n .. ".lua"))
  S.write_file(path, code)
  return path
end

-- loads code as a plugin (options merged); fails the test if it does not
local function load(code, opts)
  local p, err = plugin.load(write(code), opts)
  assert(p, err)
  return p
end

local function quiet(opts)
  opts = opts or {}
  opts.on_error = opts.on_error or function() end
  return opts
end

-- the result of running `body` as the hook `run` of a fresh plugin
local function run_in_plugin(body, opts, ...)
  local p = load("return { run = function(...) " .. body .. " end }", quiet(opts))
  return p:call("run", ...)
end

local function elapsed(fn)
  local t0 = tide.hrtime()
  local r = {fn()}
  return tide.hrtime() - t0, r
end

setup(function()
  dir = assert(fs.mkdtemp("/tmp/tide-plugin-"))
  watchdog = S.watchdog("plugin_spec")
end)

teardown(function()
  watchdog:stop()
  for _, name in ipairs(fs.readdir(dir) or {}) do fs.remove(dir .. "/" .. name) end
  fs.remove(dir)
end)

describe("plugin.load", function()
  it("loads a file that returns hooks, and calls them with results", function()
    local p = load([[
      local calls = 0
      return { greet = function(who) calls = calls + 1; return "hi " .. who, calls end }
    ]])
    assert.equal("loaded", p:status())
    assert.truthy(p.name:match("^p%d+$"))
    assert.same({true, "hi ann", 1}, {p:call("greet", "ann")})
    assert.same({true, "hi bob", 2}, {p:call("greet", "bob")})
    assert.equal(0, p.failures)
  end)

  it("takes its name from the options", function()
    local p = load("return {}", {name = "custom"})
    assert.equal("custom", p.name)
    assert.equal("plugin 'custom' (loaded)", tostring(p))
  end)

  it("reports a missing file with its path", function()
    local p, err = plugin.load(dir .. "/missing.lua")
    assert.is_nil(p)
    assert.truthy(err:find(dir .. "/missing.lua", 1, true), err)
    assert.truthy(err:find("ENOENT", 1, true), err)
  end)

  it("reports a syntax error with file and line", function()
    local path = write("return {\n  x = function() end,\n  y = = 1 }")
    local p, err = plugin.load(path)
    assert.is_nil(p)
    assert.truthy(err:find(path .. ":3:", 1, true), err)
  end)

  it("reports an error raised while loading with file and line", function()
    local path = write("local x = 1\nerror('boom')\nreturn {}")
    local p, err = plugin.load(path)
    assert.is_nil(p)
    assert.truthy(err:find(path .. ":2: boom", 1, true), err)
  end)

  it("refuses a plugin that returns something other than a table", function()
    local path = write("return 42")
    local p, err = plugin.load(path)
    assert.is_nil(p)
    assert.truthy(err:find(path, 1, true), err)
    assert.truthy(err:find("returned number", 1, true), err)
  end)

  it("refuses a hook that is not a function", function()
    local path = write("return { on_message = 'nope' }")
    local p, err = plugin.load(path)
    assert.is_nil(p)
    assert.truthy(err:find("hook 'on_message' is a string", 1, true), err)
  end)

  it("refuses a binary chunk file", function()
    local path = write(string.dump(function() return {} end))
    local p, err = plugin.load(path)
    assert.is_nil(p)
    assert.truthy(err:find("binary chunk", 1, true), err)
  end)

  it("refuses an unknown capability", function()
    local p, err = plugin.load(write("return {}"), {grants = {"rocket"}})
    assert.is_nil(p)
    assert.truthy(err:find("unknown capability 'rocket'", 1, true), err)
  end)

  it("raises on misuse", function()
    assert.has_error(function() plugin.load(42) end,
      "bad argument #1 to 'load' (string expected, got number)")
    local path = write("return {}")
    assert.has_error(function() plugin.load(path, {budget = "x"}) end)
    assert.has_error(function() plugin.load(path, {budget = -1}) end)
    assert.has_error(function() plugin.load(path, {colour = 1}) end)
    assert.has_error(function() plugin.load(path, {grants = {1}}) end)
  end)

  it("answers a call of a hook it does not have without counting a failure", function()
    local p = load("return {}")
    local ok, err = p:call("nothing")
    assert.is_nil(ok)
    assert.equal("plugin '" .. p.name .. "' has no hook 'nothing'", err)
    assert.equal(0, p.failures)
    assert.is_false(p:has("nothing"))
  end)
end)

describe("capabilities", function()
  it("gives safe libraries and tide's task calls by default", function()
    local ok, r = run_in_plugin([[
      tide.sleep(0.001)
      local ch = tide.channel(1)
      local t = tide.spawn(function() ch:send(string.upper("x") .. math.floor(2.5)) end)
      t:join()
      return ch:recv() .. table.concat({"a", "b"}) .. type(os.time()) .. type(os.clock())
    ]])
    assert.is_true(ok, r)
    assert.equal("X2abnumbernumber", r)
  end)

  it("gives timers only with the timer grant", function()
    local ok, r = run_in_plugin("return tide.after == nil and tide.every == nil")
    assert.is_true(ok)
    assert.is_true(r)
    ok, r = run_in_plugin([[
      local ch = tide.channel(1)
      tide.after(0.001, function() ch:send("fired") end)
      return ch:recv(2)
    ]], {grants = {"timer"}})
    assert.is_true(ok, r)
    assert.equal("fired", r)
  end)

  it("grants json, log and fs.read", function()
    local logged = {}
    local path = write("file contents")
    local ok, r = run_in_plugin([[
      local path = ...
      log.info("hello", 1)
      assert(fs.write_file == nil and fs.remove == nil)
      local data = assert(fs.read_file(path))
      return json.encode({data = data})
    ]], {grants = {"json", "log", "fs.read"},
         log = function(p, level, text) logged[#logged + 1] = level .. " " .. text end},
      path)
    assert.is_true(ok, r)
    assert.equal('{"data":"file contents"}', r)
    assert.same({"info hello 1"}, logged)
  end)

  it("lets require reach granted modules only", function()
    local ok, r = run_in_plugin("return require('json') == json and require('tide.net') == net",
                                {grants = {"json", "net"}})
    assert.is_true(ok, r)
    assert.is_true(r)
    ok, r = run_in_plugin("return require('tide.fs')")
    assert.is_nil(ok)
    assert.truthy(r:find("module 'tide.fs' is not available", 1, true), r)
  end)

  it("grants the program's own capabilities with plugin.define", function()
    local seen = {}
    plugin.define("service", {send = function(x) seen[#seen + 1] = x; return #seen end,
                              version = "1.0"})
    plugin.define("whoami", function(p) return function() return p.name end end)
    local ok, a, b, c = run_in_plugin([[
      service.version = "hacked"
      return service.send("msg"), whoami(), service.version
    ]], {grants = {"service", "whoami"}, name = "svc"})
    assert.is_true(ok, a)
    assert.same({1, "svc", "hacked"}, {a, b, c})
    assert.same({"msg"}, seen)
    -- the copy changed, not the program's table
    ok, a = run_in_plugin("return service.version", {grants = {"service"}})
    assert.equal("1.0", a)
    assert.has_error(function() plugin.define(1, {}) end)
    assert.has_error(function() plugin.define("x", 1) end)
  end)
end)

describe("the sandbox", function()
  local function denied(body)
    local ok, err = run_in_plugin(body)
    assert.is_nil(ok, "the plugin got through: " .. tostring(err))
    return err
  end

  it("has no os.execute", function()
    local err = denied("os.execute('touch " .. "/tmp/tide-plugin-escaped') return true")
    assert.truthy(err:find("execute", 1, true), err)
    assert.is_false(fs.exists("/tmp/tide-plugin-escaped"))
  end)

  it("has no io.open", function()
    local err = denied("return io.open('/etc/passwd')")
    assert.truthy(err:find("io", 1, true), err)
  end)

  it("cannot require a C module", function()
    local err = denied("return require('cjson')")
    assert.truthy(err:find("not available", 1, true), err)
    err = denied("return require('tide.plugin.c')")
    assert.truthy(err:find("not available", 1, true), err)
  end)

  it("has no package.loadlib", function()
    local err = denied("return package.loadlib('libc.so.6', 'system')")
    assert.truthy(err:find("package", 1, true), err)
  end)

  it("has no ffi", function()
    denied("return require('ffi')")
    local ok, r = run_in_plugin("return ffi == nil")
    assert.is_true(r)
  end)

  it("has no debug", function()
    local err = denied("return debug.getregistry()")
    assert.truthy(err:find("debug", 1, true), err)
    denied("return require('debug')")
  end)

  it("has no jit", function()
    local err = denied("jit.on() return true")
    assert.truthy(err:find("jit", 1, true), err)
    denied("return require('jit')")
  end)

  it("cannot load bytecode", function()
    local ok, r = run_in_plugin("return string.dump == nil")
    assert.is_true(r)
    -- bytecode made by the host and handed in
    local bc = string.dump(function() return "escaped" end)
    ok, r = run_in_plugin([[
      local bc = ...
      local f, err = load(bc)
      assert(f == nil, "load took bytecode")
      local g, err2 = loadstring(bc)
      assert(g == nil, "loadstring took bytecode")
      local pieces = {bc:sub(1, 3), bc:sub(4)}
      local i = 0
      local h = load(function() i = i + 1; return pieces[i] end)
      assert(h == nil, "a reader took bytecode")
      assert(load("return 1", "x", "b") == nil, "mode b")
      return err
    ]], nil, bc)
    assert.is_true(ok, r)
    assert.truthy(r:find("binary chunk", 1, true), r)
  end)

  it("loads text in the plugin's own environment, with budgets", function()
    local ok, r = run_in_plugin([[
      secret = 1
      local f = assert(load("return secret, os.execute"))
      return f()
    ]])
    assert.is_true(ok, r)
    assert.equal(1, r)
    local t0 = tide.hrtime()
    ok, r = run_in_plugin("local f = load('while true do end') f()", {budget = 0.05})
    assert.is_nil(ok)
    assert.truthy(r:find("CPU budget", 1, true), r)
    assert.is_true(tide.hrtime() - t0 < 1)
  end)

  it("cannot reach the host's or another plugin's environment", function()
    host_secret_global = "host"
    local a = load("shared_name = 'a'\nreturn { get = function() return shared_name end }")
    local ok, r = run_in_plugin([[
      assert(getfenv == nil and setfenv == nil, "getfenv/setfenv are there")
      assert(host_secret_global == nil, "host global visible")
      assert(shared_name == nil, "another plugin's global visible")
      assert(_G.tide.exit == nil and _G.tide.on_error == nil)
      shared_name = "b"
      return rawget(_G, "string") ~= nil
    ]])
    assert.is_true(ok, r)
    assert.same({true, "a"}, {a:call("get")})
    assert.is_nil(rawget(_G, "shared_name"))
    host_secret_global = nil
  end)

  it("cannot change the string metatable or the shared libraries", function()
    local ok, r = run_in_plugin([[
      assert(getmetatable("") == nil, "the string metatable is visible")
      string.upper = function() return "pwned" end
      string.rep = nil
      table.insert = nil
      math.floor = nil
      os.time = nil
      coroutine.create = nil
      return ("x"):upper()
    ]])
    assert.is_true(ok, r)
    assert.equal("X", r) -- methods of strings are the real ones
    assert.equal("X", ("x"):upper())
    assert.equal("X", string.upper("x"))
    assert.is_function(string.rep)
    assert.is_function(table.insert)
    assert.is_function(math.floor)
    assert.is_function(os.time)
    assert.is_function(coroutine.create)
    -- another plugin still has its own, untouched
    ok, r = run_in_plugin("return string.upper('y') .. math.floor(1.5)")
    assert.equal("Y1", r)
  end)

  it("cannot stop the garbage collector", function()
    local err = denied("collectgarbage('stop') return true")
    assert.truthy(err:find("collectgarbage('stop') is not allowed", 1, true), err)
    local ok, kb = run_in_plugin("return collectgarbage('count')")
    assert.is_true(ok)
    assert.is_number(kb)
  end)

  it("stops `while true do pcall(f) end` within its budget", function()
    local secs, r = elapsed(function()
      return run_in_plugin([[
        local function f() while true do end end
        while true do pcall(f) end
      ]], {budget = 0.1})
    end)
    assert.is_nil(r[1])
    assert.truthy(r[2]:find("ran out of its CPU budget (0.1 s)", 1, true), r[2])
    assert.is_true(secs >= 0.1 and secs < 0.5, "took " .. secs)
  end)

  it("stops loops that catch with xpcall or coroutines", function()
    local _, r = elapsed(function()
      return run_in_plugin([[
        local function f() while true do end end
        while true do xpcall(f, function(e) return e end) end
      ]], {budget = 0.05})
    end)
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    _, r = elapsed(function()
      return run_in_plugin([[
        while true do coroutine.resume(coroutine.create(function() while true do end end)) end
      ]], {budget = 0.05})
    end)
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    local secs
    secs, r = elapsed(function()
      return run_in_plugin([[
        local f = coroutine.wrap(function() while true do pcall(error, "x") end end)
        while true do pcall(f) end
      ]], {budget = 0.05})
    end)
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    assert.is_true(secs < 0.5, "took " .. secs)
  end)

  it("stops nesting that would overflow the C stack: gsub and coroutines", function()
    -- each would crash the process (C stack) without the limits
    local ok, err = run_in_plugin([[
      local function f() ("a"):gsub(".", f) end
      f()
    ]], {budget = 1})
    assert.is_nil(ok)
    assert.truthy(err:find("gsub nested too deeply", 1, true), err)
    ok, err = run_in_plugin([[
      local function f() local c = coroutine.create(f); assert(coroutine.resume(c)) end
      f()
    ]], {budget = 1})
    assert.is_nil(ok)
    assert.truthy(err:find("nested too deeply", 1, true), err)
    assert.equal("pong", select(2, load("return { ping = function() return 'pong' end }"):call("ping")))
  end)

  it("refuses to json.encode a value whose text would pass its memory budget", function()
    -- 40 tables, each holding the next twice: 2^40 values in one C call
    local ok, err = run_in_plugin([[
      local t = "x"
      for i = 1, 40 do t = {t, t} end
      return #json.encode(t)
    ]], {grants = {"json"}, memory = 2^20})
    assert.is_nil(ok)
    assert.truthy(err:find("exceed the plugin's memory budget", 1, true), err)
    local ok2, n = run_in_plugin([[
      local t = "x"
      for i = 1, 10 do t = {t, t} end
      return #json.encode(t)
    ]], {grants = {"json"}, memory = 2^20})
    assert.is_true(ok2)
    assert.equal(#require("tide.json").encode((function()
      local t = "x"
      for _ = 1, 10 do t = {t, t} end
      return t
    end)()), n)
  end)

  it("stops a memory bomb with 'not enough memory' and keeps serving", function()
    local other = load("return { ping = function() return 'pong' end }")
    local before = collectgarbage("count")
    local ok, err = run_in_plugin([[
      local t = {}
      for i = 1, 1e9 do t[i] = {i, i, i, i} end
    ]], {memory = 8 * 2^20, budget = 5})
    assert.is_nil(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
    ok, err = run_in_plugin([[
      local t = {}
      while true do pcall(function() for i = 1, 1e9 do t[#t + 1] = ("x"):rep(100) .. i end end) end
    ]], {memory = 8 * 2^20, budget = 5})
    assert.is_nil(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
    ok, err = run_in_plugin("return string.rep('x', 2^30)", {memory = 8 * 2^20})
    assert.is_nil(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
    -- the host goes on: another plugin answers, timers fire, memory returns
    assert.same({true, "pong"}, {other:call("ping")})
    local ch = tide.channel(1)
    tide.after(0.001, function() ch:send("tick") end)
    assert.equal("tick", ch:recv(2))
    collectgarbage()
    assert.is_true(collectgarbage("count") < before + 4096)
  end)

  it("leaves a single huge allocation to the host's memory limit", function()
    local path = write("return { run = function() return #(('x'):rep(512 * 2^20)) end }")
    local out, err, rc = S.run(S.shell_quote(S.TIDE) .. " --memory-limit 128M -e " ..
      S.shell_quote(([[
        local p = assert(require("tide.plugin").load(%q, {on_error = function() end,
                                                          memory = 2^30}))
        print(p:call("run"))
        print(#("y"):rep(2^20))
      ]]):format(path)))
    assert.equal(0, rc, err)
    assert.truthy(out:find("^nil\t[^\n]*not enough memory\n1048576\n$"), out)
  end)

  it("shows a plugin only the metatables it set", function()
    local ok, r = run_in_plugin([[
      local mt = {__index = function() return 7 end}
      local t = setmetatable({}, mt)
      assert(getmetatable(t) == mt)
      local ch = tide.channel(1)
      assert(getmetatable(ch) == nil)
      return t.anything
    ]])
    assert.is_true(ok, r)
    assert.equal(7, r)
  end)

  it("cannot touch the coroutine of the task it runs in", function()
    local ok, r = run_in_plugin([[
      assert(coroutine.running() == nil, "the task's coroutine is visible")
      local ok, err = pcall(coroutine.yield, "escape")
      assert(not ok and err:find("outside a coroutine"), err)
      local c = coroutine.create(function(x) local y = coroutine.yield(x + 1) return y * 2 end)
      local _, a = coroutine.resume(c, 1)
      local _, b = coroutine.resume(c, 10)
      local w = coroutine.wrap(function() coroutine.yield(coroutine.running() ~= nil) end)
      return a + b + (w() and 1000 or 0), coroutine.status(c)
    ]])
    assert.is_true(ok, r)
    assert.equal(1022, r)
  end)

  it("cannot catch the cancellation of its call, nor keep the task object", function()
    local p = load([[
      local stash
      return {
        run = function()
          while true do
            local ok, e = pcall(tide.sleep, 10)
            if not ok then stash = e end
            xpcall(tide.sleep, function(e) stash = e end, 10)
          end
        end,
        get = function() return type(stash) end,
      }
    ]], quiet())
    local ok, err, code = tide.timeout(0.02, function() return p:call("run") end)
    assert.is_nil(ok)
    assert.equal("ETIMEDOUT", code, tostring(err))
    assert.same({true, "nil"}, {p:call("get")})
    assert.equal(0, p.failures)
    -- a spawned task that is cancelled: join gives a message
    ok, err = run_in_plugin([[
      local t = tide.spawn(function() tide.sleep(10) end)
      tide.sleep(0)
      t:cancel("stop")
      local ok, e, code = t:join()
      return type(e) .. " " .. e .. " " .. code
    ]])
    assert.is_true(ok, err)
    assert.equal("string cancelled: stop ECANCELED", err)
  end)

  it("hands the scheduler's objects only as proxies", function()
    local ok, r = run_in_plugin([[
      local t = tide.spawn(function() return 5 end)
      t.state = "done"   -- a field of the proxy, not of the task
      t.co = nil
      local ok, v = t:join()
      return v
    ]])
    assert.is_true(ok, r)
    assert.equal(5, r)
  end)
end)

describe("budgets", function()
  it("lets a hook use less than its budget", function()
    local ok, r = run_in_plugin([[
      local x = 0
      for i = 1, 1e5 do x = x + i end
      return x
    ]], {budget = 1})
    assert.is_true(ok, r)
    assert.equal(5000050000, r)
  end)

  it("does not count time spent waiting", function()
    local secs, r = elapsed(function()
      return run_in_plugin([[
        for i = 1, 4 do tide.sleep(0.03) end
        return "done"
      ]], {budget = 0.05})
    end)
    assert.is_true(r[1], r[2])
    assert.is_true(secs >= 0.12, "took " .. secs)
  end)

  it("adds up the CPU time of a call across its waits", function()
    local ok, r = run_in_plugin([[
      local function spin(s) local t = tide.hrtime() + s while tide.hrtime() < t do end end
      for i = 1, 10 do spin(0.02); tide.sleep(0) end
      return "finished"
    ]], {budget = 0.1})
    assert.is_nil(ok)
    assert.truthy(r:find("CPU budget", 1, true), r)
  end)

  it("bounds each run of a task the plugin spawned", function()
    local errors = tide.channel(4)
    tide.on_error(function(err) errors:send(tostring(err)) end)
    local ok, r = run_in_plugin([[
      tide.spawn(function() while true do end end)
      return "spawned"
    ]], {budget = 0.05})
    assert.is_true(ok, r)
    local e = errors:recv(5)
    tide.on_error(nil)
    assert.truthy(e and e:find("CPU budget", 1, true), e)
  end)

  it("bounds each run of a plugin's timer callback", function()
    local errors = tide.channel(4)
    tide.on_error(function(err) errors:send(tostring(err)) end)
    local ok, r = run_in_plugin([[
      tide.after(0.001, function() local x = 0 while true do x = x + 1 end end)
      return "armed"
    ]], {budget = 0.05, grants = {"timer"}})
    assert.is_true(ok, r)
    local e = errors:recv(5)
    tide.on_error(nil)
    assert.truthy(e and e:find("CPU budget", 1, true), e)
  end)

  -- the count hook is set only while plugin code may run
  -- (modules/plugin.c): what follows pins where it must be set

  it("sets the count hook only while plugin code runs", function()
    local C = require "tide.plugin.c"
    plugin.define("probe", function() return function() return C.hooked() end end)
    local p = load([[
      return {
        now = function() return probe() end,
        later = function() tide.sleep(0.001) return probe() end,
      }
    ]], quiet{grants = {"probe"}})
    assert.is_false(C.hooked())
    assert.same({true, true}, {p:call("now")})
    assert.is_false(C.hooked(), "still set after the call")
    assert.same({true, true}, {p:call("later")})
    assert.is_false(C.hooked(), "still set after a call that waited")
  end)

  it("stops a busy loop of a plugin's task or timer after it waited", function()
    local errors = tide.channel(4)
    tide.on_error(function(err) errors:send(tostring(err)) end)
    local ok, r = run_in_plugin([[
      tide.spawn(function() tide.sleep(0.01) while true do end end)
      tide.after(0.001, function() tide.sleep(0.01) local x = 0 while true do x = x + 1 end end)
      return "armed"
    ]], {budget = 0.05, grants = {"timer"}})
    assert.is_true(ok, r)
    local e1, e2 = errors:recv(5), errors:recv(5)
    tide.on_error(nil)
    assert.truthy(e1 and e1:find("CPU budget", 1, true), e1)
    assert.truthy(e2 and e2:find("CPU budget", 1, true), e2)
  end)

  it("stops a busy loop in a callback the host calls outside any call", function()
    local stored
    plugin.define("later", {keep = function(f) stored = f end})
    local ok, r = run_in_plugin([[
      later.keep(function() local x = 0 while true do x = x + 1 end end)
      return "kept"
    ]], {budget = 0.05, grants = {"later"}})
    assert.is_true(ok, r)
    local secs, res = elapsed(function() return {pcall(stored)} end)
    res = res[1]
    assert.is_false(res[1])
    assert.truthy(tostring(res[2]):find("CPU budget", 1, true), tostring(res[2]))
    assert.is_true(secs < 1, "took " .. secs)
  end)

  it("stops a loop that keeps calling back into the plugin", function()
    plugin.define("bounce", {call = function(f) return f() end})
    local secs, r = elapsed(function()
      return run_in_plugin([[
        local function nop() end
        while true do bounce.call(nop) end
      ]], {budget = 0.05, grants = {"bounce"}})
    end)
    assert.is_nil(r[1])
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    assert.is_true(secs < 1, "took " .. secs)
    local errors = tide.channel(4)
    tide.on_error(function(err) errors:send(tostring(err)) end)
    local ok, e = run_in_plugin([[
      local function nop() end
      tide.spawn(function() while true do bounce.call(nop) end end)
      return "spawned"
    ]], {budget = 0.05, grants = {"bounce"}})
    assert.is_true(ok, e)
    e = errors:recv(5)
    tide.on_error(nil)
    assert.truthy(e and e:find("CPU budget", 1, true), e)
  end)

  it("ends a call whose runs are each too short for the hook to fire", function()
    local secs, r = elapsed(function()
      return run_in_plugin("while true do tide.yield() end", {budget = 0.05})
    end)
    assert.is_nil(r[1])
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    assert.is_true(secs < 2, "took " .. secs)
  end)

  it("measures the cost of running plugin code with the JIT off", function()
    local code = "local x = 0 for i = 1, 3e6 do x = x + i % 7 end return x"
    local host = assert(loadstring(code))
    local p = load("return { run = function() " .. code .. " end }", quiet{budget = 10})
    local t_host = elapsed(host)
    local t_plugin, r = elapsed(function() return p:call("run") end)
    assert.is_true(r[1], r[2])
    assert.equal(host(), r[2])
    io.stderr:write(("\n  CPU-bound loop: host (JIT) %.1f ms, plugin (JIT off, budgeted) %.1f ms\n")
      :format(t_host * 1e3, t_plugin * 1e3))
  end)
end)

describe("errors", function()
  it("go to on_error with the plugin, the message (file and line) and the hook", function()
    local got
    local p = load("return { bad = function()\n  error('broken')\nend }",
                   {on_error = function(pl, err, hook) got = {pl, err, hook} end})
    local ok, err = p:call("bad")
    assert.is_nil(ok)
    assert.truthy(err:find(p.path .. ":2: broken", 1, true), err)
    assert.equal(p, got[1])
    assert.equal(err, got[2])
    assert.equal("bad", got[3])
    assert.equal(1, p.failures)
  end)

  it("disable a plugin after max_failures, until it is reloaded", function()
    local p = load("return { bad = function() error('x') end, good = function() return 1 end }",
                   quiet{max_failures = 3})
    for i = 1, 3 do assert.is_nil(p:call("bad")) end
    assert.equal(3, p.failures)
    assert.equal("disabled", p:status())
    local ok, err = p:call("good")
    assert.is_nil(ok)
    assert.equal("plugin '" .. p.name .. "' is disabled", err)
    assert.is_true(p:reload())
    assert.equal("loaded", p:status())
    assert.equal(0, p.failures)
    assert.same({true, 1}, {p:call("good")})
  end)

  it("do not touch other plugins", function()
    local a = load("return { bad = function() error('x') end }", quiet{max_failures = 1})
    local b = load("return { good = function() return 'fine' end }")
    a:call("bad")
    assert.equal("disabled", a:status())
    assert.same({true, "fine"}, {b:call("good")})
  end)

  it("turn error objects into messages without running plugin code", function()
    local ok, err = run_in_plugin([[
      error(setmetatable({}, {__tostring = function() while true do end end}))
    ]], {budget = 5})
    assert.is_nil(ok)
    assert.equal("(error object is a table value)", err)
  end)

  it("in on_error itself are reported, not raised", function()
    local p = load("return { bad = function() error('x') end }",
                   {on_error = function() error("handler broke") end})
    local ok = p:call("bad")
    assert.is_nil(ok)
  end)
end)

describe("reload", function()
  it("loads the new code and hands over state through migrate", function()
    local path = write([[
      local M = { state = { count = 0 } }
      function M.hit() M.state.count = M.state.count + 1; return "v1", M.state.count end
      return M
    ]])
    local p = assert(plugin.load(path))
    p:call("hit"); p:call("hit")
    S.write_file(path, [[
      local M = { state = { count = 0 } }
      function M.migrate(old) M.state.count = old.count * 10 end
      function M.hit() M.state.count = M.state.count + 1; return "v2", M.state.count end
      return M
    ]])
    assert.is_true(p:reload())
    assert.equal(1, p.reloads)
    assert.same({true, "v2", 21}, {p:call("hit")})
  end)

  it("lets calls in flight finish on the old code", function()
    local path = write([[
      return { slow = function(ch) local v = ch:recv(5); return "old " .. v end,
               fast = function() return "old" end }
    ]])
    local p = assert(plugin.load(path, quiet()))
    local gate = tide.channel(1)
    local gate_proxy = {recv = function(_, t) return gate:recv(t) end}
    local t = tide.spawn(function() return p:call("slow", gate_proxy) end)
    tide.sleep(0)
    S.write_file(path, "return { fast = function() return 'new' end }")
    assert.is_true(p:reload())
    assert.same({true, "new"}, {p:call("fast")})
    gate:send("x")
    local ok, called, r = t:join(5)
    assert.is_true(ok)
    assert.is_true(called, r)
    assert.equal("old x", r)
  end)

  it("keeps the old version when the new one does not load", function()
    local path = write("return { v = function() return 1 end }")
    local p = assert(plugin.load(path))
    S.write_file(path, "return { v = function() return 2 end")
    local ok, err = p:reload()
    assert.is_nil(ok)
    assert.truthy(err:find(path .. ":1:", 1, true), err)
    assert.same({true, 1}, {p:call("v")})
    S.write_file(path, "return 7")
    assert.is_nil(p:reload())
    assert.same({true, 1}, {p:call("v")})
  end)

  it("keeps the old version when migrate fails", function()
    local path = write("return { state = 1, v = function() return 1 end }")
    local p = assert(plugin.load(path, quiet()))
    S.write_file(path, "return { migrate = function(old) error('cannot take ' .. old) end, v = function() return 2 end }")
    local ok, err = p:reload()
    assert.is_nil(ok)
    assert.truthy(err:find("cannot take 1", 1, true), err)
    assert.same({true, 1}, {p:call("v")})
  end)

  -- (the file is replaced atomically, as editors save: a reader never sees
  -- it half written)
  it("happens when the file changes, with watch = true", function()
    local path = write("return { v = function() return 'first' end }", "watched.lua")
    local events = tide.channel(8)
    local p = assert(plugin.load(path, {watch = true, on_error = function() end,
      on_reload = function(pl, ok, err) events:send({ok, err}) end}))
    assert.same({true, "first"}, {p:call("v")})
    assert(fs.write_file(path, "return { v = function() return 'second' end }"))
    local ev = events:recv(5)
    assert.truthy(ev, "no reload event")
    assert.is_true(ev[1], ev[2])
    assert.same({true, "second"}, {p:call("v")})
    -- a broken save: the event says so, the last good version stays
    assert(fs.write_file(path, "return { v = function() return 'third' end"))
    ev = events:recv(5)
    assert.truthy(ev, "no reload event")
    assert.is_false(ev[1])
    assert.truthy(ev[2]:find("watched.lua", 1, true), ev[2])
    assert.same({true, "second"}, {p:call("v")})
    p:unload()
  end)
end)

describe("unload", function()
  it("ends the plugin: calls refused, its timers stopped", function()
    local ticks = 0
    plugin.define("counter", function() return function() ticks = ticks + 1 end end)
    local p = load([[
      local t
      return { start = function() t = tide.every(0.005, counter) end }
    ]], {grants = {"timer", "counter"}})
    assert.is_true(p:call("start"))
    while ticks < 2 do tide.sleep(0.005) end
    p:unload()
    assert.equal("unloaded", p:status())
    local ok, err = p:call("start")
    assert.is_nil(ok)
    assert.equal("plugin '" .. p.name .. "' is unloaded", err)
    local seen = ticks
    tide.sleep(0.03)
    assert.equal(seen, ticks)
    p:unload() -- idempotent
    assert.is_nil(p:reload())
  end)

  it("cancels callbacks of its timers and tide.next that wait, and drops those still queued", function()
    local ticks = 0
    plugin.define("tick", function() return function() ticks = ticks + 1 end end)
    local p = load([[
      return { start = function()
        tide.next(function() while true do tick(); tide.sleep(0.005) end end)
        tide.after(0, function() while true do tick(); tide.sleep(0.005) end end)
      end,
      later = function() tide.next(function() tick() end) end }
    ]], {grants = {"timer", "tick"}})
    assert.is_true(p:call("start"))
    while ticks < 6 do tide.sleep(0.005) end
    assert.is_true(p:call("later")) -- (queued now, due after the unload)
    p:unload()
    local seen = ticks
    tide.sleep(0.03)
    assert.equal(seen, ticks)
  end)
end)

describe("hostile plugins", function()
  it("cannot change the host's classes through an object a granted module returns", function()
    local path = write("line one\n")
    local ok, r = run_in_plugin([[
      local f = assert(fs.open(...))
      assert(f.__index == nil, "the class is reachable through __index")
      assert(getmetatable(f) == nil)
      local ok, e = pcall(setmetatable, f, nil)
      assert(not ok and e:find("did not make", 1, true), tostring(e))
      f.read = function() return "evil" end -- the plugin's own view only
      rawset(f, 1, false)
      local w = assert(fs.watch("/tmp", function() end))
      assert(w.__index == nil)
      w:close()
      return tostring(f)
    ]], {grants = {"fs.read"}}, path)
    assert.is_true(ok, r)
    local f = assert(fs.open(path))
    assert.equal("line", f:read(4))
    f:close()
  end)

  it("cannot change the metatable of a host value handed to a hook", function()
    local obj = setmetatable({}, {__index = function() return "host" end})
    local ok, err = run_in_plugin("setmetatable(..., nil) return true", nil, obj)
    assert.is_nil(ok)
    assert.truthy(err:find("did not make", 1, true), err)
    assert.equal("host", obj.anything)
  end)

  it("gives a granted module's callbacks proxies, and closes what it opened on unload", function()
    local p = load([[
      local sv
      return {
        listen = function()
          sv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(conn)
            conn:write(tostring(conn.__index), "\n")
          end})
          return sv.port
        end,
      }
    ]], quiet{grants = {"net"}})
    local ok, port = p:call("listen")
    assert.is_true(ok, port)
    local net = require "tide.net"
    local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
    assert.equal("nil", c:read_line())
    c:close()
    p:unload()
    local c2, err, code = net.connect{host = "127.0.0.1", port = port, timeout = 5}
    assert.is_nil(c2, "the plugin's server outlived it")
    assert.equal("ECONNREFUSED", code, err)
  end)

  it("closes what an older version opened when unloaded after a reload", function()
    local p = load([[
      return { listen = function()
        return assert(net.listen{host = "127.0.0.1", port = 0,
                                 handler = function() end}).port
      end }
    ]], quiet{grants = {"net"}})
    local ok, port = p:call("listen")
    assert.is_true(ok, port)
    assert.is_true(p:reload())
    p:unload()
    local c, err, code = require("tide.net").connect{host = "127.0.0.1", port = port, timeout = 5}
    assert.is_nil(c, "the old version's server outlived the plugin")
    assert.equal("ECONNREFUSED", code, err)
  end)

  it("stops the version a concurrent reload installed while migrate waited", function()
    local started, gate, beacons = tide.channel(1), tide.channel(1), tide.channel(64)
    plugin.define("hold", function() return function()
      started:send(true)
      return gate:recv(5)
    end end)
    plugin.define("tick", function() return function() beacons:send(true) end end)
    local path = write("return {}")
    local p = assert(plugin.load(path, quiet{grants = {"hold", "tick", "timer"}}))
    S.write_file(path, "return { migrate = function() hold() end }")
    local slow = tide.spawn(function() return p:reload() end)
    assert.is_true(started:recv(5))
    S.write_file(path, "tide.every(0.005, tick) return {}")
    assert.is_true(p:reload())
    assert.is_true(beacons:recv(5))
    gate:send(true)
    assert.same({true, true}, {slow:join(5)})
    while beacons:recv(0) do end
    assert.is_nil(beacons:recv(0.1), "the replaced version's timer still fires")
    p:unload()
  end)

  it("runs no plugin code when a granted module reads the tables it is given", function()
    local ok, ran = run_in_plugin([[
      local ran = 0
      local tls = setmetatable({}, {__index = function() ran = ran + 1 end})
      pcall(net.connect, {host = "127.0.0.1", port = 1, timeout = 1, tls = {ca = tls}})
      pcall(net.connect, {host = "127.0.0.1", port = 1, timeout = 1, tls = tls})
      return ran
    ]], {grants = {"net"}})
    assert.is_true(ok, ran)
    assert.equal(0, ran)
  end)

  it("refuses one allocation larger than its call's memory budget", function()
    local secs, r = elapsed(function()
      return run_in_plugin([[
        local ok, e = pcall(function() return #("x"):rep(2^28) end)
        local ok2, e2 = pcall(function() return #(("x"):rep(2^21):gsub("x", "yyyyyyyyyy")) end)
        return tostring(e) .. " | " .. tostring(e2) .. " | " .. #("z"):rep(2^20)
      ]], {memory = 8 * 2^20})
    end)
    assert.is_true(r[1], r[2])
    assert.equal("not enough memory | not enough memory | 1048576", r[2])
    assert.is_true(secs < 1, "took " .. secs)
    -- the host's own allocations stay as large as it likes
    assert.equal(2^26, #("h"):rep(2^26))
  end)

  it("refuses a file larger than its memory budget before reading it", function()
    local path = write("return {}\n--" .. ("x"):rep(70000))
    local p, err = plugin.load(path, {memory = 65536})
    assert.is_nil(p)
    assert.truthy(err:find(path, 1, true), err)
    assert.truthy(err:find("EFBIG", 1, true), err)
    assert.truthy(plugin.load(path, {memory = 2^20}))
  end)

  it("stops load with a reader that never ends, within the budgets", function()
    local secs, r = elapsed(function()
      return run_in_plugin("return load(os.date)", {budget = 0.1, memory = 2^40})
    end)
    assert.is_nil(r[1])
    assert.truthy(r[2]:find("CPU budget", 1, true), r[2])
    assert.is_true(secs < 0.5, "took " .. secs)
    local ok, err = run_in_plugin("return load(os.date)", {budget = 10, memory = 2^20})
    assert.is_nil(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
  end)

  it("proxies a program's objects but leaves them open at unload", function()
    local Res = {}
    Res.__index = Res
    function Res:close() self.closed = true end
    function Res:name() return "res" end
    local res = setmetatable({}, Res)
    plugin.define("shared", {get = function() return res end})
    local p = load([[
      local r
      return { run = function()
        r = shared.get()
        assert(r.__index == nil and getmetatable(r) == nil)
        local real = r:name()
        r.name = function() return "evil" end -- the plugin's proxy only
        return real, r:name()
      end }
    ]], {grants = {"shared"}})
    assert.same({true, "res", "evil"}, {p:call("run")})
    assert.equal("res", res:name())
    p:unload()
    assert.is_nil(res.closed, "unload closed a program's object")
  end)

  it("keeps changes to a granted module to the plugin that made them", function()
    local ok, r = run_in_plugin([[
      json.encode = function() return "evil" end
      json.encode_max_depth(1)
      net.connect = nil
      fs.read_file = nil
      return true
    ]], {grants = {"json", "net", "fs.read"}})
    assert.is_true(ok, r)
    ok, r = run_in_plugin([[
      return json.encode({{1}}) .. type(net.connect) .. type(fs.read_file)
    ]], {grants = {"json", "net", "fs.read"}})
    assert.is_true(ok, r)
    assert.equal("[[1]]functionfunction", r)
    assert.equal("[[1]]", require("cjson").encode({{1}}))
    assert.is_function(require("tide.net").connect)
  end)

  it("takes budgets too large to count as no limit", function()
    local ok, r = run_in_plugin("local x = 0 for i = 1, 1e5 do x = x + i end return x",
                                {budget = 1e300, memory = 1e300})
    assert.is_true(ok, r)
    assert.equal(5000050000, r)
  end)

  it("leaves nothing running when its file fails to load", function()
    local ch = tide.channel(4)
    plugin.define("beacon", function() return function(x) ch:send(x) end end)
    local path = write([[
      tide.spawn(function() tide.sleep(0.01) beacon("task") end)
      tide.after(0.01, function() beacon("timer") end)
      error("broken at load")
    ]])
    local p, err = plugin.load(path, {grants = {"beacon", "timer"}})
    assert.is_nil(p)
    assert.truthy(err:find("broken at load", 1, true), err)
    assert.is_nil(ch:recv(0.2), "code of a plugin that failed to load still runs")
    path = write([[
      tide.spawn(function() tide.sleep(0.01) beacon("task") end)
      return 42
    ]])
    assert.is_nil(plugin.load(path, {grants = {"beacon"}}))
    assert.is_nil(ch:recv(0.2), "code of a plugin that returned garbage still runs")
  end)

  it("counts the separator in string.rep's size check", function()
    local ok, err = run_in_plugin("return #string.rep('', 2^22, ('x'):rep(16))",
                                  {memory = 8 * 2^20})
    assert.is_nil(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
  end)

  it("hands the host only messages from its tasks' and timers' error objects", function()
    local errors = tide.channel(4)
    tide.on_error(function(err) errors:send(err) end)
    local ok, r = run_in_plugin([[
      local bad = setmetatable({}, {__tostring = function() while true do end end})
      tide.spawn(function() error(bad) end)
      tide.after(0.001, function() error(bad) end)
      return "armed"
    ]], {grants = {"timer"}, budget = 0.05})
    assert.is_true(ok, r)
    local e1, e2 = errors:recv(5), errors:recv(5)
    tide.on_error(nil)
    assert.equal("string", type(e1))
    assert.equal("string", type(e2))
    assert.truthy(e1:find("(error object is a table value)", 1, true), e1)
  end)

  it("ends a call that waits past the plugin's timeout", function()
    local p = load("return { wait = function() tide.sleep(10) end, quick = function() return 1 end }",
                   quiet{timeout = 0.05})
    local secs, r = elapsed(function() return p:call("wait") end)
    assert.is_nil(r[1])
    assert.truthy(r[2]:find("did not return within 0.05 s", 1, true), r[2])
    assert.is_true(secs < 1, "took " .. secs)
    assert.equal(1, p.failures)
    assert.same({true, 1}, {p:call("quick")})
    assert.has_error(function() plugin.load(p.path, {timeout = 0}) end)
    assert.has_error(function() plugin.load(p.path, {timeout = true}) end)
  end)
end)
