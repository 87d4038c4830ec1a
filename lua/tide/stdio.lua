-- lua/tide/stdio.lua - tide.stdin, tide.stdout and tide.stderr: the
-- standard descriptors as streams, made on first use (lua/tide/core.lua
-- asks for them here). The C half is in modules/process.c (stdio_open,
-- stdio_read, stdio_write); docs/process.md, "Standard streams", is the
-- manual.
--
-- A terminal, a pipe or a socket is polled: a tide stream (net's
-- connection face) on a descriptor of its own (see stdio_open). A regular
-- file or a device cannot be polled: reads and writes go to the worker
-- pool, one at a time per direction. Either way the object has the same
-- calls: read, read_line, read_exactly, read_until, write, flush, close,
-- set_timeout, ref, unref, and the fields fd and kind.

local tide = require "tide"
local net = require "tide.net" -- (also registers the streams' metatable)
local NC = require "tide.net.c"
local C = require "tide.process.c"

local type, error, tostring, select, setmetatable, getmetatable, pcall =
  type, error, tostring, select, setmetatable, getmetatable, pcall
local concat = table.concat
local floor, huge = math.floor, math.huge
local io_stdout, io_stderr = io.stdout, io.stderr
local s_buffered = NC.s_buffered

local stdio = {}

local NAMES = {[0] = "stdin", "stdout", "stderr"}
local CHUNK = 65536
local MAX_STRING = 0x7fffff00

local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 4)
end

local function check_count(v, n, fname, what, min)
  if type(v) ~= "number" or v ~= floor(v) or v < min or v > MAX_STRING then
    argerror(n, fname, ("%s must be an integer from %d to %d, got %s"):format(
      what, min, MAX_STRING, tostring(v)))
  end
  return v
end

-- C's buffered stdout (print, io.write) goes first, so that output
-- written through both comes out in the order it was written.
local function flush_c(fd)
  if fd == 1 then io_stdout:flush() elseif fd == 2 then io_stderr:flush() end
end

local Stdio = {}
Stdio.__index = Stdio

local function check(s, fname, open)
  if getmetatable(s) ~= Stdio then
    error(("bad argument #1 to '%s' (standard stream expected, got %s)"):format(
      fname, type(s)), 3)
  end
  if open and s.closed then error("attempt to use a closed stream", 3) end
end

local function check_dir(s, fname, reading)
  if (s.fd == 0) ~= reading then
    error(("%s is not open for %s"):format(NAMES[s.fd],
      reading and "reading" or "writing"), 3)
  end
end

-- the pool's side: a buffer for reads; calls take turns per direction ------

local function timed(s, fn, ...)
  if not s.timeout then return fn(...) end
  local ok, a, b, c = tide.timeout(s.timeout, fn, ...)
  if ok then return a, b, c end
  return a, b, c -- (nil, "timed out", "ETIMEDOUT")
end

-- one read of the pool into the buffer: true | false (end) | nil, msg, code
local function fill(s)
  if s.eof then return false end
  local d, e, code = timed(s, C.stdio_read, s.fd, CHUNK)
  if d then s.buf = s.buf .. d; return true end
  if e then return nil, e, code end
  s.eof = true
  return false
end

local function unlocked(sem, ok, ...)
  sem:release()
  if not ok then error((...), 0) end
  return ...
end

local function locked(s, lock, fn, ...)
  local sem = s[lock]
  sem:acquire()
  return unlocked(sem, pcall(fn, s, ...))
end

local function take(s, n)
  local d = s.buf:sub(1, n)
  s.buf = s.buf:sub(n + 1)
  return d
end

local function pool_read(s, n)
  while #s.buf == 0 do
    local ok, e, code = fill(s)
    if ok == nil then return nil, e, code end
    if not ok then return nil end
  end
  return take(s, n)
end

local function pool_read_until(s, sep, max, line)
  local from = 1
  while true do
    local i = s.buf:find(sep, from, true)
    if i and (i - 1 <= max) then
      local d = take(s, i + #sep - 1):sub(1, i - 1)
      if line and d:sub(-1) == "\r" then d = d:sub(1, -2) end
      return d
    end
    if #s.buf > max then return nil, "line too long", "E2BIG" end
    from = #s.buf - #sep + 2
    if from < 1 then from = 1 end
    local ok, e, code = fill(s)
    if ok == nil then return nil, e, code end
    if not ok then
      if line and #s.buf > 0 then return take(s, #s.buf) end
      return nil
    end
  end
end

local function pool_read_exactly(s, n)
  while #s.buf < n do
    local ok, e, code = fill(s)
    if ok == nil then return nil, e, code end
    if not ok then return nil end
  end
  return take(s, n)
end

local function pool_write(s, data)
  return timed(s, C.stdio_write, s.fd, data)
end

-- the calls --------------------------------------------------------------------

function Stdio:read(n)
  check(self, "read", true)
  check_dir(self, "read", true)
  if n == nil then n = MAX_STRING else check_count(n, 1, "read", "count", 1) end
  if self.conn then return self.conn:read(n) end
  if #self.buf > 0 then return take(self, n) end
  return locked(self, "rlock", pool_read, n)
end

function Stdio:read_line(max)
  check(self, "read_line", true)
  check_dir(self, "read_line", true)
  if max ~= nil then check_count(max, 1, "read_line", "max", 1) end
  if self.conn then return self.conn:read_line(max) end
  return locked(self, "rlock", pool_read_until, "\n", max or CHUNK, true)
end

function Stdio:read_exactly(n)
  check(self, "read_exactly", true)
  check_dir(self, "read_exactly", true)
  check_count(n, 1, "read_exactly", "count", 0)
  if self.conn then return self.conn:read_exactly(n) end
  return locked(self, "rlock", pool_read_exactly, n)
end

function Stdio:read_until(sep, max)
  check(self, "read_until", true)
  check_dir(self, "read_until", true)
  if type(sep) ~= "string" or sep == "" then
    argerror(1, "read_until", "separator must be a non-empty string, got " ..
      type(sep))
  end
  if max ~= nil then check_count(max, 2, "read_until", "max", 0) end
  if self.conn then return self.conn:read_until(sep, max) end
  return locked(self, "rlock", pool_read_until, sep, max or CHUNK, false)
end

-- write(data, ...) -> true | nil, msg, code: returns once the kernel has
-- the data (nothing stays queued in tide when the script ends)
function Stdio:write(data, ...)
  check(self, "write", true)
  check_dir(self, "write", false)
  local n = select("#", ...)
  for i = 0, n do
    local v = i == 0 and data or select(i, ...)
    local t = type(v)
    if t ~= "string" and t ~= "number" then
      argerror(i + 1, "write", "string expected, got " .. t)
    end
  end
  flush_c(self.fd)
  local c = self.conn
  if c then
    local ok, e, code = c:write(data, ...)
    if not ok then return nil, e, code end
    local _, out = s_buffered(c[1])
    if out > 0 then return c:flush() end
    return true
  end
  if n > 0 then data = concat({data, ...}) else data = tostring(data) end
  return locked(self, "wlock", pool_write, data)
end

function Stdio:flush()
  check(self, "flush", true)
  if self.conn and self.fd ~= 0 then return self.conn:flush() end
  return true
end

-- close(): closes tide's descriptor for the stream (the standard
-- descriptor itself stays open for print and io.write)
function Stdio:close()
  check(self, "close")
  if self.closed then return end
  self.closed = true
  if self.conn then self.conn:close() end
end

function Stdio:set_timeout(s)
  check(self, "set_timeout", true)
  if s ~= nil and (type(s) ~= "number" or s ~= s or s == huge or s == -huge) then
    argerror(1, "set_timeout", "seconds must be a finite number or nil")
  end
  self.timeout = s and (s < 0 and 0 or s)
  if self.conn then self.conn:set_timeout(s) end
end

function Stdio:ref()
  check(self, "ref")
  if self.conn then self.conn:ref() end
  return self
end

function Stdio:unref()
  check(self, "unref")
  if self.conn then self.conn:unref() end
  return self
end

function Stdio:__tostring()
  return ("tide.%s (%s%s)"):format(NAMES[self.fd], self.kind,
    self.closed and ", closed" or "")
end

local function open(fd)
  local kind, ud = C.stdio_open(fd)
  local s = setmetatable({fd = fd, kind = kind, closed = false}, Stdio)
  if ud then
    s.conn = net._wrap(ud, "pipe", nil, nil, NAMES[fd])
  else
    s.buf, s.eof = "", false
    s.rlock, s.wlock = tide.semaphore(1), tide.semaphore(1)
  end
  return s
end

-- stdio.stdin and the others: made on first use
return setmetatable(stdio, {__index = function(t, k)
  for fd = 0, 2 do
    if NAMES[fd] == k then
      local s = open(fd)
      t[k] = s
      rawset(tide, k, s) -- (core.lua's __index is not asked again)
      return s
    end
  end
end})
