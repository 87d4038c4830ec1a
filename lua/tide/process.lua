-- lua/tide/process.lua - `require "tide.process"`: child processes and
-- facts about this one. modules/process.c is the C half ("tide.process.c");
-- docs/process.md is the manual.
--
-- A child's pipes are tide streams (modules/stream.c) with the Lua face of
-- net's connections (net._wrap): read, read_line, write with
-- backpressure, close. The C half reports the child's end once, from the
-- poll phase; wait() takes turns on a condition until then.

local tide = require "tide"
local net = require "tide.net" -- (also registers the streams' metatable)
local C = require "tide.process.c"
local S = require "tide.signal.c"

local type, error, tostring, pairs, ipairs, setmetatable, getmetatable =
  type, error, tostring, pairs, ipairs, setmetatable, getmetatable
local floor, huge = math.floor, math.huge
local concat = table.concat
local hrtime, cond, spawn_task = tide.hrtime, tide.cond, tide.spawn
local wrap = net._wrap

local process = {}

process.pid = C.getpid()

-- argument checks ----------------------------------------------------------------

local argerror = tide._argerror

local check_seconds = tide._optional_seconds

-- A signal name ("SIGTERM", "TERM") or number -> signo, "SIGTERM"
local function check_signal(sig, n, fname)
  local signo, name = S.number(sig)
  if not signo then
    argerror(n, fname, "unknown signal " .. (type(sig) == "string" and
      ("%q"):format(sig) or tostring(sig)), 4)
  end
  return signo, name
end

local function remaining(deadline)
  if not deadline then return nil end
  local r = deadline - hrtime()
  return r > 0 and r or 0
end

local IO_MODES = {pipe = true, inherit = true, null = true}

local SPAWN_OPTS = {cwd = true, env = true, stdin = true, stdout = true,
                    stderr = true}
local RUN_OPTS = {cwd = true, env = true, stdin = true, stdout = true,
                  stderr = true, input = true, timeout = true,
                  max_output = true}

-- The command and options of spawn and run: file, argv, env list, cwd,
-- and the three stdio modes (defaults in dflt).
local function check_command(opts, fname, allowed, dflt)
  if type(opts) ~= "table" then
    argerror(1, fname, "table expected, got " .. type(opts), 4)
  end
  local n = #opts
  for k in pairs(opts) do
    if type(k) ~= "number" and not allowed[k] then
      argerror(1, fname, "unknown option '" .. tostring(k) .. "'", 4)
    elseif type(k) == "number" and (k < 1 or k > n or k ~= floor(k)) then
      argerror(1, fname, "the command must be a list without holes", 4)
    end
  end
  if n == 0 then argerror(1, fname, "command expected at [1]", 4) end
  local argv = {}
  for i = 1, n do
    local a = opts[i]
    if type(a) == "number" then a = tostring(a) end
    if type(a) ~= "string" or a:find("\0", 1, true) then
      argerror(1, fname, ("[%d] must be a string without NUL, got %s"):format(
        i, type(a)), 4)
    end
    argv[i] = a
  end
  if argv[1] == "" then argerror(1, fname, "command must not be empty", 4) end
  local env
  if opts.env ~= nil then
    if type(opts.env) ~= "table" then
      argerror(1, fname, "option 'env' must be a table, got " .. type(opts.env), 4)
    end
    env = {}
    for k, v in pairs(opts.env) do
      if type(v) == "number" then v = tostring(v) end
      if type(k) ~= "string" or k == "" or k:find("[=%z]") or
         type(v) ~= "string" or v:find("\0", 1, true) then
        argerror(1, fname, "option 'env' must map names to strings, got " ..
          tostring(k) .. " = " .. tostring(v), 4)
      end
      env[#env + 1] = k .. "=" .. v
    end
  end
  local cwd = opts.cwd
  if cwd ~= nil and (type(cwd) ~= "string" or cwd == "" or cwd:find("\0", 1, true)) then
    argerror(1, fname, "option 'cwd' must be a path, got " .. tostring(cwd), 4)
  end
  local modes = {}
  for i, k in ipairs({"stdin", "stdout", "stderr"}) do
    local m = opts[k]
    if m == nil then m = dflt[i] end
    if not IO_MODES[m] and not (i == 3 and m == "stdout") then
      argerror(1, fname, ("option '%s' must be \"pipe\", \"inherit\" or \"null\"%s, got %s")
        :format(k, i == 3 and " (or \"stdout\")" or "", tostring(m)), 4)
    end
    modes[i] = m
  end
  return argv, env, cwd, modes
end

-- children --------------------------------------------------------------------------
-- A child is a table: the C handle and the state kept here in array slots,
-- and the fields pid, stdin, stdout, stderr.

local UD, DONE, CODE, SIG, COND, CLOSED = 1, 2, 3, 4, 5, 6
local Child = {}
Child.__index = Child

local function check_child(ch, fname)
  if getmetatable(ch) ~= Child then
    error(("bad argument #1 to '%s' (child process expected, got %s)"):format(
      fname, type(ch)), 3)
  end
end

-- (the poll phase, from the C half) the child has ended
local function on_exit(ch, code, signo)
  ch[DONE], ch[CODE] = true, code
  if signo ~= 0 then
    local _, name = S.number(signo)
    ch[SIG] = name or signo
  end
  local q = ch[COND]
  if q then q:broadcast() end
end

local function stream(ud, what, pid)
  if not ud then return nil end
  local s = wrap(ud, "pipe", nil, nil, ("%s of process %d"):format(what, pid))
  return s
end

local function spawn(argv, env, cwd, modes)
  local ch = setmetatable({false, false, false, false, false, false}, Child)
  local ud, i, o, e = C.spawn(argv[1], argv, env, cwd, modes[1], modes[2],
                              modes[3], on_exit, ch)
  if not ud then return nil, i, o end
  local pid = C.child_pid(ud)
  ch[UD], ch.pid = ud, pid
  ch.stdin, ch.stdout, ch.stderr =
    stream(i, "stdin", pid), stream(o, "stdout", pid), stream(e, "stderr", pid)
  return ch
end

-- process.spawn{"cmd", "arg", ..., cwd=, env=, stdin=, stdout=, stderr=}
-- -> child | nil, msg, code. The stdio default is "inherit".
local SPAWN_DEFAULTS = {"inherit", "inherit", "inherit"}
function process.spawn(opts)
  local argv, env, cwd, modes = check_command(opts, "spawn", SPAWN_OPTS,
                                              SPAWN_DEFAULTS)
  return spawn(argv, env, cwd, modes)
end

-- wait([timeout]) -> code, signal | nil, "timed out", "ETIMEDOUT".
-- code is the exit status, or 128 + the signal's number when a signal
-- ended the child (then signal is its name, "SIGTERM").
function Child:wait(timeout)
  check_child(self, "wait")
  timeout = check_seconds(timeout, 1, "wait")
  if not self[DONE] then
    local q = self[COND]
    if not q then q = cond(); self[COND] = q end
    local deadline = timeout and hrtime() + timeout
    repeat
      local ok, e, code = q:wait(remaining(deadline))
      if not ok then return nil, e, code end
    until self[DONE]
  end
  if self[CODE] == nil then -- reaped by someone else (SIGCHLD ignored?)
    return nil, "the child's status was taken elsewhere", "ECHILD"
  end
  if self[SIG] then return self[CODE], self[SIG] end
  return self[CODE]
end

-- kill([sig]) -> true | nil, msg, code; sig defaults to "SIGTERM"
function Child:kill(sig)
  check_child(self, "kill")
  local signo = 15
  if sig ~= nil then signo = check_signal(sig, 1, "kill") end
  local ok, e, code = C.child_kill(self[UD], signo)
  if ok then return true end
  return nil, ("%s: process %d"):format(e, self.pid), code
end

-- running() -> boolean
function Child:running()
  check_child(self, "running")
  return not self[DONE]
end

function Child:ref()
  check_child(self, "ref")
  C.child_ref(self[UD], true)
  return self
end

function Child:unref()
  check_child(self, "unref")
  C.child_ref(self[UD], false)
  return self
end

-- close(): closes the pipes and lets the child no longer keep the loop
-- alive; the child runs on, and its end is still reaped.
function Child:close()
  check_child(self, "close")
  if self[CLOSED] then return end
  self[CLOSED] = true
  for _, k in ipairs({"stdin", "stdout", "stderr"}) do
    if self[k] then self[k]:close() end
  end
  C.child_ref(self[UD], false)
end

function Child:__tostring()
  return ("tide.process.child (%d, %s)"):format(self.pid, self[DONE] and
    ("exited: " .. tostring(self[SIG] or self[CODE])) or "running")
end

-- run ---------------------------------------------------------------------------------

local MAX_OUTPUT = 64 * 1024 * 1024

-- every byte of stream s, in a task: data | nil, msg, code; over max bytes
-- in all (shared[1] counts them): nil, "output too large", "ENOBUFS"
local function read_all(s, shared, max, ch)
  local parts, n = {}, 0
  while true do
    local d, e, code = s:read()
    if not d then
      if e then return nil, e, code end
      break
    end
    n = n + 1
    parts[n] = d
    shared[1] = shared[1] + #d
    if shared[1] > max then
      ch:kill("SIGKILL")
      return nil, ("output too large (over %d bytes)"):format(max), "ENOBUFS"
    end
  end
  return concat(parts)
end

local function write_input(s, input)
  s:write(input) -- (an EPIPE: the child did not want it all)
  s:close()
end

local function joined(ok, ...)
  if not ok then return nil, ... end
  return ...
end

-- run's second half: the child's end and its output
local function collect(ch, rout, rerr, deadline)
  local status, sig, wcode = ch:wait(remaining(deadline))
  local result = {}
  local failed, fcode
  if not status then
    failed, fcode = sig, wcode
    ch:kill("SIGKILL")
    ch:wait()
  end
  result.code, result.signal = status, sig
  for i = 1, 2 do
    local name, t = "stdout", rout
    if i == 2 then name, t = "stderr", rerr end
    if t then
      local d, re, rc = joined(t:join(remaining(deadline)))
      if d == nil and not failed then
        failed, fcode = re, rc
        if rc == "ETIMEDOUT" then failed = "timed out" end
      end
      result[name] = d
    end
  end
  if failed then
    ch:close()
    return nil, failed, fcode
  end
  return result
end

-- process.run{"cmd", ..., input=, timeout=, max_output=, cwd=, env=,
-- stdin=, stdout=, stderr=} -> {code=, signal=, stdout=, stderr=}
-- | nil, msg, code. stdout and stderr are captured ("pipe") unless told
-- otherwise; stdin is the input (a pipe) if given, else "null".
function process.run(opts)
  local input = type(opts) == "table" and opts.input
  local dflt = {input and "pipe" or "null", "pipe", "pipe"}
  local argv, env, cwd, modes = check_command(opts, "run", RUN_OPTS, dflt)
  if input ~= nil and input ~= false then
    if type(input) ~= "string" then
      argerror(1, "run", "option 'input' must be a string, got " .. type(input))
    end
    if modes[1] ~= "pipe" then
      argerror(1, "run", "option 'input' needs stdin = \"pipe\"")
    end
  end
  local timeout = check_seconds(opts.timeout, 1, "run", "option 'timeout'")
  local max = opts.max_output
  if max == nil then max = MAX_OUTPUT
  elseif type(max) ~= "number" or max < 0 or max ~= floor(max) then
    argerror(1, "run", "option 'max_output' must be a count of bytes, got " ..
      tostring(max))
  end
  local deadline = timeout and hrtime() + timeout
  local ch, e, code = spawn(argv, env, cwd, modes)
  if not ch then return nil, e, code end
  local shared = {0}
  local rout = ch.stdout and spawn_task(read_all, ch.stdout, shared, max, ch)
  local rerr = ch.stderr and spawn_task(read_all, ch.stderr, shared, max, ch)
  if ch.stdin then
    if input then spawn_task(write_input, ch.stdin, input)
    else ch.stdin:close() end
  end
  local ok, r, e2, code2 = pcall(collect, ch, rout, rerr, deadline)
  if not ok then -- (the task was cancelled, say): the child goes too
    ch:kill("SIGKILL")
    ch:close()
    error(r, 0)
  end
  return r, e2, code2
end

-- this process ---------------------------------------------------------------------

-- process.kill(pid, [sig]) -> true | nil, msg, code
function process.kill(pid, sig)
  if type(pid) ~= "number" or pid ~= floor(pid) then
    argerror(1, "kill", "pid must be an integer, got " .. tostring(pid))
  end
  local signo = 15
  if sig ~= nil then signo = check_signal(sig, 2, "kill") end
  local ok, e, code = S.kill(pid, signo)
  if ok then return true end
  return nil, ("%s: process %d"):format(e, pid), code
end

function process.getenv(name)
  if type(name) ~= "string" then
    argerror(1, "getenv", "string expected, got " .. type(name))
  end
  return os.getenv(name)
end

-- process.environ() -> {NAME = value, ...}: a copy, for spawn's env
function process.environ()
  return C.environ()
end

function process.cwd()
  return C.getcwd()
end

function process.chdir(path)
  if type(path) ~= "string" then
    argerror(1, "chdir", "string expected, got " .. type(path))
  end
  return C.chdir(path)
end

process.exit = tide.exit

return process
