-- spec/examples_spec.lua - the examples of examples/ run as a user would
-- run them (a child tide, port 0), checked through what they print and
-- serve, and stopped with a signal as a user would stop them.
-- (automate.lua, graceful.lua and embed/ have specs of their own:
-- automate_spec, signal_spec, embed_service_spec.)

local S = require "spec.support"
local http = require "tide.http"
local net = require "tide.net"
local process = require "tide.process"

-- Starts `tide examples/<name> <args...>`; returns the child and its
-- first line of output.
local function start(name, ...)
  local child = S.reap(assert(process.spawn{S.TIDE, "examples/" .. name, ...,
                                             stdout = "pipe", stderr = "pipe"}))
  child.stdout:set_timeout(10)
  local line, err = child.stdout:read_line()
  assert(line, ("%s printed nothing: %s"):format(name, tostring(err)))
  return child, line
end

describe("examples", function()
  local dog
  setup(function() dog = S.watchdog("examples_spec") end)
  teardown(function() dog:close() end)
  after_each(S.reap_all)

  it("hello.lua (make run) serves its routes and stops gracefully on SIGTERM", function()
    local child, line = start("hello.lua", "0")
    local url = line:match("(http://[%d.]+:%d+/)")
    assert(url, line)
    local r = assert(http.get(url))
    assert.equal(200, r.status)
    assert.equal("hello from tide\n", r.body)
    r = assert(http.get(url .. "json?name=spec"))
    assert.equal(200, r.status)
    assert.matches('"hello":"spec"', r.body)
    r = assert(http.request{method = "POST", url = url .. "echo", body = "ping"})
    assert.equal("ping", r.body)
    assert.equal(404, assert(http.get(url .. "nope")).status)
    -- a request in flight when SIGTERM comes still gets its whole answer
    local streamed = tide.spawn(function() return http.get(url .. "stream") end)
    tide.sleep(0.1) -- (a request in flight: /stream takes a second)
    assert(child:kill("TERM"))
    local _, sr = assert(streamed:join(10))
    assert.equal(200, sr.status)
    assert.equal(5, select(2, sr.body:gsub("\n", "")))
    assert.same({0}, {child:wait(10)})
  end)

  it("echo.lua echoes lines", function()
    local child, line = start("echo.lua", "0")
    local port = tonumber(line:match(":(%d+)"))
    assert(port, line)
    local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
    c:set_timeout(5)
    assert(c:write("one\n", "two\n"))
    assert.equal("one", c:read_line())
    assert.equal("two", c:read_line())
    c:close()
    assert(child:kill("TERM"))
    assert.same({143}, {child:wait(10)})
  end)

  it("chat.lua relays a line from one client to another", function()
    local child, line = start("chat.lua", "0")
    local port = tonumber(line:match(":(%d+)$"))
    assert(port, line)
    local function join(name)
      local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
      c:set_timeout(5)
      assert.equal("name? ", c:read_until("? ") .. "? ")
      assert(c:write(name, "\n"))
      return c
    end
    local a = join("alice")
    local b = join("bob")
    assert.equal("* bob joined", a:read_line())
    assert(b:write("hi all\n"))
    assert.equal("<bob> hi all", a:read_line())
    b:close()
    assert.equal("* bob left", a:read_line())
    a:close()
    assert(child:kill("INT"))
    assert.same({130}, {child:wait(10)})
  end)

  it("demo.lua runs to its end", function()
    local r = assert(process.run{S.TIDE, "examples/demo.lua", timeout = 20})
    assert.equal(0, r.code, r.stderr)
    assert.matches("next: before any other callback", r.stdout)
  end)
end)
