-- lua/tide/worker.lua - `require "tide.worker"`: CPU-heavy Lua work on the
-- worker pool, each pool thread running it in its own lua_State
-- (modules/worker.c is the C half; docs/worker.md the manual).
--
--   worker.run(module, fn_name, ...) -> results
--       runs require(module)[fn_name](...) on a pool thread; the calling
--       task waits, the loop does not. Arguments and results are copied
--       (nil, booleans, numbers, strings, tables of those). An error in
--       the worker, or a module or function that is not there, returns
--       nil, message (with the worker's traceback). A value that cannot
--       be copied raises in the caller. Bound it with tide.timeout; a
--       cancelled call's job runs to its end and its results are dropped.

local C = require "tide.worker.c"

local pack, send = C.pack, C.run
local type, error = type, error

local worker = {max_depth = C.max_depth}

-- status, ... from modules/worker.c's push: 0 and the results; 1 and the
-- worker's error; 2 and why a result could not be copied (raised). run
-- tail-calls it, so level 2 is run's caller.
local function finish(status, ...)
  if status == 0 then return ... end
  if status == 1 then return nil, (...) end
  error((...), 2)
end

function worker.run(module, fn_name, ...)
  if type(module) ~= "string" then
    error("bad argument #1 to 'run' (string expected, got " .. type(module) .. ")", 2)
  end
  if type(fn_name) ~= "string" then
    error("bad argument #2 to 'run' (string expected, got " .. type(fn_name) .. ")", 2)
  end
  local args, err = pack(module, fn_name, ...)
  if not args then error(err, 2) end
  return finish(send(args)) -- checks that it runs in a task, then waits
end

return worker
