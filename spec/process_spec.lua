-- spec/process_spec.lua - child processes (API.md, "Processes and
-- signals"; docs/process.md): exit codes and deaths by signal, pipes in
-- both directions with backpressure (10 MiB each way at once), env and
-- cwd, programs that cannot run, kill, many children at once, waits with
-- a timeout, no descriptor leaking into a child, run's capture and
-- limits, the SIGCHLD path used without pidfd, and facts about this
-- process.
--
-- Every wait is bounded and synchronised on events (a child's end, the
-- end of a stream), never on sleeping for long enough.

local S = require "spec.support"
local process = require "tide.process"
local C = require "tide.process.c"

local watchdog = S.watchdog("process_spec.lua")

local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir " .. S.shell_quote(p)) == 0)
  return p
end

-- n bytes of varied content (not one repeated byte: order matters)
local function pattern(n)
  local t, line = {}, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\n"
  local reps = math.floor(n / #line)
  for i = 1, reps do t[i] = line:sub(i % 60 + 1) .. line:sub(1, i % 60) end
  local s = table.concat(t)
  return s .. ("x"):rep(n - #s)
end

local function read_all(s)
  local parts = {}
  while true do
    local d, e = s:read()
    if not d then assert(e == nil, e); break end
    parts[#parts + 1] = d
  end
  return table.concat(parts)
end

describe("tide.process", function()
  teardown(function() watchdog:stop() end)

  describe("exit", function()
    it("reports the exit code", function()
      for _, n in ipairs({0, 1, 3, 255}) do
        local ch = assert(process.spawn{"sh", "-c", "exit " .. n})
        local code, sig = ch:wait(5)
        assert.equal(n, code)
        assert.is_nil(sig)
      end
    end)

    it("reports a death by signal as 128 + its number and its name", function()
      local ch = assert(process.spawn{"sh", "-c", "kill -TERM $$"})
      local code, sig = ch:wait(5)
      assert.equal(143, code)
      assert.equal("SIGTERM", sig)
      local r = assert(process.run{"sh", "-c", "kill -KILL $$"})
      assert.equal(137, r.code)
      assert.equal("SIGKILL", r.signal)
    end)

    it("gives the same result to every task that waits, and after", function()
      local ch = assert(process.spawn{"sh", "-c", "read x; exit 7", stdin = "pipe"})
      local tasks = {}
      for i = 1, 3 do tasks[i] = tide.spawn(function() return ch:wait(5) end) end
      tide.yield()
      assert.is_true(ch:running())
      ch.stdin:write("go\n")
      for i = 1, 3 do
        local ok, code = tasks[i]:join(5)
        assert.is_true(ok)
        assert.equal(7, code)
      end
      assert.equal(7, ch:wait())
      assert.is_false(ch:running())
    end)

    it("waits with a timeout", function()
      local ch = assert(process.spawn{"sleep", "10"})
      local t0 = tide.hrtime()
      local ok, e, code = ch:wait(0.05)
      assert.is_nil(ok)
      assert.equal("timed out", e)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(tide.hrtime() - t0 < 2)
      assert.is_true(ch:kill())
      assert.equal(143, ch:wait(5))
    end)
  end)

  describe("pipes", function()
    it("moves 10 MiB through stdin and stdout at once without deadlock", function()
      local data = pattern(10 * 1024 * 1024)
      local ch = assert(process.spawn{"cat", stdin = "pipe", stdout = "pipe"})
      local writer = tide.spawn(function()
        assert(ch.stdin:write(data))
        ch.stdin:close()
      end)
      local got = read_all(ch.stdout)
      assert(writer:join(10))
      assert.equal(#data, #got)
      assert.is_true(got == data)
      assert.equal(0, ch:wait(5))
    end)

    it("shutdown() on stdin ends the child's input after what was written", function()
      local data = pattern(1024 * 1024)
      local ch = assert(process.spawn{"cat", stdin = "pipe", stdout = "pipe"})
      ch.stdout:set_timeout(10) -- (without the end, the read would wait for ever)
      local writer = tide.spawn(function()
        assert(ch.stdin:write(data))
        assert.is_true(ch.stdin:shutdown())
        -- written after the end: refused, nothing reaches the child
        assert.has_error(function() ch.stdin:write("more") end)
      end)
      local got = read_all(ch.stdout)
      assert(writer:join(10))
      assert.is_true(got == data)
      assert.equal(0, ch:wait(5))
      ch.stdin:close()
    end)

    it("run passes input and captures stdout and stderr apart", function()
      local data = pattern(3 * 1024 * 1024)
      local r = assert(process.run{"sh", "-c", "cat; echo oops >&2; exit 4",
                                   input = data})
      assert.equal(4, r.code)
      assert.is_true(r.stdout == data)
      assert.equal("oops\n", r.stderr)
    end)

    it("keeps what a child wrote readable after it exited", function()
      local ch = assert(process.spawn{"sh", "-c", "printf 'hello\\nworld'", stdout = "pipe"})
      assert.equal(0, ch:wait(5))
      assert.equal("hello", ch.stdout:read_line())
      assert.equal("world", ch.stdout:read_line())
      assert.is_nil(ch.stdout:read_line())
    end)

    it("applies backpressure to a child that floods its output", function()
      local ch = assert(process.spawn{"yes", stdout = "pipe"})
      -- nobody reads: the child blocks on its full pipe, tide holds at
      -- most the stream's read buffer
      local first = assert(ch.stdout:read(10))
      assert.equal("y\ny\ny\ny\ny\n", first)
      for _ = 1, 20 do tide.yield() end
      local NC = require "tide.net.c"
      local inbuf = NC.s_buffered(ch.stdout[1])
      assert.is_true(inbuf <= 2 * 65536, "buffered " .. inbuf)
      assert.is_true(ch:running())
      ch:kill()
      assert.equal(143, ch:wait(5))
    end)

    it("sends null and inherit as asked", function()
      local r = assert(process.run{"sh", "-c", "cat; echo done", stdin = "null",
                                   stderr = "null"})
      assert.equal("done\n", r.stdout)
      assert.is_nil(r.stderr)
    end)

    it("sends stderr where stdout goes with stderr = \"stdout\"", function()
      local r = assert(process.run{"sh", "-c", "echo one; echo two >&2; echo three",
                                   stderr = "stdout"})
      assert.equal("one\ntwo\nthree\n", r.stdout)
      assert.is_nil(r.stderr)
      assert.matches("option 'stdin' must be \"pipe\", \"inherit\" or \"null\", got stdout",
                     error_of(process.spawn, {"ls", stdin = "stdout"}))
    end)

    it("gives a child SIGPIPE's default action back", function()
      local r = assert(process.run{"sh", "-c", "yes | head -n 1", timeout = 5})
      assert.equal("y\n", r.stdout)
      assert.equal("", r.stderr)
      assert.equal(0, r.code)
    end)
  end)

  describe("environment", function()
    it("replaces the environment with env", function()
      local r = assert(process.run{"/usr/bin/env", env = {A = "1", B = 2}})
      local lines = {}
      for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
      table.sort(lines)
      assert.same({"A=1", "B=2"}, lines)
    end)

    it("inherits this process's environment without env", function()
      local r = assert(process.run{"sh", "-c", "echo \"$HOME\""})
      assert.equal((os.getenv("HOME") or "") .. "\n", r.stdout)
      local env = process.environ()
      env.TIDE_SPEC_X = "x y"
      r = assert(process.run{"sh", "-c", "echo \"$TIDE_SPEC_X\"", env = env})
      assert.equal("x y\n", r.stdout)
    end)

    it("runs in cwd", function()
      local dir = tmpdir()
      local r = assert(process.run{"pwd", "-P", cwd = dir})
      local real = assert(process.run{"realpath", dir}).stdout
      os.execute("rmdir " .. S.shell_quote(dir))
      assert.equal(real, r.stdout)
    end)

    it("reports a missing cwd", function()
      local ok, e, code = process.spawn{"pwd", cwd = "/nonexistent-tide-dir"}
      assert.is_nil(ok)
      assert.equal("ENOENT", code)
      assert.matches("/nonexistent%-tide%-dir", e)
    end)
  end)

  describe("programs that cannot run", function()
    it("reports a missing program as ENOENT", function()
      local ok, e, code = process.spawn{"no-such-program-tide-spec"}
      assert.is_nil(ok)
      assert.equal("no-such-program-tide-spec: No such file or directory", e)
      assert.equal("ENOENT", code)
      ok, e, code = process.run{"/nonexistent/prog", "x"}
      assert.is_nil(ok)
      assert.equal("/nonexistent/prog: No such file or directory", e)
      assert.equal("ENOENT", code)
    end)

    it("reports a program that is not executable as EACCES", function()
      local path = os.tmpname()
      S.write_file(path, "echo hi\n")
      local ok, e, code = process.spawn{path}
      os.remove(path)
      assert.is_nil(ok)
      assert.equal(path .. ": Permission denied", e)
      assert.equal("EACCES", code)
    end)

    it("leaves no descriptor open after a failed spawn", function()
      local fs = require "tide.fs"
      local before = {}
      for _, fd in ipairs(assert(fs.readdir("/proc/self/fd"))) do before[fd] = true end
      for _ = 1, 20 do
        assert.is_nil(process.spawn{"no-such-program-tide-spec", stdin = "pipe",
                                    stdout = "pipe", stderr = "pipe"})
      end
      collectgarbage(); collectgarbage()
      local after = assert(fs.readdir("/proc/self/fd"))
      for _, fd in ipairs(after) do
        assert(before[fd], "descriptor " .. fd .. " is new")
      end
    end)
  end)

  describe("kill", function()
    it("sends SIGTERM by default, and any signal by name or number", function()
      local ch = assert(process.spawn{"sleep", "10"})
      assert.is_true(ch:kill())
      assert.same({143, "SIGTERM"}, {ch:wait(5)})
      ch = assert(process.spawn{"sleep", "10"})
      assert.is_true(ch:kill("KILL"))
      assert.same({137, "SIGKILL"}, {ch:wait(5)})
      ch = assert(process.spawn{"sleep", "10"})
      assert.is_true(ch:kill(2))
      assert.same({130, "SIGINT"}, {ch:wait(5)})
    end)

    it("fails with ESRCH once the child has ended", function()
      local ch = assert(process.spawn{"true"})
      assert.equal(0, ch:wait(5))
      local ok, e, code = ch:kill()
      assert.is_nil(ok)
      assert.equal("ESRCH", code)
      assert.matches("process " .. ch.pid, e)
    end)

    it("raises on an unknown signal", function()
      local ch = assert(process.spawn{"true"})
      assert.matches("bad argument #1 to 'kill' %(unknown signal \"SIGNOPE\"%)",
                     error_of(ch.kill, ch, "SIGNOPE"))
      ch:wait(5)
    end)
  end)

  it("runs 50 children at once", function()
    local tasks = {}
    for i = 1, 50 do
      tasks[i] = tide.spawn(function()
        local r = assert(process.run{"sh", "-c", "echo " .. i .. "; exit " .. i})
        return r.code, r.stdout
      end)
    end
    for i = 1, 50 do
      local ok, code, out = tasks[i]:join(20)
      assert.is_true(ok)
      assert.equal(i, code)
      assert.equal(i .. "\n", out)
    end
  end)

  it("lets no descriptor leak into a child", function()
    -- descriptors of every kind, some opened without close-on-exec
    local f = assert(io.open(os.tmpname(), "w"))
    local net = require "tide.net"
    local sv = assert(net.listen{host = "127.0.0.1", port = 0})
    local ch = assert(process.spawn{"sleep", "10", stdin = "pipe", stdout = "pipe"})
    local r = assert(process.run{"ls", "/proc/self/fd", input = "x"})
    -- ls's own: 0-2 and the folder it reads
    assert.equal("0\n1\n2\n3\n", r.stdout)
    ch:kill()
    ch:wait(5)
    sv:close()
    f:close()
  end)

  describe("run", function()
    it("kills a child that outlives its timeout", function()
      local t0 = tide.hrtime()
      local ok, e, code = process.run{"sleep", "10", timeout = 0.1}
      assert.is_nil(ok)
      assert.equal("timed out", e)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(tide.hrtime() - t0 < 3)
    end)

    it("kills the child when its task is cancelled", function()
      local pidfile = os.tmpname()
      local t = tide.spawn(process.run, {"sh", "-c", "echo $$ > " .. pidfile ..
                                         "; exec sleep 10"})
      local pid
      for _ = 1, 500 do -- (until the child wrote its pid)
        pid = tonumber(S.read_all(pidfile))
        if pid then break end
        tide.sleep(0.01)
      end
      os.remove(pidfile)
      assert.is_number(pid)
      t:cancel()
      local ok = t:join(5)
      assert.is_nil(ok)
      assert.equal("cancelled", t:status())
      -- (reaped by the run's child handle: no such process any more)
      for _ = 1, 500 do
        if not process.kill(pid, 0) then break end
        tide.sleep(0.01)
      end
      local alive, _, code = process.kill(pid, 0)
      assert.is_nil(alive)
      assert.equal("ESRCH", code)
    end)

    it("stops a child whose output passes max_output", function()
      local ok, e, code = process.run{"yes", max_output = 100000}
      assert.is_nil(ok)
      assert.equal("ENOBUFS", code)
      assert.matches("output too large", e)
    end)
  end)

  describe("without pidfd (SIGCHLD)", function()
    after_each(function() C._use_pidfd(true) end)

    it("reaps children through SIGCHLD", function()
      C._use_pidfd(false)
      local tasks = {}
      for i = 1, 10 do
        tasks[i] = tide.spawn(function()
          return assert(process.run{"sh", "-c", "exit " .. i}).code
        end)
      end
      local ch = assert(process.spawn{"sleep", "10"})
      for i = 1, 10 do
        local ok, code = tasks[i]:join(10)
        assert.is_true(ok)
        assert.equal(i, code)
      end
      assert.is_nil(ch:wait(0.02))
      assert.is_true(ch:kill("KILL"))
      assert.same({137, "SIGKILL"}, {ch:wait(5)})
    end)
  end)

  describe("the loop", function()
    it("is kept alive by a running child, unless unref'd", function()
      local out, err, rc = S.run_child([[
        local process = require "tide.process"
        local ch = process.spawn{"sh", "-c", "sleep 0.2; echo child"}
        ch = nil
        collectgarbage()
        local t0 = tide.hrtime()
        local u = process.spawn{"sleep", "30", stdout = "null", stderr = "null"}
        u:unref()
        print("parent")
        io.stdout:flush()
      ]])
      assert.equal(0, rc, err)
      assert.equal("parent\nchild\n", out)
    end)
  end)

  describe("this process", function()
    it("knows its pid, environment and working folder", function()
      local r = assert(process.run{"sh", "-c", "echo $PPID"})
      assert.equal(process.pid .. "\n", r.stdout)
      assert.equal(os.getenv("HOME"), process.getenv("HOME"))
      assert.is_nil(process.getenv("TIDE_NO_SUCH_VARIABLE"))
      local here = assert(process.cwd())
      local dir = tmpdir()
      assert.is_true(process.chdir(dir))
      local real = assert(process.run{"realpath", dir}).stdout
      assert.equal(real, assert(process.cwd()) .. "\n")
      assert.is_true(process.chdir(here))
      os.execute("rmdir " .. S.shell_quote(dir))
      local ok, e, code = process.chdir("/nonexistent-tide-dir")
      assert.is_nil(ok)
      assert.equal("/nonexistent-tide-dir: No such file or directory", e)
      assert.equal("ENOENT", code)
    end)
  end)

  describe("misuse", function()
    it("raises errors naming the bad argument", function()
      assert.matches("bad argument #1 to 'spawn' %(table expected, got string%)",
                     error_of(process.spawn, "ls"))
      assert.matches("command expected", error_of(process.spawn, {}))
      assert.matches("unknown option 'stdio'",
                     error_of(process.spawn, {"ls", stdio = "pipe"}))
      assert.matches("option 'stdout' must be \"pipe\", \"inherit\" or \"null\"",
                     error_of(process.spawn, {"ls", stdout = "file"}))
      assert.matches("option 'env' must map names to strings",
                     error_of(process.spawn, {"ls", env = {A = {}}}))
      assert.matches("%[2%] must be a string",
                     error_of(process.spawn, {"ls", {}}))
      assert.matches("option 'input' must be a string",
                     error_of(process.run, {"cat", input = 5}))
      assert.matches("option 'timeout'",
                     error_of(process.run, {"cat", timeout = "1"}))
      assert.matches("child process expected",
                     error_of(process.spawn{"true"}.wait, {}))
      assert.matches("bad argument #1 to 'kill'",
                     error_of(process.kill, "1"))
    end)
  end)
end)
