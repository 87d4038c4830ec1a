-- spec/signal_spec.lua - signals (API.md, "Processes and signals";
-- docs/signal.md): watchers and waits on signals sent to this very
-- process (busted runs inside tide: a watcher is always in place before
-- a signal is sent), names, closing, whether the loop stays alive, the
-- default exits of SIGINT and SIGTERM (on a child tide), and graceful
-- shutdown.
--
-- Waits are bounded and synchronised on events (a delivery, a line from
-- a child, a child's end).

local S = require "spec.support"
local signal = require "tide.signal"
local process = require "tide.process"
local net = require "tide.net"

local watchdog = S.watchdog("signal_spec.lua")

local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

-- A child tide running `code`, with its stdout a pipe; returns the child
-- once it printed its first line (returned too).
local function child_tide(code)
  local path = os.tmpname()
  S.write_file(path, code)
  local ch = S.reap(assert(process.spawn{S.TIDE, path, stdout = "pipe"}))
  local line = ch.stdout:read_line()
  os.remove(path)
  return ch, line
end

local function rest(ch)
  local parts = {}
  while true do
    local d = ch.stdout:read()
    if not d then break end
    parts[#parts + 1] = d
  end
  return table.concat(parts)
end

describe("tide.signal", function()
  teardown(function() watchdog:stop() end)
  after_each(S.reap_all)

  describe("on", function()
    it("runs the handler as a task in the poll phase", function()
      local got = tide.channel(1)
      local w = signal.on("SIGUSR1", function(name)
        got:send({name, tide.phase(), tide.current() ~= nil})
      end)
      assert.is_true(process.kill(process.pid, "SIGUSR1"))
      local r = got:recv(5)
      w:close()
      assert.same({"SIGUSR1", "poll", true}, r)
    end)

    it("takes names with or without SIG, in any case, and numbers", function()
      local got = tide.channel(10)
      local ws = {signal.on("USR2", function(n) got:send(n) end),
                  signal.on("sigusr2", function(n) got:send(n) end),
                  signal.on(signal.number("SIGUSR2"), function(n) got:send(n) end)}
      os.execute("kill -USR2 " .. process.pid)
      for _ = 1, 3 do assert.equal("SIGUSR2", got:recv(5)) end
      for _, w in ipairs(ws) do w:close() end
      assert.same({10, "SIGUSR1"}, {signal.number("usr1")})
      assert.is_nil(signal.number("SIGNOPE"))
    end)

    it("delivers to every open watcher, and no more after close", function()
      local hits = {a = 0, b = 0, c = 0}
      local done = tide.cond()
      local function on(k)
        return signal.on("HUP", function() hits[k] = hits[k] + 1; done:signal() end)
      end
      local a, b = on("a"), on("b")
      process.kill(process.pid, "HUP")
      while hits.a + hits.b < 2 do assert.is_true(done:wait(5)) end
      assert.same({a = 1, b = 1, c = 0}, hits)
      a:close()
      a:close() -- (idempotent)
      local c = on("c")
      process.kill(process.pid, "HUP")
      -- (the watchers of one delivery all run in the same poll phase)
      while hits.b + hits.c < 3 do assert.is_true(done:wait(5)) end
      assert.same({a = 1, b = 2, c = 1}, hits)
      b:close()
      c:close()
      assert.matches("closed", tostring(b))
      assert.matches("closed", error_of(b.ref, b))
    end)

    it("keeps a watcher the script dropped", function()
      local got = tide.channel(1)
      signal.on("WINCH", function(n) got:send(n) end)
      collectgarbage(); collectgarbage()
      process.kill(process.pid, "WINCH")
      assert.equal("SIGWINCH", got:recv(5))
    end)

    it("rejects unknown signals and those that cannot be caught", function()
      assert.matches("bad argument #1 to 'on' %(unknown signal \"SIGNOPE\"%)",
                     error_of(signal.on, "SIGNOPE", print))
      assert.matches("SIGKILL cannot be caught", error_of(signal.on, "KILL", print))
      assert.matches("SIGSEGV cannot be caught", error_of(signal.on, 11, print))
      assert.matches("bad argument #2 to 'on' %(function expected",
                     error_of(signal.on, "USR1", 1))
    end)
  end)

  describe("wait", function()
    it("waits for the next delivery", function()
      local t = tide.spawn(signal.wait, "USR1", 5)
      tide.yield() -- (it waits now)
      os.execute("kill -USR1 " .. process.pid)
      local ok, name = t:join(5)
      assert.is_true(ok)
      assert.equal("SIGUSR1", name)
    end)

    it("times out", function()
      local t0 = tide.hrtime()
      local ok, e, code = signal.wait("USR2", 0.05)
      assert.is_nil(ok)
      assert.equal("timed out", e)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(tide.hrtime() - t0 >= 0.04)
    end)
  end)

  describe("and the loop", function()
    it("is not kept alive by a watcher, unless ref'd", function()
      local out, err, rc = S.run_child([[
        local signal = require "tide.signal"
        signal.on("USR1", function() end)
        print("end")
      ]])
      assert.equal(0, rc, err)
      assert.equal("end\n", out)
      out, err, rc = S.run_child([[
        local signal, process = require "tide.signal", require "tide.process"
        local w
        w = signal.on("USR1", function(n) print(n); w:close() end):ref()
        tide.next(function() process.kill(process.pid, "USR1") end)
      ]])
      assert.equal(0, rc, err)
      assert.equal("SIGUSR1\n", out)
    end)
  end)

  describe("defaults", function()
    local script = [[
      local signal, process = require "tide.signal", require "tide.process"
      local t = tide.every(10, function() end)
      local keep = tide.every(10, function() end) -- (alive until the signal)
      signal.on("USR1", function()
        t:close(function() io.stdout:write("closed\n"); io.stdout:flush() end)
      end)
      io.stdout:write("ready\n"); io.stdout:flush()
    ]]

    it("SIGTERM ends tide with 143 after its close callbacks", function()
      local ch, line = child_tide(script)
      assert.equal("ready", line)
      ch:kill("USR1")
      ch:kill("TERM")
      assert.same({143}, {ch:wait(5)})
      assert.equal("closed\n", rest(ch))
    end)

    it("SIGINT ends tide with 130", function()
      local ch, line = child_tide(script)
      assert.equal("ready", line)
      ch:kill("INT")
      assert.same({130}, {ch:wait(5)})
    end)

    -- regression: the poll phase skips its system call when nothing but
    -- the defaults' wake-up is registered; a caught signal must still
    -- make it poll, or a loop of immediates would never see it
    it("SIGTERM ends a loop busy with a chain of immediates", function()
      local ch, line = child_tide([[
        local function again() tide.immediate(again) end
        again()
        io.stdout:write("ready\n"); io.stdout:flush()
      ]])
      assert.equal("ready", line)
      ch:kill("TERM")
      assert.same({143}, {ch:wait(5)})
    end)

    it("a watcher takes the signal instead", function()
      local ch, line = child_tide([[
        local signal = require "tide.signal"
        signal.on("TERM", function(n) print("got " .. n); tide.exit(3) end)
        local keep = tide.every(10, function() end)
        io.stdout:write("ready\n"); io.stdout:flush()
      ]])
      assert.equal("ready", line)
      ch:kill("TERM")
      assert.same({3}, {ch:wait(5)})
      assert.equal("got SIGTERM\n", rest(ch))
    end)

    it("a second signal ends a loop that never returns to poll", function()
      local ch, line = child_tide([[
        io.stdout:write("ready\n"); io.stdout:flush()
        while true do end
      ]])
      assert.equal("ready", line)
      local code, sig
      for _ = 1, 100 do
        ch:kill("INT")
        code, sig = ch:wait(0.05)
        if code then break end
      end
      assert.same({130, "SIGINT"}, {code, sig})
    end)
  end)

  describe("graceful", function()
    -- a server whose handler answers each line after `delay` seconds
    local function server(opts, delay)
      return child_tide(([[
        local signal, net = require "tide.signal", require "tide.net"
        local g = signal.graceful{%s, on_shutdown = function(n)
          io.stdout:write("shutdown " .. n .. "\n"); io.stdout:flush()
        end}
        local sv = g:add(assert(net.listen{host = "127.0.0.1", port = 0,
          handler = g:track(function(conn)
            local line = conn:read_line()
            io.stdout:write("working\n"); io.stdout:flush()
            tide.sleep(%s)
            conn:write("done " .. line .. "\n")
          end)}))
        io.stdout:write(sv.port, "\n"); io.stdout:flush()
      ]]):format(opts, delay))
    end

    it("stops accepting, finishes the work in flight and exits 0", function()
      local ch, port = server("grace = 5", 0.2)
      local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
      c:write("one\n")
      assert.equal("working", ch.stdout:read_line())
      ch:kill("TERM")
      assert.equal("shutdown SIGTERM", ch.stdout:read_line())
      local ok, _, code = net.connect{host = "127.0.0.1", port = port, timeout = 5}
      assert.is_nil(ok)
      assert.equal("ECONNREFUSED", code)
      c:set_timeout(5)
      assert.equal("done one", c:read_line())
      c:close()
      assert.same({0}, {ch:wait(5)})
    end)

    it("cancels what outlives the grace period", function()
      local ch, port = server("grace = 0.1", 30)
      local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
      c:write("one\n")
      assert.equal("working", ch.stdout:read_line())
      local t0 = tide.hrtime()
      ch:kill("TERM")
      c:set_timeout(5)
      assert.is_nil(c:read_line()) -- (the handler's connection closed)
      c:close()
      assert.same({0}, {ch:wait(5)})
      assert.is_true(tide.hrtime() - t0 < 3)
    end)

    it("exits at once on a second signal", function()
      local ch, port = server("grace = 30", 30)
      local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
      c:write("one\n")
      assert.equal("working", ch.stdout:read_line())
      ch:kill("TERM")
      assert.equal("shutdown SIGTERM", ch.stdout:read_line())
      ch:kill("INT")
      assert.same({130}, {ch:wait(5)})
      c:close()
    end)

    it("works in examples/graceful.lua", function()
      local ch = S.reap(assert(process.spawn{S.TIDE, "examples/graceful.lua", "0",
                                              stderr = "pipe"}))
      local port = tonumber(ch.stderr:read_line():match(":(%d+)$"))
      local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
      c:set_timeout(10)
      c:write("hello\n")
      assert.matches("^request from port %d+: hello$", ch.stderr:read_line())
      ch:kill("TERM") -- (while the handler works: 2 seconds)
      assert.equal("SIGTERM: stopping; waiting for the requests in flight",
                   ch.stderr:read_line())
      assert.equal("HELLO", c:read_line())
      assert.is_nil(c:read_line())
      c:close()
      assert.same({0}, {ch:wait(5)})
    end)

    it("rejects bad options", function()
      assert.matches("unknown option 'grase'", error_of(signal.graceful, {grase = 1}))
      assert.matches("option 'grace'", error_of(signal.graceful, {grace = "1"}))
      assert.matches("unknown signal", error_of(signal.graceful, {signals = {"NOPE"}}))
    end)
  end)
end)
