-- spec/worker_spec.lua - tide.worker (API.md, "Other modules"; DESIGN.md,
-- "The worker pool"; docs/worker.md): Lua functions run on a pool thread's
-- own lua_State, with their arguments and results copied.
--
-- The worker modules are written to a temporary folder put on
-- package.path, as a user's modules would be next to their script. The
-- test bodies run inside tide's main task, so they may wait.

local S = require "spec.support"
local worker = require "tide.worker"
local pool = require "tide.pool"

local function pack(...) return {n = select("#", ...), ...} end

-- The error raised by fn(...), as a string (fails when it raises none).
local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local MODULE = [==[
-- a worker module: runs only on pool threads
local ffi = require "ffi"
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } worker_spec_timespec;
int clock_gettime(int clock, worker_spec_timespec *ts);
]]
local ts = ffi.new("worker_spec_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local M = {}
local state = tostring({}):match("0x%x+") -- one per worker state
local calls = 0

function M.echo(...) return ... end
function M.none() end
function M.count(...) calls = calls + 1; return state, calls end
function M.state() return state end
-- CPU work for s seconds of wall-clock time
function M.spin(s)
  local t0, n = now(), 0
  while now() - t0 < s do n = n + 1 end
  return state, now() - t0
end
function M.fail(msg) error(msg) end
function M.fail_deep(msg)
  local function inner() error(msg) end
  inner()
end
function M.fail_table() error({code = 7}) end
function M.give(kind)
  if kind == "function" then return 1, print end
  if kind == "cycle" then local t = {}; t.me = t; return t end
  if kind == "nested" then return {ok = true, list = {1, 2, {coroutine.create(print)}}} end
end
function M.tide() return require "tide" end
function M.sum(t)
  local s = 0
  for i = 1, #t do s = s + t[i] end
  return s
end
function M.kind(...)
  local r = {}
  for i = 1, select("#", ...) do r[i] = type((select(i, ...))) end
  return table.concat(r, ",")
end
M.not_a_function = 42
return M
]==]

local dir, dir2
local old_path = package.path
local watchdog = S.watchdog("worker_spec.lua")

describe("tide.worker", function()
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. S.shell_quote(dir)) == 0)
    S.write_file(dir .. "/worker_spec_mod.lua", MODULE)
    S.write_file(dir .. "/worker_spec_broken.lua", "local x = nil; x.y = 1\n")
    S.write_file(dir .. "/worker_spec_number.lua", "return 7\n")
    package.path = dir .. "/?.lua;" .. package.path
  end)

  teardown(function()
    package.path = old_path
    for _, d in ipairs({dir, dir2}) do
      if d then os.execute("rm -rf " .. S.shell_quote(d)) end
    end
    watchdog:stop()
  end)

  local function run(fn, ...) return worker.run("worker_spec_mod", fn, ...) end

  describe("copies values both ways", function()
    it("nil, booleans and strings, with NULs and every byte", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      bytes = table.concat(bytes)
      local big = ("x\0y"):rep(400000)
      local r = pack(run("echo", nil, true, false, "", "a\0b", bytes, big))
      assert.equal(7, r.n)
      assert.is_nil(r[1])
      assert.is_true(r[2])
      assert.is_false(r[3])
      assert.equal("", r[4])
      assert.equal("a\0b", r[5])
      assert.equal(bytes, r[6])
      assert.equal(big, r[7])
    end)

    it("numbers exactly: -0, inf, nan, subnormals, integers beyond 2^53", function()
      local nums = {0, 1, -1, 0.1, math.pi, 1e308, -1e308, 5e-324,
                    2^53, 2^53 + 2, 2^60 + 2^8, 2^63, -2^63, 2^1023}
      local r = pack(run("echo", unpack(nums)))
      assert.equal(#nums, r.n)
      for i, x in ipairs(nums) do
        assert.equal(x, r[i])
        assert.equal(("%a"):format(x), ("%a"):format(r[i]))
      end
      local z, inf, ninf, nan = run("echo", -0.0, math.huge, -math.huge, 0 / 0)
      assert.equal(-math.huge, 1 / z) -- the sign of zero survives
      assert.equal(math.huge, inf)
      assert.equal(-math.huge, ninf)
      assert.is_true(nan ~= nan)
    end)

    it("nested tables with array and hash keys of every kind", function()
      local t = {
        1, 2, "three", {4, {5, {6}}},
        name = "tide", [1.5] = "float key", [-3] = "negative key",
        [true] = "yes", [false] = "no", ["a\0b"] = "NUL in a key",
        [2^60] = "big key", empty = {}, flags = {on = true, off = false},
        deep = {a = {b = {c = {d = "down"}}}},
      }
      local r = run("echo", t)
      assert.are_not.equal(t, r) -- a copy
      assert.same(t, r)
      assert.equal(4, #r)
    end)

    it("arrays with holes keep their keys", function()
      local r = run("echo", {1, nil, 3, nil, 5, n = 5})
      assert.same({[1] = 1, [3] = 3, [5] = 5, n = 5}, r)
    end)

    it("a table used as a key, and a table met twice stays one table", function()
      local shared = {1, 2}
      local r = run("echo", {a = shared, b = shared, [{k = 1}] = "table key"})
      assert.same({1, 2}, r.a)
      assert.equal(r.a, r.b)
      local found
      for key, val in pairs(r) do
        if type(key) == "table" then found = {key, val} end
      end
      assert.same({{k = 1}, "table key"}, found)
      local x, y = run("echo", shared, shared) -- shared across arguments too
      assert.equal(x, y)
    end)

    it("a table nested worker.max_depth deep", function()
      assert.equal(100, worker.max_depth)
      local t = {}
      local x = t
      for _ = 2, worker.max_depth do x.n = {}; x = x.n end
      x.leaf = "here"
      local r = run("echo", t)
      for _ = 2, worker.max_depth do r = r.n end
      assert.equal("here", r.leaf)
    end)

    it("every result, trailing nils included, and no results", function()
      local r = pack(run("echo", 1, nil, "x", nil, nil))
      assert.same({n = 5, 1, nil, "x", nil, nil}, r)
      assert.equal(0, select("#", run("none")))
      assert.equal("nil,number,nil", run("kind", nil, 2, nil))
    end)

    it("hundreds of arguments and results", function()
      local args = {}
      for i = 1, 500 do args[i] = i end
      local r = pack(run("echo", unpack(args)))
      assert.equal(500, r.n)
      assert.equal(500, r[500])
      assert.equal(500 * 501 / 2, run("sum", args))
    end)
  end)

  describe("refuses what it cannot copy, in the caller", function()
    it("functions, userdata, threads and cdata, naming the argument", function()
      assert.matches("bad argument #3 to 'run' %(cannot copy a function%)",
                     error_of(run, "echo", print))
      assert.matches("bad argument #4 to 'run' %(cannot copy a userdata%)",
                     error_of(run, "echo", 1, io.stdout))
      assert.matches("bad argument #3 to 'run' %(cannot copy a thread%)",
                     error_of(run, "echo", coroutine.create(print)))
      assert.matches("bad argument #3 to 'run' %(cannot copy a cdata%)",
                     error_of(run, "echo", require("ffi").new("int64_t", 1)))
    end)

    it("and where inside a table the value is", function()
      assert.matches("bad argument #3 to 'run' %(cannot copy a function %(at %.a%.b%[2%]%)%)",
                     error_of(run, "echo", {a = {b = {1, print}}}))
      assert.matches("cannot copy a function %(at %[\"two words\"%]%)",
                     error_of(run, "echo", {["two words"] = print}))
      assert.matches("cannot copy a function used as a key %(at %.t%)",
                     error_of(run, "echo", {t = {[print] = 1}}))
    end)

    it("a table that contains itself", function()
      local t = {list = {}}
      t.list[1] = t
      assert.matches("bad argument #3 to 'run' %(cannot copy a table that contains itself %(at %.list%[1%]%)%)",
                     error_of(run, "echo", t))
    end)

    it("tables nested deeper than worker.max_depth", function()
      local t = {}
      local x = t
      for _ = 1, worker.max_depth do x.n = {}; x = x.n end
      assert.matches("bad argument #3 to 'run' %(cannot copy tables nested more than 100 deep %(at %.%.%.[.n]+%)%)",
                     error_of(run, "echo", t))
    end)

    it("raises at the caller's line", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() local r = run("echo", print); return r end)
      assert.is_false(ok)
      assert.matches("worker_spec.lua:" .. line .. ": bad argument", e)
      line = debug.getinfo(1, "l").currentline + 1
      ok, e = pcall(function() local r = run("give", "function"); return r end)
      assert.is_false(ok)
      assert.matches("worker_spec.lua:" .. line .. ": bad result", e)
    end)

    it("results: functions, cycles, threads deep in a table", function()
      assert.matches("bad result #2 from worker 'worker_spec_mod.give' %(cannot copy a function%)",
                     error_of(run, "give", "function"))
      assert.matches("bad result #1 from worker 'worker_spec_mod.give' %(cannot copy a table that contains itself %(at %.me%)%)",
                     error_of(run, "give", "cycle"))
      assert.matches("bad result #1 .*cannot copy a thread %(at %.list%[3%]%[1%]%)",
                     error_of(run, "give", "nested"))
    end)

    it("wrong module or function name types", function()
      assert.matches("bad argument #1 to 'run' %(string expected, got number%)",
                     error_of(worker.run, 1, "f"))
      assert.matches("bad argument #2 to 'run' %(string expected, got nil%)",
                     error_of(worker.run, "m"))
    end)
  end)

  describe("failures in the worker return nil, message", function()
    it("an error, with the worker's traceback", function()
      local r, e = run("fail_deep", "it broke")
      assert.is_nil(r)
      assert.matches("worker_spec_mod%.lua:%d+: it broke", e)
      assert.matches("stack traceback:", e)
      assert.matches("in function 'inner'", e)
      assert.matches("worker_spec_mod%.lua:%d+: in function", e)
    end)

    it("an error object that is not a string", function()
      local r, e = run("fail_table")
      assert.is_nil(r)
      assert.matches("^%(error object is a table value%)", e)
    end)

    it("the worker state survives an error", function()
      assert.is_nil((run("fail", "x")))
      assert.equal(3, run("echo", 3))
    end)

    it("a module that is not there", function()
      local r, e = worker.run("worker_spec_no_such_module", "f")
      assert.is_nil(r)
      assert.matches("module 'worker_spec_no_such_module' not found", e)
      local where = dir:gsub("%p", "%%%0") -- looked next to the spec's modules
      assert.matches(where .. "/worker_spec_no_such_module%.lua", e)
    end)

    it("a module that fails to load, or returns no table", function()
      local r, e = worker.run("worker_spec_broken", "f")
      assert.is_nil(r)
      assert.matches("worker_spec_broken%.lua:1: attempt to index", e)
      r, e = worker.run("worker_spec_number", "f")
      assert.is_nil(r)
      assert.equal("module 'worker_spec_number' returned a number, not a table of functions", e)
    end)

    it("a function that is not there", function()
      local r, e = run("no_such_function")
      assert.is_nil(r)
      assert.equal("module 'worker_spec_mod' has no function 'no_such_function'", e)
      r, e = run("not_a_function")
      assert.is_nil(r)
      assert.equal("module 'worker_spec_mod' has no function 'not_a_function'", e)
    end)

    it("require 'tide', which a worker state has not", function()
      local r, e = run("tide")
      assert.is_nil(r)
      assert.matches("module 'tide' is not available in a tide.worker state", e)
    end)
  end)

  describe("runs on the pool", function()
    it("the loop keeps running while a worker computes for 300 ms", function()
      local ticks = 0
      local timer = tide.every(0.01, function() ticks = ticks + 1 end)
      local t0 = tide.hrtime()
      local _, spun = run("spin", 0.3)
      local elapsed = tide.hrtime() - t0
      timer:stop()
      assert.is_true(spun >= 0.3)
      assert.is_true(elapsed >= 0.3, "returned after " .. elapsed)
      assert.is_true(ticks >= 15, "the 10 ms timer fired " .. ticks .. " times")
    end)

    it("several workers run in parallel, each on its own thread's state", function()
      local n = pool.stats().size
      if n < 2 then pending("a pool of one thread"); return end
      local tasks, states = {}, {}
      local t0 = tide.hrtime()
      for i = 1, n do tasks[i] = tide.spawn(run, "spin", 0.3) end
      for i = 1, n do
        local ok, state = tasks[i]:join()
        assert.is_true(ok)
        states[state] = true
      end
      local elapsed = tide.hrtime() - t0
      local distinct = 0
      for _ in pairs(states) do distinct = distinct + 1 end
      assert.equal(n, distinct)
      assert.is_true(elapsed < 0.3 * n * 0.6,
                     n .. " workers of 0.3 s took " .. elapsed .. " s")
    end)

    it("a thread's state is made once and reused", function()
      local seen, per_state, most = {}, {}, 0
      for _ = 1, 20 do
        local state, calls = run("count")
        per_state[state] = (per_state[state] or 0) + 1
        assert.equal(per_state[state], calls) -- module-level counter kept
        if calls > most then most = calls end
        seen[state] = true
      end
      local distinct = 0
      for _ in pairs(seen) do distinct = distinct + 1 end
      assert.is_true(distinct <= pool.stats().size)
      assert.is_true(most >= 2)
    end)

    it("uses the host's package.path as it is when the call is made", function()
      dir2 = os.tmpname()
      os.remove(dir2)
      assert(os.execute("mkdir " .. S.shell_quote(dir2)) == 0)
      S.write_file(dir2 .. "/worker_spec_late.lua",
                   "return {hello = function(x) return 'hello ' .. x end}\n")
      assert.is_nil((worker.run("worker_spec_late", "hello", "late")))
      package.path = dir2 .. "/?.lua;" .. package.path
      for _ = 1, 8 do -- every thread, whatever its state saw before
        assert.equal("hello late", worker.run("worker_spec_late", "hello", "late"))
      end
    end)
  end)

  describe("cancellation and timeouts", function()
    local function wait_idle()
      local deadline = tide.hrtime() + 5
      while pool.stats().running > 0 or pool.stats().queued > 0 do
        assert.is_true(tide.hrtime() < deadline, "the pool never went idle")
        tide.sleep(0.01)
      end
    end

    it("tide.timeout ends the wait; the job finishes and is dropped", function()
      local t0 = tide.hrtime()
      local ok, msg, code = tide.timeout(0.05, run, "spin", 0.3)
      local elapsed = tide.hrtime() - t0
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      assert.is_true(elapsed < 0.25, "timed out after " .. elapsed)
      assert.equal(1, pool.stats().running) -- still computing
      wait_idle()
      assert.equal(5, run("echo", 5))
    end)

    it("task:cancel() raises in the caller; the loop keeps going", function()
      local reached = false
      local t = tide.spawn(function()
        run("spin", 0.2)
        reached = true
      end)
      tide.sleep(0.05)
      assert.equal("waiting", t:status())
      t:cancel("enough")
      local ok, e, code = t:join()
      assert.is_nil(ok)
      assert.equal("ECANCELED", code)
      assert.equal("cancelled", t:status())
      wait_idle()
      assert.is_false(reached)
      assert.equal("ok", run("echo", "ok"))
    end)

    it("a call still queued is taken off the queue", function()
      local n = pool.stats().size
      local busy = {}
      for i = 1, n do busy[i] = tide.spawn(run, "spin", 0.15) end
      tide.sleep(0.02)
      assert.equal(n, pool.stats().running)
      local ok, msg = tide.timeout(0.02, run, "echo", "never")
      assert.is_nil(ok)
      assert.equal("timed out", msg)
      assert.equal(0, pool.stats().queued)
      for i = 1, n do assert.is_true((busy[i]:join())) end
      wait_idle()
    end)

    -- In a child tide, so the host is freed at the end (busted's own exit
    -- skips that): the threads' states are closed when the pool's threads
    -- exit, a job still running is waited for and dropped, and the
    -- sanitizer build finds nothing leaked.
    it("the host ends cleanly with worker states and a job still running", function()
      local out, err, rc = S.run_child(([[
        package.path = %q .. "/?.lua;" .. package.path
        local worker = require "tide.worker"
        local ts = {}
        for i = 1, 4 do ts[i] = tide.spawn(worker.run, "worker_spec_mod", "echo", i) end
        local sum = 0
        for i = 1, 4 do local _, v = ts[i]:join(); sum = sum + v end
        print(sum)
        tide.spawn(worker.run, "worker_spec_mod", "spin", 0.2)
        tide.sleep(0.05)
        tide.exit(0)
      ]]):format(dir))
      assert.equal(0, rc, err)
      assert.equal("10\n", out)
      assert.equal("", err)
    end)

    it("a call that cannot wait (inside a plain coroutine) raises, and sends nothing", function()
      wait_idle()
      local co = coroutine.wrap(function() return run("echo", 1) end)
      assert.matches("'run' cannot wait inside a coroutine", error_of(co))
      assert.equal(0, pool.stats().running + pool.stats().queued)
      collectgarbage() -- the arguments it packed are freed
      assert.equal(2, run("echo", 2))
    end)

  end)
end)
