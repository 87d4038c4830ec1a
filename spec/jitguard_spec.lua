-- spec/jitguard_spec.lua - lua/tide/jitguard.lua: traces that LuaJIT's x64
-- code generator got wrong (a `next` step whose result pointer a 32-bit
-- exchange cuts, LuaJIT issue #829) are discarded before they run.
--
-- The workload below is a recursive walk with a `next` loop: with Debian
-- 12's LuaJIT, about one compile in three of it holds the bad exchange,
-- depending on the JIT's random penalties. It is compiled afresh 30 times
-- (jit.flush); without the guard the process dies with SIGSEGV in nearly
-- every run.

local S = require "spec.support"

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
print("done", tide and tide.stats().jit_bad_traces or "")
]]

describe("the JIT guard", function()
  it("counts its findings in tide.stats()", function()
    local n = tide.stats().jit_bad_traces
    assert.is_number(n)
    assert.is_true(n >= 0 and n % 1 == 0)
  end)

  it("discards traces with the 32-bit exchange before they run", function()
    local out, err, rc = S.run_child(WORKLOAD)
    assert.equal(0, rc, err)
    local found = tonumber(out:match("^done\t(%d+)\n$"))
    assert.truthy(found, out)
    -- the same workload without the guard, in LuaJIT's own interpreter:
    -- if that crashes, this LuaJIT has the bug, and the guard must have
    -- seen it (with a fixed LuaJIT, neither crashes and nothing is found)
    local script = os.tmpname()
    S.write_file(script, WORKLOAD)
    local _, _, bare_rc = S.run("luajit " .. S.shell_quote(script))
    os.remove(script)
    if bare_rc ~= 0 then
      assert.is_true(found > 0, "the unguarded run failed (" .. tostring(bare_rc) ..
                     ") but the guard found nothing")
    end
  end)
end)
