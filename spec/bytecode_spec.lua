-- spec/bytecode_spec.lua - tide's Lua files as the binary embeds them
-- (bytecode from `luajit -b`). LuaJIT saves a table constructor's
-- template only up to its last constant array slot: in `{fn, 0, 0, s}`
-- slot 4 is not in the template, so every table that constructor makes
-- gets its slot 4 through a rehash (a second allocation and some 500
-- instructions). This spec finds such constructors in every file of
-- lua/tide/; write `{fn, 0, 0, 0}` then `t[4] = s`, or end the
-- constructor with a constant.

local jutil = require "jit.util"
local vmdef = require "jit.vmdef"
local band, rshift = bit.band, bit.rshift

local function opname(ins)
  local op = band(ins, 0xff)
  return (vmdef.bcnames:sub(op * 6 + 1, op * 6 + 6):gsub(" ", ""))
end

-- The constructors of function fn (and the functions in it) that fill an
-- array slot beyond their template: "line: slot n" strings.
local function findings(fn, out)
  local pc = 1
  while true do
    local ins = jutil.funcbc(fn, pc)
    if not ins then break end
    if opname(ins) == "TDUP" then
      local reg, k = band(rshift(ins, 8), 0xff), rshift(ins, 16)
      local top = 0
      for key in pairs(jutil.funck(fn, -(k + 1))) do
        if type(key) == "number" and key > top then top = key end
      end
      -- the constructor's own stores follow it
      for j = pc + 1, pc + 16 do
        local ins2 = jutil.funcbc(fn, j)
        if not ins2 then break end
        if opname(ins2) == "TSETB" and band(rshift(ins2, 24), 0xff) == reg
           and band(rshift(ins2, 16), 0xff) > top then
          out[#out + 1] = ("line %d: slot %d"):format(
            jutil.funcinfo(fn, j).currentline or 0, band(rshift(ins2, 16), 0xff))
        end
      end
    end
    pc = pc + 1
  end
  local i = -1
  while true do
    local c = jutil.funck(fn, i)
    if c == nil then break end
    if type(c) == "proto" then findings(c, out) end
    i = i - 1
  end
  return out
end

local function embedded(path)
  -- what `luajit -b` writes, loaded back (the embedded form)
  return assert(loadstring(string.dump(assert(loadfile(path)))))
end

describe("tide's embedded Lua", function()
  local files = {}
  for name in io.popen("ls lua/tide/*.lua"):lines() do files[#files + 1] = name end

  it("has files to check", function()
    assert.truthy(#files >= 10)
  end)

  it("the check finds a constructor that fills a slot beyond its template", function()
    local f = assert(loadstring(string.dump(assert(loadstring(
      "local s = ...; return {print, 0, 0, s}")))))
    assert.same({"line 1: slot 4"}, findings(f, {}))
    local g = assert(loadstring(string.dump(assert(loadstring(
      "local s = ...; local t = {print, 0, 0, 0}; t[4] = s; return t")))))
    assert.same({}, findings(g, {}))
  end)

  for _, path in ipairs(files) do
    it(path .. " has no constructor that fills a slot beyond its template", function()
      assert.same({}, findings(embedded(path), {}))
    end)
  end
end)
