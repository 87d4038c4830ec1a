-- lua/tide/fs.lua - `require "tide.fs"`: files and folders on the worker
-- pool, file handles, and inotify watchers in the loop. modules/fs.c is
-- the C half ("tide.fs.c"); docs/fs.md is the manual.
--
-- This half checks arguments and options (misuse raises, naming the
-- argument), parses open's flags, and gives files what is easier in Lua:
-- the read-ahead of lines(), and waking the tasks that wait on a file when
-- another task closes it. Every call that waits is one pool job: a path
-- call is a waiting function of the C half; a file's call starts its job
-- here and waits on the request, which close() can complete early.

local tide = require "tide"
local C = require "tide.fs.c"

local type, error, pairs, tostring, setmetatable, getmetatable =
  type, error, pairs, tostring, setmetatable, getmetatable
local floor, huge = math.floor, math.huge
local await, complete, current = tide._await, tide._complete, tide.current
local O = C.O

local fs = {}

-- read_file's default max: 1 GiB. (LuaJIT's strings stop short of 2 GiB.)
local DEFAULT_MAX = 2^30
local MAX_STRING = 0x7fffff00
local CHUNK = 65536 -- file:read() with no count, and lines()' read-ahead

-- argument checks -----------------------------------------------------------
-- level: 3 when called by the public function itself, 4 from a checker.

local argerror = tide._argerror

local describe = tide._describe

local function check_path(p, n, fname, what)
  if type(p) ~= "string" then
    argerror(n, fname, (what or "path") .. " must be a string, got " ..
      type(p), 4)
  end
  if p:find("\0", 1, true) then
    argerror(n, fname, (what or "path") .. " must not contain a NUL byte", 4)
  end
  return p
end

-- A mode: an integer 0..0o7777 (Lua 5.1 has no octal literals: 420 or
-- tonumber("644", 8)), or a string of octal digits ("644", "0755").
local function check_mode(m, n, fname, default)
  if m == nil then return default end
  local v = m
  if type(m) == "string" and m:match("^[0-7]+$") and #m <= 6 then
    v = tonumber(m, 8)
  end
  if type(v) ~= "number" or v ~= floor(v) or v < 0 or v > 4095 then
    argerror(n, fname, "mode must be an integer from 0 to 4095 (0o7777) or " ..
      "an octal string such as \"644\", got " .. describe(m), 4)
  end
  return v
end

local NO_OPTIONS = {}

-- opts: nil or a table whose keys are all in `allowed` (name -> kind)
local function check_options(opts, n, fname, allowed)
  if opts == nil then return NO_OPTIONS end
  if type(opts) ~= "table" then
    argerror(n, fname, "options must be a table, got " .. type(opts), 4)
  end
  for k, v in pairs(opts) do
    local kind = allowed[k]
    if not kind then
      argerror(n, fname, "unknown option '" .. tostring(k) .. "'", 4)
    end
    if kind == "boolean" and type(v) ~= "boolean" then
      argerror(n, fname, "option '" .. k .. "' must be a boolean, got " ..
        type(v), 4)
    end
  end
  return opts
end

local function check_count(v, n, fname, what)
  if type(v) ~= "number" or v ~= floor(v) or v < 0 or v > MAX_STRING then
    argerror(n, fname, what .. " must be an integer from 0 to " ..
      MAX_STRING .. ", got " .. describe(v), 4)
  end
  return v
end

-- files and folders ---------------------------------------------------------

local READ_OPTS = {max = "number"}

function fs.read_file(path, opts)
  check_path(path, 1, "read_file")
  opts = check_options(opts, 2, "read_file", READ_OPTS)
  local max = opts.max
  if max == nil then max = DEFAULT_MAX
  else check_count(max, 2, "read_file", "option 'max'") end
  return C.read_file(path, max)
end

local WRITE_OPTS = {mode = "mode", append = "boolean", atomic = "boolean"}

function fs.write_file(path, data, opts)
  check_path(path, 1, "write_file")
  if type(data) ~= "string" then
    argerror(2, "write_file", "data must be a string, got " .. type(data))
  end
  opts = check_options(opts, 3, "write_file", WRITE_OPTS)
  local mode = check_mode(opts.mode, 3, "write_file", 438) -- 0666
  if opts.append and opts.atomic then
    argerror(3, "write_file",
      "options 'append' and 'atomic' cannot be combined")
  end
  return C.write_file(path, data, mode, opts.append, opts.atomic)
end

function fs.stat(path)
  check_path(path, 1, "stat")
  return C.stat(path)
end

function fs.lstat(path)
  check_path(path, 1, "lstat")
  return C.lstat(path)
end

function fs.exists(path)
  check_path(path, 1, "exists")
  return C.exists(path)
end

function fs.readdir(path)
  check_path(path, 1, "readdir")
  return C.readdir(path)
end

local MKDIR_OPTS = {mode = "mode", recursive = "boolean"}

function fs.mkdir(path, opts)
  check_path(path, 1, "mkdir")
  opts = check_options(opts, 2, "mkdir", MKDIR_OPTS)
  local mode = check_mode(opts.mode, 2, "mkdir", 511) -- 0777
  return C.mkdir(path, mode, opts.recursive)
end

local REMOVE_OPTS = {recursive = "boolean"}

function fs.remove(path, opts)
  check_path(path, 1, "remove")
  opts = check_options(opts, 2, "remove", REMOVE_OPTS)
  if opts.recursive and path:match("^/+$") then
    argerror(1, "remove", "refusing to remove / recursively")
  end
  return C.remove(path, opts.recursive)
end

function fs.rename(from, to)
  check_path(from, 1, "rename", "from")
  check_path(to, 2, "rename", "to")
  return C.rename(from, to)
end

function fs.realpath(path)
  check_path(path, 1, "realpath")
  return C.realpath(path)
end

function fs.symlink(target, path)
  check_path(target, 1, "symlink", "target")
  check_path(path, 2, "symlink")
  return C.symlink(target, path)
end

function fs.readlink(path)
  check_path(path, 1, "readlink")
  return C.readlink(path)
end

function fs.chmod(path, mode)
  check_path(path, 1, "chmod")
  if mode == nil then argerror(2, "chmod", "mode expected, got nil") end
  return C.chmod(path, check_mode(mode, 2, "chmod"))
end

-- mkdtemp([prefix]): a new folder named prefix .. six random characters;
-- the default prefix is $TMPDIR/tide- (or /tmp/tide-)
function fs.mkdtemp(prefix)
  if prefix == nil then
    local dir = os.getenv("TMPDIR")
    if not dir or dir == "" then dir = "/tmp" end
    prefix = dir:gsub("/+$", "") .. "/tide-"
  end
  check_path(prefix, 1, "mkdtemp", "prefix")
  return C.mkdtemp(prefix)
end

-- files ---------------------------------------------------------------------

-- io.open's flags, plus "x" (exclusive create) with "w" or "a"; "b" is
-- accepted and means nothing, as on POSIX.
local BASE = {
  r = {O.RDONLY, O.RDWR},
  w = {O.WRONLY + O.CREAT + O.TRUNC, O.RDWR + O.CREAT + O.TRUNC},
  a = {O.WRONLY + O.CREAT + O.APPEND, O.RDWR + O.CREAT + O.APPEND},
}

local function parse_flags(s)
  local base, rest = s:match("^([rwa])([+xb]*)$")
  if not base then return nil end
  local plus, x, b = false, false, false
  for c in rest:gmatch(".") do
    if c == "+" then
      if plus then return nil end
      plus = true
    elseif c == "x" then
      if x or base == "r" then return nil end
      x = true
    else
      if b then return nil end
      b = true
    end
  end
  local f = BASE[base][plus and 2 or 1]
  if x then f = f + O.EXCL end
  return f
end

local File = {}
File.__index = File

local WEAK_KEYS = {__mode = "k"}

local function check_file(f, fname)
  if getmetatable(f) ~= File then
    error(("bad argument #1 to '%s' (file expected, got %s)"):format(
      fname, type(f)), 3)
  end
  if f.closed then error("attempt to use a closed file", 3) end
end

function fs.open(path, flags, mode)
  check_path(path, 1, "open")
  if flags == nil then flags = "r" end
  local oflags = type(flags) == "string" and parse_flags(flags)
  if not oflags then
    argerror(2, "open", "flags must be \"r\", \"w\", \"a\", \"r+\", \"w+\" " ..
      "or \"a+\", with \"x\" for an exclusive create (\"wx\"), got " ..
      describe(flags))
  end
  mode = check_mode(mode, 3, "open", 438) -- 0666, less the umask
  local ud, msg, code = C.open(path, oflags, mode)
  if not ud then return nil, msg, code end
  -- buf:sub(bpos) is data read ahead by lines() and not yet consumed
  -- waiters: the requests tasks wait on (weak: a wait that timed out
  -- leaves its entry to the collector)
  return setmetatable({ud = ud, path = path, flags = flags, closed = false,
                       buf = "", bpos = 1,
                       waiters = setmetatable({}, WEAK_KEYS)}, File)
end

local function settle(waiters, req, ...)
  waiters[req] = nil
  return ...
end

-- Starts start(self.ud, ...) and waits for its results; close() may end
-- the wait first with nil, "closed", "ECANCELED". (Called by the methods:
-- level 3 is their caller.)
local function wait(self, start, fname, ...)
  if not current() then
    error(("'%s' must be called inside a task"):format(fname), 3)
  end
  local req = start(self.ud, ...)
  local waiters = self.waiters
  waiters[req] = true
  return settle(waiters, req, await(req, nil, fname))
end

-- read([n]): up to n bytes (default 64 KiB); nil at the end of the file.
-- A regular file gives n bytes unless the end comes first; a FIFO or a
-- device what one read(2) gives.
function File:read(n)
  check_file(self, "read")
  if n == nil then n = CHUNK
  else check_count(n, 1, "read", "count") end
  local buf, p = self.buf, self.bpos
  local ahead = #buf - p + 1
  if ahead > 0 then
    if ahead >= n then
      if ahead == n then self.buf, self.bpos = "", 1
      else self.bpos = p + n end
      return buf:sub(p, p + n - 1)
    end
    self.buf, self.bpos = "", 1
    local head = buf:sub(p)
    local more = wait(self, C.fread, "read", n - ahead)
    -- at the end of the file, or on an error (which the next read meets
    -- again), what was read ahead
    if more then return head .. more end
    return head
  end
  if n == 0 then return "" end
  return wait(self, C.fread, "read", n)
end

function File:write(data)
  check_file(self, "write")
  if type(data) == "number" then data = tostring(data) end
  if type(data) ~= "string" then
    argerror(1, "write", "data must be a string, got " .. type(data))
  end
  local back = #self.buf - self.bpos + 1 -- the read-ahead is given back
  self.buf, self.bpos = "", 1
  return wait(self, C.fwrite, "write", data, back)
end

local WHENCE = {set = true, cur = true, ["end"] = true}

-- seek([whence[, offset]]) -> position; whence "set", "cur" (default) or
-- "end", as in io
function File:seek(whence, offset)
  check_file(self, "seek")
  if whence == nil then whence = "cur" end
  if not WHENCE[whence] then
    argerror(1, "seek", "whence must be \"set\", \"cur\" or \"end\", got " ..
      describe(whence))
  end
  if offset == nil then offset = 0
  elseif type(offset) ~= "number" or offset ~= floor(offset) or
         offset == huge or offset == -huge then
    argerror(2, "seek", "offset must be an integer, got " .. describe(offset))
  end
  local buf, p = self.buf, self.bpos
  local back = #buf - p + 1
  self.buf, self.bpos = "", 1
  local pos, msg, code = wait(self, C.fseek, "seek", whence, offset, back)
  if not pos and not self.closed and self.buf == "" then
    self.buf, self.bpos = buf, p -- nothing moved: keep the read-ahead
  end
  return pos, msg, code
end

-- lines() -> iterator of the lines, without their "\n"; the last line may
-- lack one. It reads ahead 64 KiB at a time (read, write and seek take
-- the read-ahead into account) and raises on a read error.
function File:lines()
  check_file(self, "lines")
  return function()
    check_file(self, "lines")
    local buf, p = self.buf, self.bpos
    local scan = p
    while true do
      local i = buf:find("\n", scan, true)
      if i then
        if i == #buf then self.buf, self.bpos = "", 1
        else self.bpos = i + 1 end
        return buf:sub(p, i - 1)
      end
      scan = #buf - p + 2 -- where the next search starts, once trimmed
      local chunk, msg = wait(self, C.fread, "lines", CHUNK)
      if not chunk then
        if msg then error(msg, 2) end
        self.buf, self.bpos = "", 1
        if p > #buf then return nil end
        return buf:sub(p)
      end
      buf = (p > #buf and "" or buf:sub(p)) .. chunk
      p = 1
      self.buf, self.bpos = buf, 1
    end
  end
end

function File:stat()
  check_file(self, "stat")
  return wait(self, C.fstat, "stat")
end

function File:sync()
  check_file(self, "sync")
  return wait(self, C.fsync, "sync")
end

-- close(): idempotent. Tasks waiting on the file wake at once with nil,
-- "closed", "ECANCELED" (their jobs still run; the results are dropped).
-- With nothing in flight it waits for close(2) and returns true or its
-- error; otherwise the descriptor is closed on the pool as soon as the
-- last job in flight ends, and close() returns true.
function File:close()
  if getmetatable(self) ~= File then
    error(("bad argument #1 to 'close' (file expected, got %s)"):format(
      type(self)), 2)
  end
  if self.closed then return true end
  self.closed = true
  self.buf, self.bpos = "", 1
  for req in pairs(self.waiters) do
    complete(req, nil, "closed", "ECANCELED") -- (no-op if already woken)
  end
  local req = C.fclose(self.ud)
  if not req or not current() then return true end
  return await(req, nil, "close")
end

function File:__tostring()
  return ("tide.fs.file (%s%s)"):format(self.closed and "closed " or "",
                                        self.path)
end

-- watchers ------------------------------------------------------------------

-- watch(path, fn) -> watcher: fn(event, name) runs as a task callback for
-- every event ("create", "modify", "delete", "rename", or "overflow")
function fs.watch(path, fn)
  check_path(path, 1, "watch")
  if type(fn) ~= "function" then
    argerror(2, "watch", "function expected, got " .. type(fn))
  end
  local w, msg, code = C.watch(path)
  if not w then return nil, msg, code end
  return C.watch_start(w, fn)
end

return fs
