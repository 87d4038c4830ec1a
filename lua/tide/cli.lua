-- lua/tide/cli.lua - what the `tide` command runs as its main task: the
-- -e and -l actions in order, then the script (or standard input), then
-- the REPL when asked for (-i) or when there is no script on a terminal.
local tide = require "tide"
local stderr, stdout = io.stderr, io.stdout

local function fail(msg)
  stderr:write("tide: ", tostring(msg), "\n")
  tide.exit(1)
end

local function load_stdin()
  local code = io.stdin:read("*a")
  if not code then return nil, "cannot read stdin" end
  code = code:gsub("^#![^\n]*", "")
  return loadstring(code, "=stdin")
end

-- One line of input, read when the terminal has one ready, so the loop
-- keeps running while the REPL waits.
local function read_line(prompt)
  stdout:write(prompt)
  stdout:flush()
  tide._wait_readable(0)
  return io.stdin:read("*l")
end

-- the traceback down to the line typed, without the REPL's own frames
local function on_error(e)
  return (debug.traceback(tostring(e), 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
end

local function print_results(ok, ...)
  if not ok then
    stderr:write(tostring((...)), "\n")
  elseif select("#", ...) > 0 then
    print(...)
  end
end

local function repl()
  local chunk = ""
  while true do
    local line = read_line(chunk == "" and "> " or ">> ")
    if not line then -- end of input ends tide, as in Node's REPL
      stdout:write("\n")
      return tide.exit(0)
    end
    chunk = chunk == "" and line or chunk .. "\n" .. line
    local f, err = loadstring("return " .. chunk, "=stdin")
    if not f then f, err = loadstring(chunk, "=stdin") end
    if f then
      chunk = ""
      print_results(xpcall(f, on_error))
    elseif not err:find("<eof>", 1, true) then
      chunk = ""
      stderr:write(err, "\n")
    end
  end
end

return function(plan)
  -- SIGINT and SIGTERM without a watcher end the command with status
  -- 130 / 143 after its close callbacks (modules/signal.c); a program
  -- that embeds tide keeps its own signal dispositions
  require("tide.signal.c").defaults()
  return function()
    local actions = plan.actions
    for i = 1, #actions, 2 do
      local kind, value = actions[i], actions[i + 1]
      if kind == "e" then
        local f, err = loadstring(value, "=(command line)")
        if not f then return fail(err) end
        f()
      else
        require(value)
      end
    end
    local script = plan.script
    if not script and #actions == 0 and not plan.interactive
       and not plan.version_shown then
      if plan.tty then
        print("tide " .. tide.version .. " -- type Lua; it runs in a task")
        return repl()
      end
      script = "-"
    end
    if script then
      local f, err
      if script == "-" then f, err = load_stdin() else f, err = loadfile(script) end
      if not f then return fail(err) end
      f(unpack(arg or {}, 1, arg and #arg or 0))
    end
    if plan.interactive then repl() end
  end
end
