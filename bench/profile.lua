-- bench/profile.lua: run a bench script under LuaJIT's sampling profiler.
--   build/tide bench/profile.lua MODE[,OUTFILE] script.lua [args...]
-- MODE is jit.p's option string, e.g. "v" (VM states: Native = compiled
-- trace, Interpreted, C code, Garbage collector, JIT compiler), "Fl"
-- (function and line), "l" (lines), "vl" (lines per VM state), "z" (zones).
-- The report goes to OUTFILE (default stdout) when the Lua state closes,
-- which also happens after tide.exit().
local spec = arg and arg[1]
local script = arg and arg[2]
if not spec or not script then
  io.stderr:write("usage: tide bench/profile.lua MODE[,OUTFILE] script.lua [args...]\n")
  return tide.exit(2)
end
local mode, out = spec:match("^([^,]*),?(.*)$")
local profile = require "jit.p"
profile.start(mode ~= "" and mode or "f", out ~= "" and out or nil)
-- stop (and write the report) when the state closes
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = function() profile.stop() end
rawset(_G, "__bench_profile_sentinel", sentinel)

local n = select("#", unpack(arg))
local rest = {[0] = script}
for i = 3, n do rest[i - 2] = arg[i] end
rawset(_G, "arg", rest)
local chunk = assert(loadfile(script))
return chunk(unpack(rest, 1, n - 2))
