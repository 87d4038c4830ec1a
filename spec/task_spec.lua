-- spec/task_spec.lua - tasks and their synchronisation (DESIGN.md, "Tasks";
-- API.md, "Core: tide"): spawn, sleep, yield, join, cancel, timeouts,
-- error reporting, channels, semaphores, conditions, scale, and misuse.
--
-- The test bodies run inside tide's main task, so they may wait.

local S = require "spec.support"
local busy, run_child = S.busy, S.run_child

-- The error raised by fn(...), as a string (fails when it raises none).
local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local function pack(...) return {n = select("#", ...), ...} end

local errors -- what reached tide.on_error during the current test

local watchdog = S.watchdog("task_spec.lua")

describe("tasks", function()
  teardown(function() watchdog:stop() end)

  before_each(function()
    errors = {}
    tide.on_error(function(e, t) errors[#errors + 1] = {err = e, task = t} end)
  end)

  after_each(function() tide.on_error(nil) end)

  describe("tide.spawn", function()
    it("runs the task after the current one yields, with its arguments", function()
      local got
      local t = tide.spawn(function(...) got = pack(...) end, 1, nil, "three")
      busy(0.002)
      assert.is_nil(got)
      assert.equal("ready", t:status())
      tide.yield()
      assert.same({n = 3, 1, nil, "three"}, got)
      assert.equal("done", t:status())
    end)

    it("starts tasks in the order they were spawned", function()
      local order = {}
      local ts = {}
      for i = 1, 10 do ts[i] = tide.spawn(function() order[#order + 1] = i end) end
      for i = 1, 10 do ts[i]:join() end
      assert.same({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, order)
    end)
  end)

  describe("tide.sleep", function()
    it("suspends the task for at least the given time", function()
      local t0 = tide.hrtime()
      tide.sleep(0.03)
      local slept = tide.hrtime() - t0
      assert.is_true(slept >= 0.029, "slept " .. slept)
      assert.is_true(slept < 1, "slept " .. slept)
    end)

    it("waits its full time even when the task was busy before it", function()
      busy(0.03)
      local t0 = tide.hrtime()
      tide.sleep(0.02)
      local slept = tide.hrtime() - t0
      assert.is_true(slept >= 0.019, "tide.sleep(0.02) returned after " .. slept)
    end)

    it("waits its full time at the top level of a slow script", function()
      local out, err, rc = run_child([[
        local t = tide.hrtime() + 0.1
        while tide.hrtime() < t do end -- a slow start-up, before the loop
        local t0 = tide.hrtime()
        tide.sleep(0.05)
        print(("%.4f"):format(tide.hrtime() - t0))
      ]])
      assert.equal(0, rc, err)
      local slept = tonumber(out)
      assert.is_true(slept >= 0.049, "tide.sleep(0.05) returned after " ..
                     tostring(slept) .. " s")
    end)

    it("lets other tasks run meanwhile; the shorter sleep ends first", function()
      local order = {}
      local a = tide.spawn(function() tide.sleep(0.03); order[#order + 1] = "a" end)
      local b = tide.spawn(function() tide.sleep(0.01); order[#order + 1] = "b" end)
      a:join(); b:join()
      assert.same({"b", "a"}, order)
    end)

    it("keeps a sleeping task alive through a full garbage collection", function()
      local ch = tide.channel(1)
      do
        tide.spawn(function()
          tide.sleep(0.02)
          ch:send("woke")
        end)
      end
      tide.yield()
      collectgarbage("collect")
      collectgarbage("collect")
      assert.equal("woke", ch:recv(2))
    end)

    it("treats a negative time as zero", function()
      local t0 = tide.hrtime()
      tide.sleep(-5)
      assert.is_true(tide.hrtime() - t0 < 0.5)
    end)
  end)

  describe("tide.yield", function()
    it("lets every other ready task run first", function()
      local ran = {}
      for i = 1, 3 do tide.spawn(function() ran[i] = true end) end
      assert.same({}, ran)
      tide.yield()
      assert.same({true, true, true}, ran)
    end)

    it("interleaves tasks that yield in turn", function()
      local log = {}
      local function worker(name)
        for i = 1, 3 do
          log[#log + 1] = name .. i
          tide.yield()
        end
      end
      local a, b = tide.spawn(worker, "a"), tide.spawn(worker, "b")
      a:join(); b:join()
      assert.same({"a1", "b1", "a2", "b2", "a3", "b3"}, log)
    end)
  end)

  describe("task:join", function()
    it("returns true and the task's results", function()
      local t = tide.spawn(function(x) tide.sleep(0.001); return x, nil, x * 2 end, 21)
      local r = pack(t:join())
      assert.same({n = 4, true, 21, nil, 42}, r)
      assert.equal("done", t:status())
    end)

    it("returns nil and a failed task's error with its traceback", function()
      local t = tide.spawn(function()
        tide.sleep(0.001)
        error("boom")
      end)
      local ok, err = t:join()
      assert.is_nil(ok)
      assert.is_string(err)
      assert.truthy(err:find("task_spec.lua:%d+: boom"), err)
      assert.truthy(err:find("stack traceback", 1, true), err)
      assert.equal("failed", t:status())
      assert.same({}, errors) -- joined: not reported to on_error
    end)

    it("with a timeout returns nil, 'timed out', 'ETIMEDOUT'", function()
      local t = tide.spawn(function() tide.sleep(0.2); return "late" end)
      local t0 = tide.hrtime()
      local ok, msg, code = t:join(0.02)
      assert.is_true(tide.hrtime() - t0 >= 0.019)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      assert.equal("waiting", t:status()) -- the task itself goes on
      assert.same({true, "late"}, {t:join(2)})
    end)

    it("returns at once, without yielding, when the task has finished", function()
      local t = tide.spawn(function() return "r" end)
      tide.yield()
      assert.equal("done", t:status())
      local other_ran = false
      tide.spawn(function() other_ran = true end)
      assert.same({true, "r"}, {t:join()})
      assert.same({true, "r"}, {t:join()}) -- again: same results
      assert.is_false(other_ran)
    end)

    it("wakes every task that joins the same task", function()
      local c = tide.cond()
      local target = tide.spawn(function() c:wait(); return 7 end)
      local j1 = tide.spawn(function() return target:join() end)
      local j2 = tide.spawn(function() return target:join() end)
      tide.yield()
      c:signal()
      assert.same({true, true, 7}, {j1:join(2)})
      assert.same({true, true, 7}, {j2:join(2)})
    end)

    it("raises when a task joins itself", function()
      local err = error_of(function() tide.current():join() end)
      assert.truthy(err:find("itself", 1, true), err)
      local t = tide.spawn(function() return pcall(function() tide.current():join() end) end)
      local ok, pok, perr = t:join()
      assert.is_true(ok)
      assert.is_false(pok)
      assert.truthy(tostring(perr):find("itself", 1, true))
    end)
  end)

  describe("task:cancel", function()
    it("raises a cancellation error at a sleeping task's wait point", function()
      local after_sleep = false
      local caught
      local t = tide.spawn(function()
        local ok, e = pcall(tide.sleep, 0.05)
        caught = {ok, tostring(e)}
        error(e, 0) -- let it end the task
      end)
      local plain = tide.spawn(function()
        tide.sleep(0.05)
        after_sleep = true
      end)
      tide.yield()
      assert.equal("waiting", t:status())
      t:cancel()
      plain:cancel()
      local ok, msg, code = t:join(2)
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("ECANCELED", code)
      assert.is_false(caught[1])
      assert.truthy(caught[2]:find("cancel"), caught[2])
      assert.equal("cancelled", t:status())
      assert.same({nil, "ECANCELED"}, {plain:join(2), select(3, plain:join(2))})
      -- the abandoned sleep's timer does not resume the task later
      tide.sleep(0.08)
      assert.is_false(after_sleep)
      assert.equal("cancelled", plain:status())
      assert.same({}, errors)
    end)

    it("includes the reason in the join message", function()
      local t = tide.spawn(function() tide.sleep(1) end)
      tide.yield()
      t:cancel("shutting down")
      local ok, msg, code = t:join(2)
      assert.is_nil(ok)
      assert.truthy(msg:find("shutting down", 1, true), msg)
      assert.equal("ECANCELED", code)
    end)

    it("cancels a task waiting on a channel; the channel forgets it", function()
      local ch = tide.channel(1)
      local got
      local t = tide.spawn(function() got = ch:recv() end)
      tide.yield()
      assert.equal("waiting", t:status())
      t:cancel()
      assert.same({nil, "ECANCELED"}, {t:join(2), select(3, t:join(2))})
      assert.is_true(ch:send("x"))
      assert.is_nil(got)
      assert.equal("x", ch:recv(1))
    end)

    it("ends a task that has not started yet without running it", function()
      local ran = false
      local t = tide.spawn(function() ran = true end)
      assert.equal("ready", t:status())
      t:cancel()
      assert.equal("cancelled", t:status())
      tide.yield()
      assert.is_false(ran)
      local ok, msg, code = t:join()
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("ECANCELED", code)
    end)

    it("is raised at the next wait when a task cancels itself", function()
      local reached
      local t = tide.spawn(function()
        tide.current():cancel()
        reached = "before wait"
        tide.sleep(0.01)
        reached = "after wait"
      end)
      local ok, _, code = t:join(2)
      assert.is_nil(ok)
      assert.equal("ECANCELED", code)
      assert.equal("before wait", reached)
    end)

    it("passes through tide.timeout instead of becoming a timeout", function()
      local after = false
      local t = tide.spawn(function()
        tide.timeout(5, function() tide.sleep(10) end)
        after = true
      end)
      tide.yield()
      t:cancel()
      local ok, _, code = t:join(2)
      assert.is_nil(ok)
      assert.equal("ECANCELED", code)
      assert.is_false(after)
    end)

    it("does nothing to a finished task", function()
      local t = tide.spawn(function() return 1 end)
      t:join()
      t:cancel()
      assert.equal("done", t:status())
      assert.same({true, 1}, {t:join()})
    end)
  end)

  describe("task:status", function()
    it("goes ready, running, waiting, done", function()
      local c = tide.cond()
      local seen
      local t = tide.spawn(function()
        seen = tide.current():status()
        c:wait()
      end)
      assert.equal("ready", t:status())
      tide.yield()
      assert.equal("running", seen)
      assert.equal("waiting", t:status())
      c:signal()
      t:join(2)
      assert.equal("done", t:status())
    end)

    it("is 'failed' after an error and 'cancelled' after a cancel", function()
      local f = tide.spawn(function() error("x") end)
      local c = tide.spawn(function() tide.sleep(1) end)
      tide.yield()
      c:cancel()
      f:join(); c:join()
      assert.equal("failed", f:status())
      assert.equal("cancelled", c:status())
    end)
  end)

  describe("tide.current", function()
    it("returns the running task", function()
      local inside
      local t = tide.spawn(function() inside = tide.current() end)
      t:join()
      assert.equal(t, inside)
      local me = tide.current()
      assert.is_not_nil(me)
      assert.equal(me, tide.current())
      assert.equal("running", me:status())
    end)

    it("works in timer callbacks too", function()
      local ch = tide.channel(1)
      tide.after(0, function() ch:send(tide.current()) end)
      local t = ch:recv(2)
      assert.is_not_nil(t)
      assert.is_not_equal(tide.current(), t)
    end)

    it("gives each callback of a batch its own task, before and after a wait", function()
      local first, later = {}, {}
      local done = tide.channel(3)
      for i = 1, 3 do
        tide.after(0.001, function()
          first[i] = tide.current()
          if i == 2 then tide.sleep(0.001) end -- its runner leaves the batch
          later[i] = tide.current()
          done:send(i)
        end)
      end
      for _ = 1, 3 do assert(done:recv(5)) end
      for i = 1, 3 do
        assert.equal(first[i], later[i])
        for j = i + 1, 3 do assert.is_not_equal(first[i], first[j]) end
      end
      assert.equal("done", first[2]:status())
    end)
  end)

  describe("tide.timeout", function()
    it("returns true and fn's results when fn finishes in time", function()
      local r = pack(tide.timeout(1, function(a, b)
        tide.sleep(0.001)
        return a + b, nil, "x"
      end, 1, 2))
      assert.same({n = 4, true, 3, nil, "x"}, r)
    end)

    it("returns nil, 'timed out', 'ETIMEDOUT' when the time runs out", function()
      local after = false
      local t0 = tide.hrtime()
      local ok, msg, code = tide.timeout(0.02, function()
        tide.sleep(5)
        after = true
      end)
      local took = tide.hrtime() - t0
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      assert.is_false(after)
      assert.is_true(took >= 0.019 and took < 1, "took " .. took)
    end)

    it("leaves nothing behind: later waits are not cancelled", function()
      assert.is_nil((tide.timeout(0.01, function() tide.sleep(1) end)))
      assert.is_true((tide.timeout(0.02, function() return 1 end)))
      assert.same({true, 1}, {tide.timeout(0, function() return 1 end)})
      -- neither the expired nor the finished timeout hits this sleep
      local ok, e = pcall(tide.sleep, 0.04)
      assert.is_true(ok, tostring(e))
    end)

    it("lets fn finish when its value and the deadline come in one pass", function()
      local ch = tide.channel(1)
      -- a slow timer holds the loop up until both deadlines below are past,
      -- so that the send and the expiry fall in the same timers pass, send
      -- first
      tide.after(0, function() busy(0.04) end)
      tide.after(0.01, function() ch:send("value") end)
      local r = pack(tide.timeout(0.011, function() return (ch:recv()) end))
      assert.same({n = 2, true, "value"}, r)
      -- the expiry that came too late must not hit a later wait
      local ok, e = pcall(tide.sleep, 0.02)
      assert.is_true(ok, tostring(e))
    end)

    it("nests: the outer deadline wins over a longer inner one", function()
      local inner_returned = false
      local ok, msg, code = tide.timeout(0.02, function()
        tide.timeout(5, function() tide.sleep(10) end)
        inner_returned = true
      end)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      assert.is_false(inner_returned)
    end)

    it("nests: a shorter inner timeout expires alone", function()
      local r = pack(tide.timeout(1, function()
        local ok, msg, code = tide.timeout(0.01, function() tide.sleep(10) end)
        return ok, msg, code, "outer went on"
      end))
      assert.same({n = 5, true, nil, "timed out", "ETIMEDOUT", "outer went on"}, r)
    end)

    it("rethrows an error raised inside fn", function()
      local err = error_of(tide.timeout, 1, function()
        tide.sleep(0.001)
        error("inner failure")
      end)
      assert.truthy(err:find("inner failure", 1, true), err)
    end)
  end)

  describe("error isolation", function()
    it("sends errors of unjoined tasks and timer callbacks to on_error", function()
      local got = tide.channel(4)
      tide.on_error(function(e, t) got:send({err = tostring(e), task = t}) end)
      local t = tide.spawn(function()
        tide.sleep(0.001)
        error("task blew up")
      end)
      local r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("task blew up", 1, true), r.err)
      assert.equal(t, r.task)
      tide.after(0, function() error("timer blew up") end)
      r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("timer blew up", 1, true), r.err)
      tide.immediate(function() error("immediate blew up") end)
      r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("immediate blew up", 1, true), r.err)
      tide.next(function() error("next blew up") end)
      r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("next blew up", 1, true), r.err)
      tide.after(10, function() end):close(function() error("close blew up") end)
      r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("close blew up", 1, true), r.err)
      -- a timer callback that waited first is a task by then
      tide.after(0, function()
        tide.sleep(0.001)
        error("waiting timer blew up")
      end)
      r = got:recv(2)
      assert.is_table(r)
      assert.truthy(r.err:find("waiting timer blew up", 1, true), r.err)
      assert.is_not_nil(r.task)
    end)

    it("keeps the other tasks and timers running", function()
      local beats, third_beat = 0, tide.channel(1)
      local ev = tide.every(0.005, function()
        beats = beats + 1
        if beats == 3 then third_beat:send(true) end
      end)
      local worker = tide.spawn(function()
        tide.sleep(0.03)
        return "ok"
      end)
      for i = 1, 5 do
        tide.spawn(function() error("failure " .. i) end)
        tide.after(0, function() error("timer failure " .. i) end)
      end
      assert.same({true, "ok"}, {worker:join(2)})
      assert.is_true(third_beat:recv(2))
      ev:stop()
      assert.equal(10, #errors)
    end)

    it("prints unhandled task errors to stderr by default and goes on", function()
      local out, err, rc = run_child([[
        tide.spawn(function() error("boom in task") end)
        tide.after(0, function() error("boom in timer") end)
        tide.sleep(0.02)
        print("still alive")
      ]])
      assert.equal(0, rc, err)
      assert.equal("still alive\n", out)
      assert.truthy(err:find("boom in task", 1, true), err)
      assert.truthy(err:find("boom in timer", 1, true), err)
    end)

    -- regression: the fallback report called tostring on the error
    -- object outside a pcall, so a __tostring that raised ended tide
    it("survives an error object whose __tostring raises", function()
      local out, err, rc = run_child([[
        local bad = setmetatable({}, {__tostring = function() error("no") end})
        tide.spawn(function() error(bad) end)
        tide.sleep(0.01)
        print("still alive")
        error(bad)
      ]])
      assert.equal(1, rc, err)
      assert.equal("still alive\n", out)
      assert.truthy(err:find("(a table error object whose __tostring failed)", 1, true), err)
    end)

    it("survives an on_error handler that fails", function()
      local out, err, rc = run_child([[
        tide.on_error(function() error("handler broke") end)
        tide.spawn(function() error("first") end)
        tide.sleep(0.01)
        print("still alive")
      ]])
      assert.equal(0, rc, err)
      assert.equal("still alive\n", out)
    end)
  end)

  describe("timer callbacks", function()
    it("may wait", function()
      local ch = tide.channel(1)
      tide.after(0, function()
        local t0 = tide.hrtime()
        tide.sleep(0.01)
        ch:send(tide.hrtime() - t0)
      end)
      local slept = ch:recv(2)
      assert.is_number(slept)
      assert.is_true(slept >= 0.009)
    end)

    it("of every kind may wait: next, immediate, close", function()
      local ch = tide.channel(3)
      local function waiter(name)
        return function()
          tide.sleep(0.005)
          ch:send(name)
        end
      end
      tide.next(waiter("next"))
      tide.immediate(waiter("immediate"))
      tide.after(10, function() end):close(waiter("close"))
      local got = {}
      for _ = 1, 3 do
        local v = ch:recv(2)
        assert.is_string(v)
        got[v] = true
      end
      assert.same({next = true, immediate = true, close = true}, got)
    end)
  end)

  describe("channels", function()
    it("buffer up to their capacity, FIFO, without blocking", function()
      local ch = tide.channel(3)
      local other_ran = false
      tide.spawn(function() other_ran = true end)
      assert.is_true(ch:send(1))
      assert.is_true(ch:send(2))
      assert.is_true(ch:send(3))
      assert.is_false(other_ran) -- no send yielded
      assert.equal(1, ch:recv())
      assert.equal(2, ch:recv())
      assert.equal(3, ch:recv())
      assert.is_false(other_ran) -- nor did a recv of buffered values
    end)

    it("block a sender when full until a receiver makes room", function()
      local ch = tide.channel(1)
      ch:send("a")
      local sender = tide.spawn(function() return ch:send("b") end)
      tide.yield()
      assert.equal("waiting", sender:status())
      assert.equal("a", ch:recv())
      assert.same({true, true}, {sender:join(2)})
      assert.equal("b", ch:recv())
    end)

    it("with capacity 0 are a rendezvous: send blocks until recv", function()
      local ch = tide.channel(0)
      local sent = false
      local s = tide.spawn(function()
        ch:send("hello")
        sent = true
      end)
      tide.yield()
      assert.equal("waiting", s:status())
      assert.is_false(sent)
      assert.equal("hello", ch:recv(1))
      assert.is_true(s:join(2))
      assert.is_true(sent)
    end)

    it("with capacity 0 hand a value to a waiting receiver", function()
      local ch = tide.channel()
      local r = tide.spawn(function() return ch:recv() end)
      tide.yield()
      assert.equal("waiting", r:status())
      assert.is_true(ch:send(42))
      assert.same({true, 42}, {r:join(2)})
    end)

    it("close wakes every receiver with nil, 'closed'", function()
      local ch = tide.channel(0)
      local r1 = tide.spawn(function() return ch:recv() end)
      local r2 = tide.spawn(function() return ch:recv() end)
      tide.yield()
      ch:close()
      for _, r in ipairs {r1, r2} do
        local res = pack(r:join(2))
        assert.is_true(res[1])
        assert.is_nil(res[2])
        assert.equal("closed", res[3])
      end
      local v, msg = ch:recv()
      assert.same({nil, "closed"}, {v, msg})
      ch:close() -- idempotent
    end)

    it("a closed buffered channel still delivers what it holds", function()
      local ch = tide.channel(2)
      ch:send("x")
      ch:close()
      assert.equal("x", ch:recv())
      local v, msg = ch:recv()
      assert.same({nil, "closed"}, {v, msg})
    end)

    it("raise on send to a closed channel", function()
      local ch = tide.channel(1)
      ch:close()
      local err = error_of(function() ch:send(1) end)
      assert.truthy(err:find("closed", 1, true), err)
    end)

    it("recv with a timeout returns nil, 'timed out', 'ETIMEDOUT'", function()
      local ch = tide.channel(1)
      local t0 = tide.hrtime()
      local v, msg, code = ch:recv(0.02)
      assert.is_true(tide.hrtime() - t0 >= 0.019)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {v, msg, code})
      -- the timed-out receiver is gone: a later value stays in the channel
      ch:send("kept")
      assert.equal("kept", ch:recv(1))
    end)

    it("send with a timeout gives up and does not deliver the value", function()
      local ch = tide.channel(0)
      local ok, msg, code = ch:send("v", 0.01)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      local v, msg2 = ch:recv(0.01)
      assert.is_nil(v)
      assert.equal("timed out", msg2)
    end)

    it("raise on send(nil)", function()
      local ch = tide.channel(1)
      local err = error_of(function() ch:send(nil) end)
      assert.truthy(err:find("send", 1, true), err)
    end)
  end)

  describe("semaphores", function()
    it("limit concurrency to their count", function()
      local sem = tide.semaphore(3)
      local active, peak, ts = 0, 0, {}
      for i = 1, 10 do
        ts[i] = tide.spawn(function()
          sem:acquire()
          active = active + 1
          if active > peak then peak = active end
          tide.sleep(0.002)
          active = active - 1
          sem:release()
        end)
      end
      for i = 1, 10 do assert.is_true(ts[i]:join(2)) end
      assert.equal(3, peak)
      assert.equal(0, active)
    end)

    it("acquire with a timeout returns nil, 'timed out', 'ETIMEDOUT'", function()
      local sem = tide.semaphore(0)
      local ok, msg, code = sem:acquire(0.01)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
      sem:release()
      assert.is_true(sem:acquire(0.01))
    end)

    it("lose no permit to a waiter that was cancelled or timed out", function()
      local sem = tide.semaphore(1)
      assert.is_true(sem:acquire())
      local gone = tide.spawn(function() return sem:acquire() end)
      local timed_out = tide.spawn(function() return sem:acquire(0.005) end)
      local next_in_line = tide.spawn(function() return sem:acquire() end)
      tide.yield()
      gone:cancel()
      assert.same({true, nil, "timed out", "ETIMEDOUT"}, {timed_out:join(2)})
      sem:release()
      assert.is_true((next_in_line:join(2)))
      sem:release() -- next_in_line is done with it
      assert.is_true(sem:acquire(0.01))
    end)

    it("release hands the permit to a waiter, not to a newcomer", function()
      local sem = tide.semaphore(1)
      assert.is_true(sem:acquire())
      local waiter = tide.spawn(function() return sem:acquire() end)
      tide.yield()
      assert.equal("waiting", waiter:status())
      sem:release()
      assert.same({true, true}, {waiter:join(2)})
      local ok, msg = sem:acquire(0.01) -- the waiter holds it now
      assert.is_nil(ok)
      assert.equal("timed out", msg)
    end)
  end)

  describe("conditions", function()
    it("signal wakes one waiter, broadcast all the others", function()
      local c = tide.cond()
      local woke = {}
      local ts = {}
      for i = 1, 3 do
        ts[i] = tide.spawn(function()
          assert(c:wait(2))
          woke[#woke + 1] = i
        end)
      end
      tide.yield()
      c:signal()
      tide.yield()
      assert.equal(1, #woke)
      c:broadcast()
      for i = 1, 3 do assert.is_true(ts[i]:join(2)) end
      assert.equal(3, #woke)
    end)

    it("wait with a timeout returns nil, 'timed out', 'ETIMEDOUT'", function()
      local c = tide.cond()
      c:signal() -- nobody waits: not remembered
      local t0 = tide.hrtime()
      local ok, msg, code = c:wait(0.02)
      assert.is_true(tide.hrtime() - t0 >= 0.019)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {ok, msg, code})
    end)
  end)

  describe("scale", function()
    it("runs 100,000 concurrent sleeping tasks", function()
      local N, count = 100000, 0
      local last_start, first_wake = -math.huge, math.huge
      local all_done = tide.cond()
      local base = tide.stats().tasks
      local t0, cpu0 = tide.hrtime(), os.clock()
      for _ = 1, N do
        tide.spawn(function()
          local now = tide.hrtime()
          if now > last_start then last_start = now end
          tide.sleep(0.05)
          now = tide.hrtime()
          if now < first_wake then first_wake = now end
          count = count + 1
          if count == N then all_done:signal() end
        end)
      end
      assert.equal(base + N, tide.stats().tasks)
      assert.is_true(all_done:wait(30))
      local took, cpu = tide.hrtime() - t0, os.clock() - cpu0
      assert.equal(N, count)
      -- all of them were asleep at once
      assert.is_true(last_start < first_wake)
      assert.is_true(first_wake - t0 >= 0.05)
      -- and cheaply: CPU time, so that a loaded machine does not fail it
      assert.is_true(cpu < 4, ("took %.2f s of CPU (%.2f s wall)"):format(cpu, took))
      assert.equal(base, tide.stats().tasks)
      collectgarbage()
    end)
  end)

  describe("waits that time out", function()
    -- A daemon polls a quiet channel (or waits on a condition) with a
    -- timeout, for ever: each expired wait must leave nothing behind.
    local function growth(n, wait)
      for _ = 1, 1000 do wait() end -- warm-up: tables reach their size
      collectgarbage()
      collectgarbage()
      local before = collectgarbage("count")
      for _ = 1, n do wait() end
      collectgarbage()
      collectgarbage()
      return collectgarbage("count") - before
    end

    it("leave no garbage behind in the object waited on", function()
      local ch, ch1, c, sem = tide.channel(0), tide.channel(1), tide.cond(), tide.semaphore(0)
      ch1:send("full")
      local sleeper = tide.spawn(function() tide.sleep(60) end)
      local N = 20000 -- a leak of a few words a wait shows as 300+ KB
      local cases = {
        {"channel recv", function() assert(not ch:recv(0)) end},
        {"channel send", function() assert(not ch1:send("x", 0)) end},
        {"cond wait", function() assert(not c:wait(0)) end},
        {"semaphore acquire", function() assert(not sem:acquire(0)) end},
        {"task join", function() assert(not sleeper:join(0)) end},
      }
      for _, case in ipairs(cases) do
        local kb = growth(N, case[2])
        assert.is_true(kb < 100, ("%d timed-out %s waits kept %.0f KB"):format(
          N, case[1], kb))
      end
      sleeper:cancel()
    end)
  end)

  describe("misuse", function()
    local function check(pattern, fn)
      local err = error_of(fn)
      assert.truthy(err:find(pattern), ("%q does not match %q"):format(err, pattern))
    end

    it("a wait inside a function C calls fails there and leaves nothing behind", function()
      -- (a table.sort comparator: the yield cannot cross the C call)
      local ok, err = pcall(table.sort, {3, 1, 2}, function(a, b)
        tide.sleep(0.05)
        return a < b
      end)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("yield across C%-call boundary"), err)
      assert.equal("running", tide.current():status())
      -- the failed wait's timeout must not reach a later wait of the task
      tide.yield()
      local ch = tide.channel()
      tide.after(0.15, function() ch:send("late") end)
      local t0 = tide.hrtime()
      assert.equal("late", ch:recv())
      assert.is_true(tide.hrtime() - t0 >= 0.1)
    end)

    it("survives a resume that raises, and limits coroutine nesting", function()
      -- a suspended coroutine with a nearly full stack, resumed with many
      -- values: the resume raises; waits must still work afterwards
      local yielded = false
      local function deep()
        pcall(deep)
        if not yielded then yielded = true; coroutine.yield() end
      end
      local co = coroutine.create(deep)
      assert.is_true(coroutine.resume(co))
      local many = {}
      for i = 1, 1000 do many[i] = i end
      local ok = coroutine.resume(co, unpack(many))
      assert.is_false(ok)
      tide.sleep(0) -- (a wait: it raised "cannot wait inside a coroutine" before)
      -- nested resumes stop at 200 with an error, instead of crashing
      local depth = 0
      local function nest()
        depth = depth + 1
        local ok2, e = coroutine.resume(coroutine.create(nest))
        if not ok2 then error(e, 0) end
      end
      local ok3, e3 = pcall(nest)
      assert.is_false(ok3)
      assert.truthy(tostring(e3):find("nested too deeply"), e3)
      assert.equal(201, depth)
      tide.sleep(0)
    end)

    it("raises on bad arguments, naming the argument and function", function()
      check("bad argument #1 to 'sleep'", function() tide.sleep("x") end)
      check("bad argument #1 to 'sleep'", function() tide.sleep(0 / 0) end)
      check("bad argument #1 to 'sleep'", function() tide.sleep() end)
      check("bad argument #2 to 'after'", function() tide.after(1, nil) end)
      check("bad argument #1 to 'after'", function() tide.after("soon", print) end)
      check("bad argument #1 to 'after'", function() tide.after(0 / 0, print) end)
      check("bad argument #1 to 'every'", function() tide.every(0, print) end)
      check("bad argument #1 to 'spawn'", function() tide.spawn(5) end)
      check("bad argument #1 to 'next'", function() tide.next() end)
      check("bad argument #1 to 'immediate'", function() tide.immediate("f") end)
      check("bad argument #1 to 'timeout'", function() tide.timeout("x", print) end)
      check("bad argument #2 to 'timeout'", function() tide.timeout(1, 2) end)
      check("bad argument #1 to 'channel'", function() tide.channel(-1) end)
      check("bad argument #1 to 'channel'", function() tide.channel(1.5) end)
      check("bad argument #1 to 'channel'", function() tide.channel("big") end)
      check("bad argument #1 to 'semaphore'", function() tide.semaphore(-1) end)
      check("bad argument #1 to 'on_error'", function() tide.on_error(5) end)
    end)

    it("raises on bad arguments to methods", function()
      local t = tide.spawn(function() end)
      check("bad argument #%d to 'join' %(number expected", function() t:join("x") end)
      local ch = tide.channel(1)
      check("bad argument #%d to 'recv'", function() ch:recv("x") end)
      check("bad argument #%d to 'send'", function() ch:send(1, "x") end)
      check("bad argument #%d to 'acquire'", function() tide.semaphore(1):acquire({}) end)
      check("bad argument #%d to 'wait'", function() tide.cond():wait("x") end)
      local tm = tide.after(10, function() end)
      check("bad argument #%d to 'again'", function() tm:again("x") end)
      tm:stop()
      t:join()
    end)

    it("raises when a method is called on the wrong object", function()
      local ch = tide.channel(1)
      check("channel expected", function() ch.recv({}) end)
      check("task expected", function() tide.current().join({}) end)
    end)

    it("raises when waiting inside a plain coroutine", function()
      local co = coroutine.create(function() tide.sleep(0.01) end)
      local ok, err = coroutine.resume(co)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("sleep", 1, true), tostring(err))
    end)
  end)
end)
