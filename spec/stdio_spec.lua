-- spec/stdio_spec.lua - tide.stdin, tide.stdout and tide.stderr
-- (docs/process.md, "Standard streams"): a child tide with its stdout
-- sent to a file, a pipe, /dev/null and a pipe nobody reads any more, and
-- its stdin read from a file and a pipe; print beside them; made on first
-- use only; the standard descriptors' own flags left alone.

local S = require "spec.support"
local process = require "tide.process"

local watchdog = S.watchdog("stdio_spec.lua")

local temps = {}
local function tmpfile(content)
  local p = os.tmpname()
  temps[#temps + 1] = p
  if content then S.write_file(p, content) end
  return p
end

local function script(code) return S.shell_quote(tmpfile(code)) end

local TIDE = S.shell_quote(S.TIDE)

-- writes through tide.stdout and print, in order, and reports the kind
local WRITER = [[
  assert(tide.stdout:write("hello ", 42, "\n"))
  print("print works")
  assert(tide.stdout:write(("x"):rep(1000000), "\n"))
  io.write("io.write works\n")
  assert(tide.stderr:write("kind ", tide.stdout.kind, "\n"))
]]
local WRITTEN = "hello 42\nprint works\n" .. ("x"):rep(1000000) .. "\nio.write works\n"

-- copies stdin to stdout line by line, then the rest as it comes
local COPIER = [[
  local n = 0
  while true do
    local line = tide.stdin:read_line()
    if not line then break end
    n = n + 1
    assert(tide.stdout:write(line, "\n"))
  end
  local f = io.open("/proc/self/fdinfo/0")
  local flags = tonumber(f:read("*a"):match("flags:%s*(%d+)"), 8)
  f:close()
  assert(tide.stderr:write(("%s %d nonblock=%s\n"):format(tide.stdin.kind, n,
    tostring(bit.band(flags, 2048) ~= 0))))
]]

local function lines(n)
  local t = {}
  for i = 1, n do t[i] = ("line %d %s"):format(i, ("y"):rep(i % 200)) end
  return table.concat(t, "\n") .. "\n"
end

describe("standard streams", function()
  teardown(function() watchdog:stop() end)
  after_each(function()
    for i = #temps, 1, -1 do os.remove(temps[i]); temps[i] = nil end
  end)

  describe("stdout", function()
    it("writes to a regular file, in order with print", function()
      local out = tmpfile()
      local _, err, rc = S.run(("%s %s >%s"):format(TIDE, script(WRITER),
                                                   S.shell_quote(out)))
      assert.equal(0, rc, err)
      assert.equal("kind file\n", err)
      assert.is_true(S.read_all(out) == WRITTEN)
    end)

    it("writes to a file opened for appending", function()
      local out = tmpfile("before\n")
      local _, err, rc = S.run(("%s %s >>%s"):format(TIDE, script(WRITER),
                                                    S.shell_quote(out)))
      assert.equal(0, rc, err)
      assert.is_true(S.read_all(out) == "before\n" .. WRITTEN)
    end)

    it("writes to a pipe", function()
      local out, err, rc = S.run(("%s %s"):format(TIDE, script(WRITER)))
      assert.equal(0, rc, err)
      assert.equal("kind pipe\n", err)
      assert.is_true(out == WRITTEN)
    end)

    it("writes to /dev/null", function()
      local out, err, rc = S.run(("%s %s >/dev/null"):format(TIDE, script(WRITER)))
      assert.equal(0, rc, err)
      assert.equal("kind char\n", err)
      assert.equal("", out)
    end)

    it("gets EPIPE from a pipe nobody reads any more, and goes on", function()
      local path = tmpfile([[
        tide.stdin:read_line()
        local ok, e, code = tide.stdout:write("lost\n")
        print("print does not crash either")
        io.stdout:flush()
        tide.stderr:write(tostring(ok), " ", tostring(code), "\n")
        local ok2, _, code2 = tide.stdout:write("again\n")
        tide.stderr:write(tostring(ok2), " ", tostring(code2), "\n")
        tide.stderr:write(tide.stdout.kind, "\n")
      ]])
      local ch = assert(process.spawn{S.TIDE, path, stdin = "pipe",
                                      stdout = "pipe", stderr = "pipe"})
      ch.stdout:close() -- the only reader
      ch.stdin:write("go\n")
      local err = {}
      while true do
        local d = ch.stderr:read()
        if not d then break end
        err[#err + 1] = d
      end
      assert.equal(0, ch:wait(5))
      assert.equal("nil EPIPE\nnil EPIPE\npipe\n", table.concat(err))
    end)

    it("waits for a slow reader (backpressure), losing nothing", function()
      local path = tmpfile([[
        local chunk = ("z"):rep(65536)
        for _ = 1, 64 do assert(tide.stdout:write(chunk)) end
      ]])
      local ch = assert(process.spawn{S.TIDE, path, stdout = "pipe"})
      local n = 0
      while true do
        local d = ch.stdout:read(1000)
        if not d then break end
        n = n + #d
        if n % 100000 < 1000 then tide.sleep(0.001) end
      end
      assert.equal(0, ch:wait(5))
      assert.equal(64 * 65536, n)
    end)
  end)

  describe("stdin", function()
    it("reads a regular file", function()
      local input = tmpfile(lines(3000))
      local out, err, rc = S.run(("%s %s <%s"):format(TIDE, script(COPIER),
                                                     S.shell_quote(input)))
      assert.equal(0, rc, err)
      assert.equal("file 3000 nonblock=false\n", err)
      assert.is_true(out == lines(3000))
    end)

    it("reads a pipe, leaving the pipe's own flags alone", function()
      local ch = assert(process.spawn{S.TIDE, tmpfile(COPIER), stdin = "pipe",
                                      stdout = "pipe", stderr = "pipe"})
      local writer = tide.spawn(function()
        assert(ch.stdin:write(lines(5000)))
        ch.stdin:close()
      end)
      local got = {}
      while true do
        local d = ch.stdout:read()
        if not d then break end
        got[#got + 1] = d
      end
      assert(writer:join(5))
      assert.equal("pipe 5000 nonblock=false\n", ch.stderr:read_line() .. "\n")
      assert.equal(0, ch:wait(5))
      assert.is_true(table.concat(got) == lines(5000))
    end)

    it("reads exactly, until a separator, and the rest, from a file", function()
      local input = tmpfile("abcdefXYZrest of it")
      local out, err, rc = S.run(("%s %s <%s"):format(TIDE, script([[
        print(tide.stdin:read_exactly(3), tide.stdin:read_until("XYZ"),
              tide.stdin:read(), tide.stdin:read())
      ]]), S.shell_quote(input)))
      assert.equal(0, rc, err)
      assert.equal("abc\tdef\trest of it\tnil\n", out)
    end)
  end)

  it("read and write a terminal, leaving it blocking for the shell", function()
    -- a pseudo-terminal made by python3's pty module (the DNS spec needs
    -- python3 too); the child tide reads a line from it and writes back
    local harness = tmpfile([=[
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], sys.argv[2]])
os.write(fd, b"typed line\n")
out = b""
while True:
    try:
        d = os.read(fd, 4096)
    except OSError:
        break
    if not d:
        break
    out += d
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode().replace("\r\n", "\n"))
sys.stdout.write("status %d\n" % os.waitstatus_to_exitcode(st))
]=])
    local child = tmpfile([[
      local line = tide.stdin:read_line()
      assert(tide.stdout:write("kinds ", tide.stdin.kind, " ", tide.stdout.kind,
                               " got ", line, "\n"))
      local function nonblock(fd)
        local f = io.open("/proc/self/fdinfo/" .. fd)
        local flags = tonumber(f:read("*a"):match("flags:%s*(%d+)"), 8)
        f:close()
        return tostring(bit.band(flags, 2048) ~= 0)
      end
      print("nonblock " .. nonblock(0) .. " " .. nonblock(1))
    ]])
    local r = assert(process.run{"python3", harness, S.TIDE, child, timeout = 10})
    assert.equal(0, r.code, r.stderr)
    -- (the terminal echoes what was typed)
    assert.equal("typed line\nkinds tty tty got typed line\nnonblock false false\nstatus 0\n",
                 r.stdout)
  end)

  it("are made on first use only", function()
    local out, err, rc = S.run_child([[
      print(rawget(tide, "stdout") == nil, package.loaded["tide.stdio"] == nil)
      local s = tide.stdout
      print(rawget(tide, "stdout") == nil, tostring(s):match("^tide%.stdout"))
    ]])
    assert.equal(0, rc, err)
    assert.equal("true\ttrue\nfalse\ttide.stdout\n", out)
  end)

  it("raise on the wrong direction and on misuse", function()
    local out, err, rc = S.run_child([[
      print(pcall(tide.stdout.read, tide.stdout))
      print(pcall(tide.stdin.write, tide.stdin, "x"))
      print(pcall(tide.stdout.write, tide.stdout, {}))
      tide.stderr:close()
      print(pcall(tide.stderr.write, tide.stderr, "x"))
    ]])
    assert.equal(0, rc, err)
    assert.matches("false\t[^\n]*stdout is not open for reading\n", out)
    assert.matches("false\t[^\n]*stdin is not open for writing\n", out)
    assert.matches("false\t[^\n]*bad argument #1 to 'write' %(string expected, got table%)\n", out)
    assert.matches("false\t[^\n]*attempt to use a closed stream\n", out)
  end)
end)
