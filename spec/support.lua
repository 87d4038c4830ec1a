-- spec/support.lua - what the Lua specs share: running a child `tide`,
-- files, busy-waiting, and a watchdog that fails a run whose tests stopped
-- waiting on something that never came.  `local S = require "spec.support"`
local S = {}

local function cwd()
  local p = assert(io.popen("pwd"))
  local d = p:read("*l")
  p:close()
  return d
end

-- the binary under test: $TIDE_BIN, or build/tide, as an absolute path
S.TIDE = os.getenv("TIDE_BIN") or "build/tide"
if S.TIDE:sub(1, 1) ~= "/" then S.TIDE = cwd() .. "/" .. S.TIDE end

function S.shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function S.read_all(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function S.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function S.busy(s)
  local deadline = tide.hrtime() + s
  while tide.hrtime() < deadline do end
end

-- Runs a shell command line (stderr to a file, bounded by `timeout 10`),
-- in folder dir if given: returns stdout, stderr, exit status and
-- wall-clock seconds.
function S.run(cmdline, dir)
  local errf = os.tmpname()
  local t0 = tide.hrtime()
  local p = assert(io.popen(("%stimeout 10 %s 2>%s; echo \"rc=$?\""):format(
    dir and ("cd " .. S.shell_quote(dir) .. " && ") or "", cmdline,
    S.shell_quote(errf))))
  local out = p:read("*a")
  p:close()
  local elapsed = tide.hrtime() - t0
  local err = S.read_all(errf)
  os.remove(errf)
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return (out:gsub("rc=%d+\n$", "")), err, rc, elapsed
end

-- Runs `code` as a script in a child tide: stdout, stderr, status, seconds.
function S.run_child(code)
  local script = os.tmpname()
  S.write_file(script, code)
  local out, err, rc, elapsed = S.run(S.shell_quote(S.TIDE) .. " " ..
                                      S.shell_quote(script))
  os.remove(script)
  return out, err, rc, elapsed
end

-- Children to kill when the test ends (`after_each(S.reap_all)`), if they
-- still run, so that a failing test leaves no server behind. S.reap
-- returns child.
local reaped = {}
function S.reap(child)
  reaped[#reaped + 1] = child
  return child
end
function S.reap_all()
  for i = #reaped, 1, -1 do
    if reaped[i]:running() then reaped[i]:kill("KILL") end
    reaped[i] = nil
  end
end

-- If a test waits for something that never comes and nothing else keeps
-- the loop alive, tide would end the run quietly with status 0 and the
-- missing tests unreported. This timer keeps the loop alive and fails the
-- run instead; stop it in teardown once every test has finished.
function S.watchdog(name)
  return tide.after(60, function()
    io.stderr:write("\n", name, ": a test never finished (deadlock?)\n")
    tide.exit(99)
  end)
end

return S
