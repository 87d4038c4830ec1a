-- spec/loop_spec.lua - the ordering guarantees of the loop and its phases
-- (DESIGN.md, "The loop and its phases") that need no I/O, and the clock,
-- timer, immediate and stats calls of the core (API.md, "Core: tide").
--
-- The test bodies run inside tide's main task, so they may wait. Callbacks
-- only record what they see; the assertions are made in the test body once
-- a callback has signalled (through a channel) that the run is over.

local S = require "spec.support"
local busy, run_child = S.busy, S.run_child

-- helpers --------------------------------------------------------------------

local function iteration() return tide.stats().iterations end

local errors -- errors that escaped callbacks during the current test

local function await(ch, timeout)
  local v, msg = ch:recv(timeout or 5)
  assert(v ~= nil, "gave up waiting (" .. tostring(msg) .. "); errors: "
         .. table.concat(errors, "\n"))
  return v
end

-- Waits until the loop has moved on to a later iteration (so that the
-- statistics of the phase that woke us are complete).
local function next_iteration()
  local ch = tide.channel(1)
  tide.after(0, function() ch:send(true) end)
  await(ch)
end

local watchdog = S.watchdog("loop_spec.lua")

describe("the loop", function()
  teardown(function() watchdog:stop() end)

  before_each(function()
    errors = {}
    tide.on_error(function(e) errors[#errors + 1] = tostring(e) end)
  end)

  after_each(function() tide.on_error(nil) end)

  describe("ready queue", function()
    it("runs tide.next callbacks and new tasks before the next timer", function()
      local log, done = {}, tide.channel(1)
      -- equal delays created in sequence: one deadline, two timers
      tide.after(0.005, function()
        log[#log + 1] = "t1"
        tide.next(function()
          log[#log + 1] = "next"
          tide.next(function() log[#log + 1] = "next2" end)
        end)
        tide.spawn(function(a)
          log[#log + 1] = a
          tide.yield()
          log[#log + 1] = "spawn after yield"
        end, "spawn")
      end)
      tide.after(0.005, function()
        log[#log + 1] = "t2"
        done:send(true)
      end)
      await(done)
      assert.same("t1", log[1])
      assert.same("t2", log[#log])
      assert.equal(6, #log)
      local seen = {}
      for i = 2, 5 do seen[log[i]] = true end
      assert.same({["next"] = true, next2 = true, spawn = true,
                   ["spawn after yield"] = true}, seen)
    end)

    it("drains the ready queue before the next timer even when the callback waits", function()
      local log, done = {}, tide.channel(1)
      tide.after(0.005, function()
        log[#log + 1] = "t1"
        tide.next(function() log[#log + 1] = "next" end)
        tide.spawn(function() log[#log + 1] = "spawn" end)
        tide.sleep(0.001) -- this callback becomes a waiting task
        log[#log + 1] = "t1 after sleep"
        done:send(true)
      end)
      tide.after(0.005, function() log[#log + 1] = "t2" end)
      await(done)
      assert.same({"t1", "next", "spawn", "t2", "t1 after sleep"}, log)
    end)

    it("drains the ready queue before the next immediate even when the callback waits", function()
      local log, done = {}, tide.channel(1)
      tide.immediate(function()
        log[#log + 1] = "i1"
        tide.next(function() log[#log + 1] = "next" end)
        tide.sleep(0.001)
        done:send(true)
      end)
      tide.immediate(function() log[#log + 1] = "i2" end)
      await(done)
      assert.same({"i1", "next", "i2"}, log)
    end)

    it("runs tide.next callbacks and new tasks before the next immediate", function()
      local log, done = {}, tide.channel(1)
      tide.immediate(function()
        log[#log + 1] = "i1"
        tide.next(function() log[#log + 1] = "next" end)
        tide.spawn(function() log[#log + 1] = "spawn" end)
      end)
      tide.immediate(function()
        log[#log + 1] = "i2"
        done:send(true)
      end)
      await(done)
      assert.equal(4, #log)
      assert.equal("i1", log[1])
      assert.equal("i2", log[4])
    end)

    it("runs a tide.next callback only after the current task yields", function()
      local ran = false
      tide.next(function() ran = true end)
      busy(0.002)
      assert.is_false(ran)
      tide.yield()
      assert.is_true(ran)
    end)

    it("passes arguments to tide.next, after, every and immediate", function()
      local got, done = {}, tide.channel(4)
      local function rec(name, ...)
        got[name] = {n = select("#", ...), ...}
        done:send(name)
      end
      tide.next(rec, "next", 1, nil, 3)
      tide.after(0, rec, "after", 1, nil, 3)
      tide.immediate(rec, "immediate", 1, nil, 3)
      local ev
      ev = tide.every(0.001, function(...)
        ev:stop()
        rec("every", ...)
      end, 1, nil, 3)
      for _ = 1, 4 do await(done) end
      for _, name in ipairs {"next", "after", "immediate", "every"} do
        assert.same({n = 3, 1, nil, 3}, got[name], name)
      end
    end)
  end)

  describe("timers", function()
    it("run equal deadlines in creation order", function()
      local order, done = {}, tide.channel(1)
      local N = 50
      for i = 1, N do
        tide.after(0.005, function()
          order[#order + 1] = i
          if #order == N then done:send(true) end
        end)
      end
      await(done)
      local want = {}
      for i = 1, N do want[i] = i end
      assert.same(want, order)
    end)

    it("run in deadline order, ties in creation order", function()
      local order, done = {}, tide.channel(1)
      local N = 30
      -- alternate two delays: every short one first, each group in order
      for i = 1, N do
        tide.after(i % 2 == 1 and 0.1 or 0.01, function()
          order[#order + 1] = i
          if #order == N then done:send(true) end
        end)
      end
      await(done)
      local want = {}
      for i = 2, N, 2 do want[#want + 1] = i end
      for i = 1, N, 2 do want[#want + 1] = i end
      assert.same(want, order)
    end)

    it("never fire a timer created in the timers phase in the same pass", function()
      local log, done = {}, tide.channel(1)
      tide.after(0, function()
        log[#log + 1] = {"a", iteration(), tide.phase()}
        tide.after(0, function()
          log[#log + 1] = {"b", iteration(), tide.phase()}
          done:send(true)
        end)
        -- an immediate queued by the same callback runs before the timer
        tide.immediate(function()
          log[#log + 1] = {"imm", iteration(), tide.phase()}
        end)
      end)
      await(done)
      assert.equal(3, #log)
      assert.same({"a", "imm", "b"}, {log[1][1], log[2][1], log[3][1]})
      assert.same({"timers", "check", "timers"},
                  {log[1][3], log[2][3], log[3][3]})
      assert.equal(log[1][2], log[2][2])
      assert.is_true(log[3][2] > log[1][2],
                     "zero-delay timer fired in the pass that created it")
    end)

    it("let a timer re-arm itself with zero delay without starving the loop", function()
      local iters, imm_at, done = {}, nil, tide.channel(1)
      local t
      t = tide.after(0, function()
        iters[#iters + 1] = iteration()
        if #iters == 1 then
          tide.immediate(function() imm_at = #iters end)
        end
        if #iters < 20 then t:again(0) else done:send(true) end
      end)
      await(done)
      for i = 2, #iters do
        assert.is_true(iters[i] > iters[i - 1], "two firings in one pass")
      end
      assert.equal(1, imm_at) -- the immediate ran before the second firing
    end)

    it("keep `every` on its grid and skip missed beats", function()
      -- Beats 3 and 6 overrun by 2.5 intervals: the beat after each is
      -- late, the one after that is skipped, and the others stay on one
      -- grid, origin + k * I. A timer that re-armed from the late firing
      -- would put every later beat half an interval off that grid. The
      -- checks compare firings with each other, not with a guessed origin.
      local I = 0.04
      local fires, busy_beats, done = {}, {[3] = true, [6] = true}, tide.channel(1)
      local ev
      ev = tide.every(I, function()
        local n = #fires + 1
        fires[n] = tide.now()
        if busy_beats[n] then busy(2.5 * I) end
        if n == 10 then
          ev:stop()
          done:send(true)
        end
      end)
      await(done)
      assert.equal(10, #fires)
      -- never two firings in one pass
      for n = 2, 10 do
        assert.is_true(fires[n] > fires[n - 1],
          ("beats %d and %d fired in the same pass"):format(n - 1, n))
      end
      -- how far apart two firings are from a whole number of intervals
      local function off_grid(a, b)
        local x = (fires[b] - fires[a]) / I
        return math.abs(x - math.floor(x + 0.5))
      end
      -- after each late beat, the beats are back in phase with the first
      -- run (on a loaded machine one prompt pair of beats is enough)
      for _, run in ipairs {{5, 6}, {8, 10}} do
        local best = math.huge
        for a = 1, 3 do
          for b = run[1], run[2] do best = math.min(best, off_grid(a, b)) end
        end
        assert.is_true(best < 0.25,
          ("beats %d-%d are out of phase with beats 1-3 by %.2f of an interval")
          :format(run[1], run[2], best))
      end
      -- two beats were missed and skipped rather than fired late in a
      -- catch-up burst: the ten firings span eleven intervals or more
      local span = (fires[10] - fires[1]) / I
      assert.is_true(span >= 10.5, ("ten beats spanned %.2f intervals"):format(span))
    end)

    it("keep a late `every`'s next beat in deadline order with other timers", function()
      -- The beat after a late one is due sooner than a timer of the same
      -- delay started a little earlier: it must still fire first.
      --   +0.040  a slow callback holds the loop until +0.060
      --   +0.060  one pass: the timer due at +0.045 starts a one-shot of
      --           the every's delay (due +0.110), then beat 1 (due +0.050)
      --           fires late; beat 2 is due at +0.100, before the one-shot
      local I, T0 = 0.05, tide.hrtime()
      local log, beats, done = {}, 0, tide.channel(1)
      local ev
      ev = tide.every(I, function()
        beats = beats + 1
        log[#log + 1] = "beat " .. beats
        if beats == 2 then ev:stop() end
      end)
      tide.after(0.04, function() busy(T0 + 0.06 - tide.hrtime()) end)
      tide.after(0.045, function()
        tide.after(I, function()
          log[#log + 1] = "one-shot"
          done:send(true)
        end)
      end)
      await(done)
      assert.same({"beat 1", "beat 2", "one-shot"}, log)
    end)

    it("stop() cancels a timer; active() tells whether it is armed", function()
      local fired, done = false, tide.channel(1)
      local t = tide.after(0.01, function() fired = true end)
      assert.is_true(t:active())
      t:stop()
      assert.is_false(t:active())
      t:stop() -- stopping twice is harmless
      tide.after(0.03, function() done:send(true) end)
      await(done)
      assert.is_false(fired)
      assert.is_false(t:active())
    end)

    it("keep their order when most of a delay's timers are stopped", function()
      -- many stops leave holes, and the list is compacted when they
      -- outnumber the timers: the rest, and timers added after, still fire
      -- in order, and stop() still finds the right one
      local order, done = {}, tide.channel(1)
      local ts, want = {}, {}
      local function rec(i) order[#order + 1] = i end
      for i = 1, 300 do ts[i] = tide.after(0.03, rec, i) end
      for i = 1, 300 do
        if i % 10 ~= 0 then ts[i]:stop() end
      end
      ts[300]:stop() -- the last one: a hole at the end of the list
      for i = 301, 320 do ts[i] = tide.after(0.03, rec, i) end
      ts[150]:stop()
      ts[305]:stop()
      for i = 1, 320 do
        local stopped = (i <= 300 and i % 10 ~= 0) or i == 300 or i == 150
                        or i == 305
        assert.equal(not stopped, ts[i]:active(), i)
        if not stopped then want[#want + 1] = i end
      end
      tide.after(0.03, function() done:send(true) end)
      await(done)
      assert.same(want, order)
    end)

    it("are counted by tide.stats().timers while armed", function()
      local base = tide.stats().timers
      local f = function() end
      local a, b = tide.after(10, f), tide.after(10, f)
      local c = tide.every(10, f)
      assert.equal(base + 3, tide.stats().timers)
      b:stop()
      assert.equal(base + 2, tide.stats().timers)
      b:again()
      assert.equal(base + 3, tide.stats().timers)
      a:stop(); b:stop(); c:stop()
      assert.equal(base, tide.stats().timers)
      local done = tide.channel(1)
      tide.after(0.001, function() done:send(true) end)
      assert.equal(base + 1, tide.stats().timers)
      await(done)
      assert.equal(base, tide.stats().timers)
    end)

    it("cost at most 120 bytes of Lua heap each while armed", function()
      -- one table per timer (104 bytes with 64-bit LuaJIT) and its slot in
      -- its delay's list; the deadline lives in the timer itself
      local N, f, ts = 50000, function() end, {}
      for i = 1, N do ts[i] = false end
      collectgarbage(); collectgarbage()
      local k0 = collectgarbage("count")
      for i = 1, N do ts[i] = tide.after(10, f) end
      collectgarbage(); collectgarbage()
      local per = (collectgarbage("count") - k0) * 1024 / N
      for i = 1, N do ts[i]:stop() end
      assert.is_true(per <= 120, ("%.1f bytes per timer"):format(per))
    end)

    it("a one-shot timer is inactive after it fired; again() re-arms it", function()
      local count, done = 0, tide.channel(2)
      local t = tide.after(0.001, function()
        count = count + 1
        done:send(true)
      end)
      await(done)
      assert.equal(1, count)
      assert.is_false(t:active())
      t:again()
      assert.is_true(t:active())
      await(done)
      assert.equal(2, count)
    end)

    it("again() restarts the countdown from now", function()
      local start, fired_at, done = tide.now(), nil, tide.channel(1)
      local t = tide.after(0.05, function()
        fired_at = tide.now()
        done:send(true)
      end)
      tide.after(0.03, function() t:again() end)
      await(done)
      assert.is_true(fired_at - start >= 0.08 - 1e-6,
        ("fired %.4f s after start, wanted >= 0.08"):format(fired_at - start))
    end)

    it("again(s) restarts with a new delay", function()
      local done = tide.channel(1)
      local t = tide.after(60, function() done:send(tide.now()) end)
      local at = tide.now()
      t:again(0.01)
      local fired = await(done, 2)
      assert.is_true(fired - at >= 0.01 - 1e-6)
    end)

    it("again(s) on an `every` changes its interval", function()
      local n, done = 0, tide.channel(1)
      local ev
      ev = tide.every(60, function()
        n = n + 1
        if n == 3 then
          ev:stop()
          done:send(true)
        end
      end)
      ev:again(0.005)
      await(done, 2)
      assert.equal(3, n)
      assert.is_false(ev:active())
    end)

    it("an `every` stopped from its own callback fires no more", function()
      local n, third = 0, tide.channel(1)
      local ev
      ev = tide.every(0.002, function()
        n = n + 1
        if n == 3 then
          ev:stop()
          third:send(true)
        end
      end)
      await(third)
      assert.is_false(ev:active())
      tide.sleep(0.03)
      assert.equal(3, n)
    end)
  end)

  describe("immediates", function()
    it("run in the check phase, FIFO; those queued there wait a turn", function()
      local log, done = {}, tide.channel(1)
      for i = 1, 5 do
        tide.immediate(function()
          log[#log + 1] = {i, tide.phase(), iteration()}
          if i == 2 then
            tide.immediate(function()
              log[#log + 1] = {6, tide.phase(), iteration()}
              done:send(true)
            end)
          end
        end)
      end
      await(done)
      assert.equal(6, #log)
      for i = 1, 6 do
        assert.equal(i, log[i][1])
        assert.equal("check", log[i][2])
      end
      for i = 2, 5 do assert.equal(log[1][3], log[i][3]) end
      assert.is_true(log[6][3] > log[5][3],
                     "immediate queued in the check phase ran in the same pass")
    end)

    it("all run in one check phase, also when one asks for tide.current()", function()
      local log, done = {}, tide.channel(1)
      tide.immediate(function()
        log[#log + 1] = {"i1", iteration(), tide.current() ~= nil}
      end)
      tide.immediate(function()
        log[#log + 1] = {"i2", iteration()}
        assert(tide.timeout(1, function() return true end))
      end)
      tide.immediate(function()
        log[#log + 1] = {"i3", iteration()}
        done:send(true)
      end)
      await(done)
      assert.equal(3, #log)
      assert.is_true(log[1][3])
      assert.equal(log[1][2], log[2][2], "i2 ran a pass late")
      assert.equal(log[1][2], log[3][2], "i3 ran a pass late")
      assert.same({}, errors)
    end)

    it("stop() cancels a queued immediate", function()
      local log, done = {}, tide.channel(1)
      local b
      tide.immediate(function()
        log[#log + 1] = "a"
        b:stop()
      end)
      b = tide.immediate(function() log[#log + 1] = "b" end)
      local c = tide.immediate(function() log[#log + 1] = "c" end)
      c:stop()
      tide.immediate(function()
        log[#log + 1] = "d"
        done:send(true)
      end)
      await(done)
      assert.same({"a", "d"}, log)
    end)

    it("skips any number of stopped immediates in a row", function()
      local ran, done = 0, tide.channel(1)
      local ims = {}
      for i = 1, 100000 do ims[i] = tide.immediate(function() ran = ran + 1 end) end
      for i = 2, 100000 do ims[i]:stop() end
      tide.immediate(function() done:send(ran) end)
      assert.equal(1, await(done))
    end)
  end)

  describe("close callbacks", function()
    it("run in the close phase, after the check phase of that iteration", function()
      local log, done = {}, tide.channel(1)
      local victim_fired = false
      tide.after(0, function()
        -- a timer due in this very pass, closed before its turn
        local victim
        log[#log + 1] = {"timer", tide.phase(), iteration()}
        victim = tide.after(0, function() victim_fired = true end)
        tide.immediate(function()
          log[#log + 1] = {"immediate", tide.phase(), iteration()}
        end)
        victim:close(function()
          log[#log + 1] = {"close", tide.phase(), iteration()}
          done:send(true)
        end)
        tide.next(function()
          log[#log + 1] = {"next", tide.phase(), iteration()}
        end)
        assert(not victim:active())
      end)
      await(done)
      next_iteration()
      assert.same({"timer", "next", "immediate", "close"},
                  {log[1][1], log[2][1], log[3][1], log[4][1]})
      assert.same({"timers", "timers", "check", "close"},
                  {log[1][2], log[2][2], log[3][2], log[4][2]})
      for i = 2, 4 do assert.equal(log[1][3], log[i][3]) end
      assert.is_false(victim_fired)
      assert.same({}, errors)
    end)

    it("all run in the close phase of the iteration that closed them", function()
      local log, done = {}, tide.channel(2)
      tide.after(0, function()
        local closed_in = iteration()
        local a, b = tide.after(10, function() end), tide.after(10, function() end)
        a:close(function()
          log[#log + 1] = {"a", iteration(), tide.phase(), tide.current() ~= nil}
        end)
        b:close(function()
          log[#log + 1] = {"b", iteration(), tide.phase()}
          done:send(closed_in)
        end)
        -- an immediate that queues another: the second runs a pass later,
        -- after both close callbacks
        tide.immediate(function()
          tide.immediate(function()
            log[#log + 1] = {"late immediate", iteration()}
            done:send(true)
          end)
        end)
      end)
      local closed_in = await(done)
      await(done)
      assert.equal(3, #log)
      assert.same({"a", "b", "late immediate"}, {log[1][1], log[2][1], log[3][1]})
      assert.equal(closed_in, log[1][2])
      assert.equal(closed_in, log[2][2], "second close callback ran a pass late")
      assert.equal("close", log[2][3])
    end)

    it("a closed timer never fires, even when due in the same pass", function()
      local log, done = {}, tide.channel(1)
      local b
      -- a slow callback first, so that a and b are both due in the next pass
      tide.after(0, function() busy(0.01) end)
      tide.after(0.002, function()
        log[#log + 1] = "a"
        b:close()
      end)
      b = tide.after(0.002, function() log[#log + 1] = "b" end)
      tide.after(0.02, function() done:send(true) end)
      await(done)
      assert.same({"a"}, log)
    end)

    it("close() is idempotent and a closed timer cannot be restarted", function()
      local closes, done = 0, tide.channel(1)
      local t = tide.after(10, function() end)
      t:close(function()
        closes = closes + 1
        done:send(true)
      end)
      t:close()
      assert.is_false(t:active())
      assert.has_error(function() t:again() end)
      await(done)
      next_iteration()
      assert.equal(1, closes)
    end)
  end)

  describe("tide.phase()", function()
    it("is 'timers' in an after() callback", function()
      local done = tide.channel(1)
      tide.after(0, function() done:send(tide.phase()) end)
      assert.equal("timers", await(done))
    end)

    it("is 'check' in an immediate and in tide.next queued from it", function()
      local done = tide.channel(2)
      tide.immediate(function()
        done:send(tide.phase())
        tide.next(function() done:send(tide.phase()) end)
      end)
      assert.equal("check", await(done))
      assert.equal("check", await(done))
    end)

    it("is 'timers' in a task woken from sleep", function()
      local t = tide.spawn(function()
        tide.sleep(0.001)
        return tide.phase()
      end)
      local ok, phase = t:join(2)
      assert.is_true(ok)
      assert.equal("timers", phase)
    end)

    it("is 'main' at the top level before the loop starts", function()
      local out, err, rc = run_child([[
        print(tide.phase())
        tide.spawn(function() print(tide.phase()) end)
        tide.sleep(0)
        print(tide.phase())
      ]])
      assert.equal(0, rc, err)
      assert.equal("main\nmain\ntimers\n", out)
    end)
  end)

  describe("keeping the process alive", function()
    it("an unref'd timer does not keep the loop alive", function()
      local out, err, rc, elapsed = run_child([[
        local t = tide.after(30, function() print("fired") end)
        assert(t:unref() == t or true)
        local e = tide.every(10, function() print("beat") end)
        e:unref()
        print("end of script")
      ]])
      assert.equal(0, rc, err)
      assert.equal("end of script\n", out)
      assert.is_true(elapsed < 5, "child ran for " .. elapsed .. " s")
    end)

    it("an unref'd timer still fires while something else keeps the loop", function()
      local out, err, rc = run_child([[
        tide.after(0.01, function() print("unref'd") end):unref()
        tide.after(0.1, function() print("ref'd") end)
        tide.after(5, function() print("late") end):unref()
      ]])
      assert.equal(0, rc, err)
      assert.equal("unref'd\nref'd\n", out)
    end)

    it("ref() makes a timer keep the loop alive again", function()
      local out, err, rc = run_child([[
        local t = tide.after(0.05, function() print("fired") end)
        t:unref()
        t:ref()
      ]])
      assert.equal(0, rc, err)
      assert.equal("fired\n", out)
    end)

    it("an unref'd immediate does not keep the loop alive", function()
      local out, err, rc = run_child([[
        tide.immediate(function() print("immediate ran") end):unref()
        print("end of script")
      ]])
      assert.equal(0, rc, err)
      assert.equal("end of script\n", out)
    end)

    it("a referenced immediate keeps the loop alive, whatever was queued before it", function()
      local out, err, rc = run_child([[
        tide.immediate(function() print("a") end):unref()
        tide.immediate(function() print("b") end)
      ]])
      assert.equal(0, rc, err)
      assert.equal("a\nb\n", out)
    end)

    it("a cancelled sleep does not keep the loop alive", function()
      local out, err, rc, elapsed = run_child([[
        local t = tide.spawn(function() tide.sleep(30) end)
        tide.sleep(0.01)
        t:cancel()
        print("end of script")
      ]])
      assert.equal(0, rc, err)
      assert.equal("end of script\n", out)
      assert.is_true(elapsed < 5, "child ran for " .. elapsed .. " s")
    end)
  end)

  describe("clocks", function()
    it("tide.now() is cached within an iteration; hrtime() is not", function()
      local done = tide.channel(1)
      tide.after(0, function()
        local n1, h1 = tide.now(), tide.hrtime()
        busy(0.005)
        local n2, h2 = tide.now(), tide.hrtime()
        tide.after(0, function() done:send({n1, n2, h1, h2, tide.now()}) end)
      end)
      local r = await(done)
      local n1, n2, h1, h2, later = r[1], r[2], r[3], r[4], r[5]
      assert.equal(n1, n2)
      assert.is_true(h2 - h1 >= 0.005)
      assert.is_true(n1 <= h1, "cached clock ahead of the real one")
      assert.is_true(later >= n1 + 0.005, "now() did not advance next pass")
    end)

    it("tide.time() is wall-clock epoch seconds with sub-second precision", function()
      local t1 = tide.time()
      assert.is_true(math.abs(t1 - os.time()) <= 2)
      tide.sleep(0.02)
      local t2 = tide.time()
      assert.is_true(t2 - t1 >= 0.015 and t2 - t1 < 1,
                     "tide.time() moved by " .. (t2 - t1))
    end)

    it("a timer set at the top level of a slow script waits its full delay", function()
      local out, err, rc = run_child([[
        local t = tide.hrtime() + 0.1
        while tide.hrtime() < t do end -- a slow start-up, before the loop
        local t0 = tide.hrtime()
        tide.after(0.05, function()
          print(("%.4f"):format(tide.hrtime() - t0))
        end)
      ]])
      assert.equal(0, rc, err)
      local waited = tonumber(out)
      assert.is_true(waited >= 0.049, "tide.after(0.05) fired after " ..
                     tostring(waited) .. " s")
    end)
  end)

  describe("tide.stats()", function()
    it("has every field, with sane values", function()
      local s = tide.stats()
      assert.is_number(s.iterations)
      assert.is_true(s.iterations >= 1)
      for _, p in ipairs {"timers", "pending", "poll", "check", "close"} do
        assert.is_table(s.phases[p], p)
        assert.is_number(s.phases[p].callbacks, p)
        assert.is_number(s.phases[p].seconds, p)
        assert.is_true(s.phases[p].callbacks >= 0, p)
        assert.is_true(s.phases[p].seconds >= 0, p)
      end
      assert.is_number(s.lag)
      assert.is_true(s.lag >= 0)
      assert.is_number(s.utilization)
      assert.is_true(s.utilization >= 0 and s.utilization <= 1)
      assert.is_number(s.tasks)
      assert.is_true(s.tasks >= 1) -- at least this one
      assert.is_table(s.pool)
      assert.is_number(s.pool.threads)
      assert.is_true(s.pool.threads >= 0)
      assert.equal(0, s.pool.queued)
      assert.equal(0, s.pool.running)
    end)

    it("counts iterations and per-phase callbacks and time", function()
      local s0 = tide.stats()
      local done = tide.channel(2)
      tide.after(0, function() busy(0.03); done:send(true) end)
      tide.immediate(function() busy(0.02); done:send(true) end)
      local t = tide.after(10, function() end)
      t:close(function() end)
      await(done)
      await(done)
      next_iteration()
      local s1 = tide.stats()
      assert.is_true(s1.iterations > s0.iterations)
      assert.is_true(s1.phases.timers.callbacks >= s0.phases.timers.callbacks + 1)
      assert.is_true(s1.phases.check.callbacks >= s0.phases.check.callbacks + 1)
      assert.is_true(s1.phases.close.callbacks >= s0.phases.close.callbacks + 1)
      assert.is_true(s1.phases.timers.seconds - s0.phases.timers.seconds >= 0.025)
      assert.is_true(s1.phases.check.seconds - s0.phases.check.seconds >= 0.015)
    end)

    it("counts live tasks", function()
      local base = tide.stats().tasks
      local c = tide.cond()
      local ts = {}
      for i = 1, 3 do ts[i] = tide.spawn(function() c:wait() end) end
      tide.yield()
      assert.equal(base + 3, tide.stats().tasks)
      c:broadcast()
      for i = 1, 3 do assert.is_true(ts[i]:join(2)) end
      assert.equal(base, tide.stats().tasks)
    end)

    it("reports the lag of a timer held up by a slow callback", function()
      local done = tide.channel(1)
      tide.after(0, function()
        tide.after(0.005, function() done:send(tide.stats().lag) end)
        busy(0.05)
      end)
      local lag = await(done)
      assert.is_true(lag >= 0.01, "lag " .. lag)
    end)
  end)
end)
