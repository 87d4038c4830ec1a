-- lua/tide/jitguard.lua - discards machine code that LuaJIT's x64 code
-- generator got wrong, before it runs.
--
-- LuaJIT before April 2022 (LuaJIT issue #829; Debian 12 ships a snapshot
-- of March 2022) compiles a `next` step (a pairs()/next loop, or a call of
-- next) on x64 as a call of lj_vm_next, which returns a pointer and an
-- index in two registers. When the register allocator wants them swapped,
-- it emits a 32-bit `xchg eax, edx` after the call (after the spill
-- stores of the two results, if any), which cuts the pointer to its low
-- 32 bits: the trace then reads a wild address and the process dies with
-- SIGSEGV. Whether a trace gets that allocation depends on its shape and
-- on the JIT's random hot-count penalties, so the same program crashes in
-- some runs and not in others.
--
-- The guard looks at every trace the JIT finishes (the "trace" VM event,
-- sent before the trace can run): if its code calls lj_vm_next and then
-- exchanges that way, traces stop starting in the function the trace
-- started in (jit.off) and all traces are flushed (jit.flush(): a single
-- trace can still be reached through links from others). Each finding
-- turns compilation off for one more function, so findings stop; past
-- MAX_FINDINGS the JIT is turned off altogether. Fixed LuaJIT builds never
-- emit the sequence, and the guard only costs a scan of each new trace's
-- code. tide.stats().jit_bad_traces counts findings.
--
-- LuaJIT keeps one handler per VM event, and a program's jit.attach would
-- replace the guard's: jit.attach(f, "trace") is wrapped so that f runs
-- after the guard instead (see docs/loop.md, "The JIT guard").

local M = {found = 0}

-- (installed even while the JIT is off: a program may turn it on later)
if not (jit and jit.arch == "x64") then return M end

local MAX_FINDINGS = 100

local jutil = require "jit.util"
local tracemc, ircalladdr = jutil.tracemc, jutil.ircalladdr
local find, byte = string.find, string.byte
local type, pcall, error = type, pcall, error
local collectgarbage = collectgarbage
local stderr = io.stderr
local jit_off, jit_flush, attach = jit.off, jit.flush, jit.attach

-- lj_vm_next's address, from the names of the IR's calls in the
-- jit/vmdef.lua of this very LuaJIT (its install folder, not a file of the
-- same name found first on package.path), checked against the library's
-- own table of calls; nil when that fails: then any call followed by the
-- exchange counts (on x64 only lj_vm_next returns a register pair).
local function vm_next_address()
  local ver = jit.version:match("^LuaJIT (%S+)$")
  local chunk = ver and loadfile("/usr/share/luajit-" .. ver .. "/jit/vmdef.lua")
  if not chunk then return nil end
  local ok, vmdef = pcall(chunk)
  if not (ok and type(vmdef) == "table" and type(vmdef.ircall) == "table") then
    return nil
  end
  local names, addr = vmdef.ircall, nil
  local n = 0
  while names[n] ~= nil do n = n + 1 end
  if n == 0 or ircalladdr(n - 1) == nil or ircalladdr(n) ~= nil then return nil end
  for i = 0, n - 1 do
    if names[i] == "lj_vm_next" then addr = ircalladdr(i) end
  end
  return addr
end
local target = vm_next_address()

-- the length of a spill store at mc[p]: mov [rsp+d], eax/edx/rax/rdx
-- (89 /r, REX.W or not, SIB base rsp, no, 8-bit or 32-bit displacement)
local STORE_LEN = {[0x04] = 3, [0x14] = 3, [0x44] = 4, [0x54] = 4,
                   [0x84] = 7, [0x94] = 7}
local function store_len(mc, p)
  local rex = byte(mc, p) == 0x48 and 1 or 0
  local op, modrm, sib = byte(mc, p + rex, p + rex + 2)
  if op ~= 0x89 or sib ~= 0x24 then return nil end
  local len = STORE_LEN[modrm]
  return len and len + rex
end

-- whether the code mc (at address addr) has a call of lj_vm_next
-- followed, after at most two spill stores, by `xchg eax, edx` (92)
local function has_bad_exchange(mc, addr)
  local i = 1
  while true do
    local s = find(mc, "\232", i, true) -- E8 rel32
    if not s then return false end
    local b1, b2, b3, b4 = byte(mc, s + 1, s + 4)
    if not b4 then return false end
    local rel = b1 + b2 * 0x100 + b3 * 0x10000 + b4 * 0x1000000
    if rel >= 0x80000000 then rel = rel - 0x100000000 end
    if not target or addr + (s - 1) + 5 + rel == target then
      local p = s + 5
      for _ = 1, 2 do
        local len = store_len(mc, p)
        if not len then break end
        p = p + len
      end
      if byte(mc, p) == 0x92 then return true end
    end
    i = s + 1
  end
end
M.has_bad_exchange, M.vm_next = has_bad_exchange, target -- (for the specs)

-- whether trace tr's code has the bad exchange; the copy of the code is
-- made with the collector stopped, so that no finalizer runs (and perhaps
-- enters the trace) before it is discarded
local function defective(tr)
  local running = collectgarbage("isrunning")
  if running then collectgarbage("stop") end
  local ok, mc, addr = pcall(tracemc, tr)
  if running then collectgarbage("restart") end
  if not ok then error(mc, 0) end
  return mc ~= nil and has_bad_exchange(mc, addr)
end

-- the function each trace in progress started in (weak: a trace that is
-- gone must not keep a closure alive)
local started = setmetatable({}, {__mode = "v"})
local user_handler -- the program's own "trace" handler (jit.attach)

local function discard(fn)
  M.found = M.found + 1
  if M.found >= MAX_FINDINGS then
    pcall(jit_off) -- the JIT keeps getting it wrong: interpret everything
    pcall(stderr.write, stderr, "tide: LuaJIT miscompiled ", M.found,
          " traces (LuaJIT issue #829); the JIT is now off\n")
  elseif fn then
    pcall(jit_off, fn)
  end
  pcall(jit_flush)
end

local function handler(what, tr, fn, ...)
  if what == "start" then
    started[tr] = fn
  elseif what == "abort" then
    started[tr] = nil
  elseif what == "stop" then
    local ok, bad = pcall(defective, tr)
    local from = started[tr]
    started[tr] = nil
    if bad then
      discard(from)
      what, tr, fn = "flush", nil, nil -- what the program's handler sees
    elseif not ok then
      pcall(jit_flush) -- could not look (no memory): no trace
      what, tr, fn = "flush", nil, nil
    end
  end
  if user_handler then
    if what == "flush" then return user_handler(what) end
    return user_handler(what, tr, fn, ...)
  end
end
attach(handler, "trace")

-- jit.attach(f, "trace") sets the program's handler, called after the
-- guard's; jit.attach(f) detaches f from every event, that one included
function jit.attach(f, event)
  if type(f) ~= "function" then
    error("bad argument #1 to 'attach' (function expected, got " .. type(f) .. ")", 2)
  end
  if event == "trace" then
    user_handler = f
    return
  end
  if event == nil and f == user_handler then user_handler = nil end
  return attach(f, event)
end

return M
