-- lua/tide/jitguard.lua - discards machine code that LuaJIT's x64 code
-- generator got wrong, before it runs.
--
-- LuaJIT before April 2022 (LuaJIT issue #829; Debian 12 ships a snapshot
-- of March 2022) compiles a `next` step (a pairs()/next loop, or a call of
-- next) on x64 as a call of lj_vm_next, which returns a pointer and an
-- index in two registers. When the register allocator wants them swapped,
-- it emits a 32-bit `xchg eax, edx` right after the call, which cuts the
-- pointer to its low 32 bits: the trace then reads a wild address and the
-- process dies with SIGSEGV. Whether a trace gets that allocation depends
-- on its shape and on the JIT's random hot-count penalties, so the same
-- program crashes in some runs and not in others.
--
-- The guard looks at every trace the JIT finishes (a "trace" VM event,
-- called before the trace can run): if its code holds a call of
-- lj_vm_next followed by that exchange, the function the trace started in
-- is excluded from compilation (jit.off: it runs in the interpreter from
-- then on) and all traces are flushed (jit.flush(): a single trace can
-- still be reached through links from others). Each finding turns
-- compilation off for one more function, so findings stop. Fixed LuaJIT
-- builds never emit the sequence, and the guard only costs a scan of each
-- new trace's machine code. tide.stats().jit_bad_traces counts findings.

local M = {found = 0}

if not (jit and jit.arch == "x64" and jit.status()) then return M end

local jutil = require "jit.util"
local tracemc, find, byte = jutil.tracemc, string.find, string.byte
local jit_off, jit_flush = jit.off, jit.flush

-- lj_vm_next's address, from the names of the IR's calls when LuaJIT's
-- jit/vmdef.lua is installed; without it, any call followed by the
-- exchange counts (the only code that emits it after a call on x64)
local target
do
  local ok, vmdef = pcall(require, "jit.vmdef")
  if ok and type(vmdef) == "table" and type(vmdef.ircall) == "table" then
    for i, name in pairs(vmdef.ircall) do
      if name == "lj_vm_next" then target = jutil.ircalladdr(i) end
    end
  end
end

-- whether trace tr's code has `call rel32` to lj_vm_next, then `xchg eax, edx`
local function defective(tr)
  local mc, addr = tracemc(tr)
  if not mc then return false end
  local i = 1
  while true do
    local s = find(mc, "\232....\146", i) -- E8 rel32, 92
    if not s then return false end
    if not target then return true end
    local b1, b2, b3, b4 = byte(mc, s + 1, s + 4)
    local rel = b1 + b2 * 0x100 + b3 * 0x10000 + b4 * 0x1000000
    if rel >= 0x80000000 then rel = rel - 0x100000000 end
    if addr + (s - 1) + 5 + rel == target then return true end
    i = s + 1
  end
end

-- the function each trace in progress started in (weak: a trace that is
-- gone must not keep a closure alive)
local started = setmetatable({}, {__mode = "v"})

local function discard(fn)
  M.found = M.found + 1
  if fn then pcall(jit_off, fn) end
  pcall(jit_flush)
end

jit.attach(function(what, tr, fn)
  if what == "start" then
    started[tr] = fn
  elseif what == "stop" then
    local ok, bad = pcall(defective, tr)
    if bad then discard(started[tr])
    elseif not ok then pcall(jit_flush) end -- could not look (no memory): no trace
    started[tr] = nil
  end
end, "trace")

return M
