-- spec/jitguard_spec.lua - lua/tide/jitguard.lua: traces that LuaJIT's x64
-- code generator got wrong (a `next` step whose result pointer a 32-bit
-- exchange cuts, LuaJIT issue #829) are discarded before they run.
--
-- The workload below is a recursive walk with a `next` loop (the shape of
-- tide.plugin's json_size, where the crash was first met): with Debian
-- 12's LuaJIT, about one compile in three of it holds the bad exchange,
-- depending on the JIT's random penalties. It is compiled afresh 30 times
-- (jit.flush); without the guard the process dies with SIGSEGV in nearly
-- every run.

local S = require "spec.support"
local guard = require "tide.jitguard"

local WORKLOAD = [[
local function size(v, limit)
  local n = 0
  local function walk(x, depth)
    if type(x) == "string" then n = n + #x + 8
    elseif type(x) ~= "table" then n = n + 24
    else
      n = n + 2
      if depth < 10000 then
        for k, y in next, x do
          if n > limit then return end
          n = n + 1 + (type(k) == "string" and #k + 3 or 24)
          walk(y, depth + 1)
        end
      end
    end
  end
  walk(v, 0)
  if n <= limit then return n end
end
local big, small = "x", "x"
for _ = 1, 40 do big = {big, big} end
for _ = 1, 10 do small = {small, small} end
for _ = 1, 30 do
  jit.on(size, true)
  jit.flush()
  for _ = 1, 20 do
    assert(size(big, 2^20) == nil)
    assert(size(small, 2^20) == 2^10 * 9 + (2^10 - 1) * 2 + (2^11 - 2) * 25)
  end
end
io.write("done\t", tide and tide.stats().jit_bad_traces or "", "\t", EVENTS or "", "\n")
]]

local function run_workload(prefix, dir)
  local script = os.tmpname()
  S.write_file(script, (prefix or "") .. "\n" .. WORKLOAD)
  local out, err, rc = S.run(S.shell_quote(S.TIDE) .. " " .. S.shell_quote(script), dir)
  os.remove(script)
  assert.equal(0, rc, err)
  local found, events = out:match("^done\t(%d+)\t(.*)\n$")
  assert.truthy(found, out)
  return tonumber(found), events
end

-- the same workload in LuaJIT's own interpreter, without the guard: whether
-- it crashed (then this LuaJIT has the bug, and the guard must see it)
local unguarded_crashes
local function luajit_has_the_bug()
  if unguarded_crashes == nil then
    local script = os.tmpname()
    S.write_file(script, WORKLOAD)
    local _, _, rc = S.run("luajit " .. S.shell_quote(script))
    os.remove(script)
    unguarded_crashes = rc ~= 0
  end
  return unguarded_crashes
end

-- machine code at 4 KiB below lj_vm_next: a call of it (rel32 from the
-- call's end), then the bytes given
local function after_call(bytes)
  local at = (guard.vm_next or 0x10000000) - 0x1000
  local rel = 0x1000 - 5
  local mc = string.char(0xE8, rel % 0x100, math.floor(rel / 0x100) % 0x100,
                         math.floor(rel / 0x10000) % 0x100,
                         math.floor(rel / 0x1000000) % 0x100)
  for _, b in ipairs(bytes) do mc = mc .. string.char(b) end
  return guard.has_bad_exchange(mc .. "\195", at) -- (then a ret)
end

describe("the JIT guard", function()
  it("finds the exchange right after the call, or after the results' spill stores", function()
    assert.is_true(after_call{0x92})
    assert.is_true(after_call{0x89, 0x54, 0x24, 0x38, 0x92})   -- mov [rsp+0x38], edx
    assert.is_true(after_call{0x89, 0x54, 0x24, 0x38,
                              0x48, 0x89, 0x44, 0x24, 0x40, 0x92}) -- and mov [rsp+0x40], rax
    assert.is_true(after_call{0x48, 0x89, 0x84, 0x24, 0, 1, 0, 0, 0x92}) -- disp32
    assert.is_true(after_call{0x89, 0x14, 0x24, 0x92})          -- mov [rsp], edx
  end)

  it("lets other code be", function()
    assert.is_false(after_call{})
    assert.is_false(after_call{0x48, 0x92})                     -- xchg rax, rdx: right
    assert.is_false(after_call{0x89, 0x4c, 0x24, 0x38, 0x92})   -- a store of ecx first
    assert.is_false(after_call{0x89, 0x54, 0x24, 0x38, 0x89, 0x54, 0x24, 0x30,
                               0x89, 0x54, 0x24, 0x28, 0x92})   -- three stores
    assert.is_false(guard.has_bad_exchange("\146\146\232", 0x10000000))
    if guard.vm_next then -- a call of something else
      assert.is_false(guard.has_bad_exchange("\232\0\0\0\0\146", guard.vm_next + 0x100))
    end
  end)

  it("counts its findings in tide.stats()", function()
    local n = tide.stats().jit_bad_traces
    assert.is_number(n)
    assert.is_true(n >= 0 and n % 1 == 0)
  end)

  it("discards traces with the 32-bit exchange before they run", function()
    local found = run_workload()
    if luajit_has_the_bug() then
      assert.is_true(found > 0, "the unguarded run crashed but the guard found nothing")
    end
  end)

  it("stays when the program attaches its own trace handler, which still runs", function()
    local found, events = run_workload([[
      EVENTS = ""
      local stops, flushes = 0, 0
      jit.attach(function(what)
        if what == "stop" then stops = stops + 1 elseif what == "flush" then flushes = flushes + 1 end
        EVENTS = stops .. "/" .. flushes
      end, "trace")
      jit.attach(function() end, "record")
    ]])
    local stops, flushes = events:match("^(%d+)/(%d+)$")
    assert.truthy(stops, events)
    assert.is_true(tonumber(stops) > 0)
    -- each finding reaches the program's handler as a flush
    assert.is_true(tonumber(flushes) >= found, events)
    if luajit_has_the_bug() then assert.is_true(found > 0) end
  end)

  it("stays through jit.v, and after a handler is detached", function()
    run_workload([[
      local f = function() end
      jit.attach(f, "trace")
      jit.attach(f)
      require("jit.v").on("/dev/null")
    ]])
    assert.has_error(function() jit.attach(42, "trace") end,
                     "bad argument #1 to 'attach' (function expected, got number)")
  end)

  it("takes lj_vm_next's address from LuaJIT's own files, not from the path", function()
    local dir = assert(require("tide.fs").mkdtemp("/tmp/tide-jitguard-"))
    os.execute("mkdir " .. S.shell_quote(dir .. "/jit"))
    S.write_file(dir .. "/jit/vmdef.lua", 'return {ircall = {[0] = "lj_vm_next"}}')
    local ok, err = pcall(run_workload, nil, dir)
    os.remove(dir .. "/jit/vmdef.lua")
    os.remove(dir .. "/jit")
    os.remove(dir)
    assert(ok, err)
  end)
end)
