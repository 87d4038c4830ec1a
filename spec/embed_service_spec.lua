-- spec/embed_service_spec.lua - examples/embed/service.c, the C service
-- that embeds tide and hosts plugins (docs/embedding.md): it answers over
-- TCP through its plugins' hooks, hooks that wait do not hold up other
-- clients, a plugin's C-function capability works, a broken plugin is
-- left out, and a plugin is reloaded (keeping its state) when its file
-- changes. The service's stderr tells when it listens and when it
-- reloaded: the tests wait for those lines.

local S = require "spec.support"
local fs = require "tide.fs"
local net = require "tide.net"
local process = require "tide.process"

local SERVICE = S.TIDE:gsub("[^/]+$", "embed_service")
local dir, child, port, watchdog, broken, loaded

-- the next line of the service's stderr that matches pattern
local function expect_log(pattern)
  while true do
    local line, err = child.stderr:read_line()
    assert(line, "the service's stderr ended: " .. tostring(err))
    local a, b = line:match(pattern)
    if a then return a, b end
  end
end

local function connect()
  return assert(net.connect{port = port, timeout = 5})
end

local function ask(conn, line)
  assert(conn:write(line .. "\n"))
  return conn:read_line()
end

setup(function()
  watchdog = S.watchdog("embed_service_spec")
  dir = assert(fs.mkdtemp("/tmp/tide-embed-service-"))
  for _, name in ipairs{"greet.lua", "stats.lua", "later.lua"} do
    S.write_file(dir .. "/" .. name, S.read_all("examples/embed/plugins/" .. name))
  end
  S.write_file(dir .. "/broken.lua", "return {\n  on_message = = 1 }")
  child = assert(process.spawn{SERVICE, "-p", "0", "-d", dir, stderr = "pipe"})
  broken = expect_log("not loaded: (.*)")
  loaded = tonumber(expect_log("(%d+) plugin%(s%) loaded"))
  port = tonumber(expect_log("listening on 127%.0%.0%.1:(%d+)"))
end)

teardown(function()
  if child then
    child:kill("TERM")
    child:wait(5)
  end
  for _, name in ipairs(fs.readdir(dir) or {}) do fs.remove(dir .. "/" .. name) end
  fs.remove(dir)
  watchdog:stop()
end)

describe("examples/embed/service", function()
  it("loads the plugins of its folder, leaving out a broken one", function()
    assert.equal(3, loaded)
    assert.truthy(broken:find(dir .. "/broken.lua:2:", 1, true), broken)
  end)

  it("answers through its plugins, with its C functions granted", function()
    local c = connect()
    assert.equal("greet: hello, world!", ask(c, "hello world"))
    local stats = ask(c, "stats")
    assert.truthy(stats:match('^stats: {.*"clients":1'), stats)
    assert.truthy(stats:match('"handled":2'), stats)
    c:close()
  end)

  it("serves other clients while a hook waits", function()
    local slow, fast = connect(), connect()
    assert(slow:write("later 1000 slow one\n"))
    local t0 = tide.hrtime()
    assert.equal("greet: hello, fast!", ask(fast, "hello fast"))
    assert.is_true(tide.hrtime() - t0 < 0.9)
    assert.equal("later: slow one", slow:read_line())
    slow:close(); fast:close()
  end)

  it("reloads a plugin when its file changes, keeping its state", function()
    local c = connect()
    local before = ask(c, "stats")
    local seen = tonumber(before:match('"seen":(%d+)'))
    local src = S.read_all(dir .. "/stats.lua")
    assert(fs.write_file(dir .. "/stats.lua", (src:gsub("seen = M.state.seen,", "seen = M.state.seen, version = 2,"))))
    assert.equal("ok", (expect_log("reloaded stats: (.*)")))
    local after = ask(c, "stats")
    assert.truthy(after:match('"version":2'), after)
    assert.equal(seen + 1, tonumber(after:match('"seen":(%d+)')))
    -- a broken save keeps the running version
    assert(fs.write_file(dir .. "/greet.lua", "return {"))
    local msg = expect_log("reloaded greet: (.*)")
    assert.truthy(msg:find("greet.lua", 1, true), msg)
    assert.equal("greet: hello, again!", ask(c, "hello again"))
    c:close()
  end)
end)
