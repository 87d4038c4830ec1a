-- lua/tide/core.lua - the scheduler: tasks, the ready queue, waits,
-- cancellation, timeouts, channels, semaphores and conditions.
--
-- host/core.c calls the function this file returns with the C primitives
-- and gets the `tide` module back. The loop enters Lua only through the
-- functions given to C.set_runners (run_timers, run_immediates,
-- run_closing, run_direct, start, ...); each of them drains the ready
-- queue before it returns, so the queue is empty between any two callbacks
-- of the loop.
--
-- Tasks run in pooled coroutines ("runners"). A runner runs one job after
-- another: a spawned task, or a timer, immediate or next callback. A
-- callback that never waits costs no task object at all; the first time it
-- waits (or asks for tide.current()), its runner is adopted as a task, and
-- the runner returns to the pool when the callback ends. (Tasks spawned
-- with tide._spawn_own, such as a server's connection handlers, have a
-- coroutine of their own instead.)
--
-- A task is resumed only from here (drain), never from inside another
-- task: wake() only queues it.

return function(C)

local coroutine_create, resume, yield, running =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.running
local select, type, error, pcall, xpcall, tostring, getmetatable, setmetatable =
  select, type, error, pcall, xpcall, tostring, getmetatable, setmetatable
local pairs = pairs
local unpack, traceback, huge = unpack, debug.traceback, math.huge
local stderr = io.stderr
local jitguard = require "tide.jitguard" -- before any code can get hot

-- ltimer.c through the FFI: plain numbers in and out, no lua_State
local ffi = require "ffi"
local H = ffi.cast("void *", C.host) -- a cdata pointer: the JIT can pass it
local function cfn(name, sig) return ffi.cast(sig, C.ffi[name]) end
local lt_clock = cfn("lt_clock", "double (*)(void *)")
local lt_cached = cfn("lt_cached", "double (*)(void *)")
local lt_now = cfn("lt_now", "double (*)(void *)")
-- the same through the Lua C API, for the scheduler's interpreted paths
local C_pop, C_start_at, C_stop, C_clock = C.pop, C.start_at, C.stop, C.clock
local C_imm_set = C.imm_set
local close_arm = cfn("close_arm", "void (*)(void *)")

local tide = {}
local PARK = {}   -- yielded by a task that waits
local DONE = {}   -- yielded by a runner whose job ended
local DRAIN = {}  -- yielded by a batch between callbacks: drain, come back
local CANCEL = {} -- wake value: raise the task's cancellation at its wait
local RESULTS = {} -- wake value: the wait's results are in the next value

local Task = {}
-- A task is a table of array slots only (no hash part, the smallest table
-- LuaJIT makes for its fields): 1-5 are the timer of its own waits (see
-- the timers below), then its function, its coroutine, its state, the
-- sequence number of its wait, its id (task.id), what it waits on, its
-- arguments, and the function run when it ends with that function's
-- argument. Fields that few tasks need (joiners, results, err, ...) are
-- named ones.
local FN, CO, ST, WSEQ, ID, WQ, ARGS, FIN, FIN_ARG = 6, 7, 8, 9, 10, 11, 12, 13, 14
function Task.__index(t, k)
  if k == "id" then return t[ID] end
  return Task[k]
end
local Cancelled = {}

local co_task = {}        -- runner coroutine -> the callback's task it became
local cur_co = nil        -- the runner the scheduler resumed, nil in the main state
local cur_task = nil      -- the task it resumed there (nil: a callback's runner;
                          -- one that became a task is in co_task)
local user_depth = 0      -- how deep in coroutines the script made itself
local park_timeout = nil  -- the timeout of the wait being parked
local parking = nil       -- the task whose yield to park has not reached the
                          -- scheduler yet (see repair_park)
local ntasks = 0          -- live tasks (started or not, not finished)
local last_id = 0         -- tasks are numbered in creation order
local exiting = false
local error_handler       -- set by tide.on_error

-- argument checks ----------------------------------------------------------

-- level: the frame blamed, counted from argerror (3: the caller of the
-- function that checks its arguments)
local function argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 3)
end

-- a value as an argument error names it
local function describe(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "number" then return tostring(v) end
  return type(v)
end

-- an optional timeout of a module's call (nil: none; negative: 0)
local function optional_seconds(s, n, fname, what)
  if s == nil then return nil end
  if type(s) ~= "number" or s ~= s or s == huge or s == -huge then
    argerror(n, fname, (what or "seconds") ..
      " must be a finite number or nil, got " .. tostring(s), 4)
  end
  return s < 0 and 0 or s
end

local function check_seconds(s, n, fname, optional)
  if s == nil and optional then return nil end
  if type(s) ~= "number" then
    argerror(n, fname, "number expected, got " .. type(s))
  end
  if s ~= s or s == huge or s == -huge then
    argerror(n, fname, "seconds must be a finite number")
  end
  return s < 0 and 0 or s
end

local function check_function(f, n, fname)
  if type(f) ~= "function" then
    argerror(n, fname, "function expected, got " .. type(f))
  end
end

-- A checker for the self argument of the methods of objects with
-- metatable mt: check(x, fname) raises unless x is one.
local function self_checker(mt, what)
  return function(x, fname)
    if getmetatable(x) ~= mt then
      error(("bad argument #1 to '%s' (%s expected, got %s)"):format(
        fname, what, type(x)), 3)
    end
  end
end

-- the ready queue -----------------------------------------------------------

-- Entries take four slots: a task and the three values its wait returns
-- (kept here rather than in the task, which stays small), or a job.
local rq, rq_head, rq_tail = {}, 1, 0

local function push_ready(x, a, b, c)
  local n = rq_tail
  rq[n + 1], rq[n + 2], rq[n + 3], rq[n + 4] = x, a, b, c
  rq_tail = n + 4
end

-- runners ---------------------------------------------------------------------

local pool, npool = {}, 0
local MAX_POOL = 256
local finish
local new_timer, arm, disarm -- defined with the timers below
local repair_park -- (the tasks, below)

-- A job that raises ends its runner's coroutine (there is no pcall in the
-- way, so a parked task's stack stays small: LuaJIT gives a coroutine
-- about 40 slots and doubles them when a call needs more). The scheduler
-- sees the dead coroutine and takes the message with its traceback here.
local function failure(co, e)
  if getmetatable(e) == Cancelled then return e end
  if type(e) == "table" or type(e) == "userdata" then return e end
  if e == nil then e = "(error object is a nil value)" end
  -- an error re-raised with the traceback of where it began (xpcall with
  -- debug.traceback, as tide.net's handlers do) needs no second one
  if type(e) == "string" and e:find("\nstack traceback:\n", 1, true) then
    return e
  end
  -- the frames under the job's own function are the scheduler's
  local tb = traceback(co, tostring(e))
  local i = tb:find("\n[^\n]*in function 'call_cb'") or
            tb:find("\n[^\n]*lua/tide/core%.lua:%d+: in function <lua/tide/core%.lua")
  return i and tb:sub(1, i - 1) or tb
end

-- A runner runs job(arg) after job(arg) (arg nil: job()). The job is
-- called in the lowest register it can be (ended, job, arg): every slot
-- under it is under a parked task too.
local function ended(...) return finish(cur_co, cur_task, true, ...) end
local function runner_body(job, arg)
  if arg == nil then ended(job())
  else ended(job(arg)) end
  return runner_body(yield(DONE))
end

-- the job of a task spawned with arguments
local function call_task(t)
  local args = t[ARGS]
  t[ARGS] = false
  return t[FN](unpack(args, 1, args.n))
end

local function take_runner()
  if npool > 0 then
    local co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    return co
  end
  return coroutine_create(runner_body)
end

-- Resumes runner co, which is then the current one, with its task t
-- (nil for a callback).
local function plain_run_in(co, t, a, b, c)
  local prev, prev_t = cur_co, cur_task
  cur_co, cur_task = co, t
  local ok, r = resume(co, a, b, c)
  cur_co, cur_task = prev, prev_t
  return ok, r
end
local run_in = plain_run_in

-- run_in with tide._slice_hook's f (tide.plugin's budgets): f(co) before
-- each resume and, when it returned true, f(false) after it. Only once a
-- hook is set does the scheduler's hot path take the branch.
local slice_hook
local function hooked_run_in(co, t, a, b, c)
  local prev, prev_t = cur_co, cur_task
  cur_co, cur_task = co, t
  local ok, r
  if slice_hook(co) then -- (true: a run to close after)
    ok, r = resume(co, a, b, c)
    slice_hook(false)
  else
    ok, r = resume(co, a, b, c)
  end
  cur_co, cur_task = prev, prev_t
  return ok, r
end

-- (t: the task resumed, nil for a callback's runner)
local function after_resume(co, ok, r, t)
  if r == PARK then
    parking = nil
    -- A wait's timer is armed here, in the main state, after the task
    -- parked: calls into C (the clock) from deep in a task's stack would
    -- make LuaJIT double that coroutine's stack.
    local timeout = park_timeout
    if timeout then
      park_timeout = nil
      arm(t or co_task[co], timeout) -- a task is its own wait's timer
    end
  elseif parking then -- (a wait of this run failed to yield: see repair_park)
    repair_park()
    return after_resume(co, ok, r, t)
  elseif r == DONE then
    if npool < MAX_POOL then
      npool = npool + 1
      pool[npool] = co
    end
  elseif not ok then -- the job raised: its coroutine is dead
    finish(co, t, false, failure(co, r))
  else -- a task on a coroutine of its own returned (r: its first result)
    if r == nil then finish(co, t, true) else finish(co, t, true, r) end
  end
end

-- reporting ---------------------------------------------------------------------

-- tostring that cannot raise: an error object whose __tostring fails is
-- named by its type (the reporting below must not fail in its turn)
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return "(a " .. type(v) .. " error object whose __tostring failed)"
end

local function default_handler(err, task)
  stderr:write("tide: error in ", task and tostring(task) or "a callback",
               ": ", tostring(err), "\n")
end

local function report(err, task)
  local ok, e = pcall(error_handler or default_handler, err, task)
  if not ok then
    stderr:write("tide: error in on_error handler: ", safe_tostring(e),
                 "\nwhile reporting: ", safe_tostring(err), "\n")
  end
end

-- tasks -----------------------------------------------------------------------

-- A task is also the timer of its own waits (see the timers below): its
-- slots 1-5 are {on_timer, slot, 1, delay, itself}. The constructor ends
-- with constants, so LuaJIT makes every slot at once (see
-- spec/bytecode_spec.lua). Likewise, the embedded bytecode's template of
-- a constructor keeps only the named fields whose value is a constant:
-- the constructors made per call below give every field a constant and
-- store the values after.
local on_timer

local function new_task(fn, co, state)
  last_id = last_id + 1
  local t = setmetatable({on_timer, 0, 1, 0, false, false, false, false, 0, 0,
                          false, false, false, false}, Task)
  t[5], t[FN], t[CO], t[ST], t[ID] = t, fn, co, state, last_id
  return t
end

local function adopt(co)
  local t = new_task(false, co, "running")
  co_task[co], cur_task = t, t
  ntasks = ntasks + 1
  return t
end

local function not_in_task(in_user_co, fname)
  error(in_user_co and ("'" .. fname .. "' cannot wait inside a coroutine created" ..
                " with coroutine.create or wrap; use tide.spawn")
           or ("'" .. fname .. "' must be called inside a task"), 4)
end

-- The task the caller runs in; raises when called outside a task. (The
-- error is built elsewhere: this frame lies under every parked task.)
local function current_task(fname)
  if parking then repair_park() end
  local co = cur_co
  if co and user_depth == 0 then return cur_task or co_task[co] or adopt(co) end
  not_in_task(co and user_depth > 0, fname)
end

local function wake(t, a, b, c)
  t.sending, t[WQ] = nil, false
  t[WSEQ] = t[WSEQ] + 1 -- entries of this wait in any queue are now stale
  t[ST] = "ready"
  if t[2] ~= 0 then disarm(t) end -- its wait's timer
  push_ready(t, a, b, c)
end

local function is_live(t, s) return t[ST] == "waiting" and t[WSEQ] == s end

-- wait queues: (task, wait sequence) pairs; an entry whose wait ended
-- (timed out, cancelled) is stale and skipped.

local function q_push(q, t, s)
  local n = q.t + 2
  q[n - 1], q[n], q.t = t, s, n
end

local function q_pop(q) -- the first live waiter, or nil
  local h = q.h
  while h < q.t do
    local t, s = q[h], q[h + 1]
    q[h], q[h + 1] = nil, nil
    h = h + 2
    if is_live(t, s) then
      if h > q.t then q.h, q.t, q.stale = 1, 0, 0 else q.h = h end
      return t, s
    end
  end
  q.h, q.t, q.stale = 1, 0, 0
  return nil
end

local function new_queue() return {h = 1, t = 0, stale = 0} end

-- The entry of t's wait leaves queue q: taken back when it is the last
-- one, else left stale and swept once stale entries are many.
local function q_leave(q, t)
  local n = q.t
  if q[n - 1] == t and q[n] == t[WSEQ] then
    q[n - 1], q[n] = nil, nil
    if n - 2 < q.h then q.h, q.t, q.stale = 1, 0, 0 else q.t = n - 2 end
    return
  end
  local stale = q.stale + 1
  if stale <= 32 or stale * 4 <= n - q.h + 1 then
    q.stale = stale
    return
  end
  local m = 0
  for i = q.h, n, 2 do
    local x, xs = q[i], q[i + 1]
    q[i], q[i + 1] = nil, nil
    if x ~= t and is_live(x, xs) then
      q[m + 1], q[m + 2] = x, xs
      m = m + 2
    end
  end
  q.h, q.t, q.stale = 1, m, 0
end

-- A wait that ends early (timeout, cancel) gives up its place or its call.
local function abandon(t)
  -- t[WQ]: the queue the task waits in, or an object whose close() cancels
  -- what it waits for (one field: a task's table stays small)
  local w = t[WQ]
  if w then
    t[WQ] = false
    if w.stale then q_leave(w, t) else w:close() end
  end
end

-- A wait called where a yield cannot pass (inside a function that C
-- calls: a table.sort comparator, a gsub function, a metamethod) fails in
-- its yield, with LuaJIT's "attempt to yield across C-call boundary",
-- after the wait marked the task as waiting. The task runs on; the next
-- wait, or the end of the task, undoes what that wait left (its state,
-- its place in a queue, the operation it waited for, its timeout). This
-- costs the waits nothing (a check of `parking`) where checking that a
-- yield can pass before every wait would cost a call.
function repair_park()
  local t = parking
  parking, park_timeout = nil, nil
  local st = t[ST]
  if st == "waiting" or st == "ready" then
    t[ST] = "running"
    t[WSEQ] = t[WSEQ] + 1 -- (its entries in queues are stale now)
    t.sending = nil
    local w = t[WQ]
    t[WQ] = false
    if w and not w.stale then w:close() end
  end
end

function on_timer(t)
  if t[ST] == "waiting" then
    abandon(t)
    wake(t, nil, "timed out", "ETIMEDOUT")
  end
end



local function raise_cancel(t)
  local e = t.cancel_err
  t.cancel_err = nil
  error(e, 0)
end



-- The common wait, in one frame (callers tail-call it: a parked task's
-- stack stays small): park the current task, in queue q if given, until
-- wake(); returns what wake() was given, without trailing nils.
local function park(q, timeout, fname, sending)
  local t = current_task(fname)
  if t.cancel_err then raise_cancel(t) end
  local s = t[WSEQ] + 1
  t[WSEQ] = s
  if q then
    local n = q.t + 2
    q[n - 1], q[n], q.t = t, s, n
    t[WQ] = q
  end
  if sending ~= nil then t.sending = sending end
  t[ST] = "waiting"
  park_timeout = timeout -- armed by after_resume
  parking = t
  local a, b, c = yield(PARK)
  if a == CANCEL then raise_cancel(t) end
  if b == nil then return a end
  if a == RESULTS then return unpack(b, 1, b.n) end -- (tide._complete)
  return a, b, c
end

local function finish_results(t, ok, ...)
  if ok then
    t[ST] = "done"
    local n = select("#", ...)
    if n > 0 then
      local r = {n = 0, ...} -- (a constant: see new_task)
      r.n = n
      t.results = r
    end
    return
  end
  local e = ...
  t.err = e
  if getmetatable(e) == Cancelled and e.task == t and not e.token then
    t[ST] = "cancelled"
  else
    t[ST] = "failed"
  end
end

local function main_failed(e)
  stderr:write("tide: ", safe_tostring(e), "\n")
  exiting = true
  C.exit(1)
end

-- f(t, arg) of tide._on_finish, once: whether f took the task's failure
-- on itself (returned true)
local function on_finish(t)
  local f, arg = t[FIN], t[FIN_ARG]
  t[FIN], t[FIN_ARG] = false, false
  local ok, e = pcall(f, t, arg)
  if not ok then report(e, t) end
  return ok and e == true
end

-- A job of runner co ended (t: its task, or nil for a callback, which may
-- have become one): ok and its results, or false and the error.
function finish(co, t, ok, ...)
  local adopted = co_task[co]
  if adopted then
    co_task[co] = nil
    t = adopted
  elseif not t then -- a callback that never became a task
    if not ok then report((...), nil) end
    return
  end
  ntasks = ntasks - 1
  t[CO] = false
  if t[2] ~= 0 then disarm(t) end
  t[FN] = false
  finish_results(t, ok, ...)
  local j, joined = t.joiners, false
  if j then
    t.joiners = nil
    while true do
      local w = q_pop(j)
      if not w then break end
      wake(w, true)
      joined = true
    end
  end
  local taken = t[FIN] and on_finish(t)
  if t.main and t[ST] ~= "done" then
    main_failed(t.err)
  elseif t[ST] == "failed" and not joined and not taken then
    report(t.err, t) -- nobody waits for it (a joiner may have given up)
  end
end

local function call_cb(cb)
  local n = cb[3]
  if n == 0 then return cb[1]() end
  return cb[1](unpack(cb, 5, n + 4))
end

local ONE = {} -- t[ARGS] of a task spawned with one argument (in t[4])
local OWN = {} -- the same, on a coroutine of its own (tide._spawn_own)

-- The body of such a coroutine: fn runs at the bottom of its stack (a tail
-- call), where a pooled runner's loop would put it 6 slots up.
local function own_body(fn, a) return fn(a) end

local function resume_task(t, a, b, c)
  if t[ST] ~= "ready" then return end -- cancelled before it started
  t[ST] = "running"
  local co, ok, r = t[CO]
  if not co then
    local args = t[ARGS]
    co = args == OWN and coroutine_create(own_body) or take_runner()
    t[CO] = co
    if args == ONE or args == OWN then
      -- the one argument waited in t[4], the delay of the task's own wait
      -- timer, which no wait has used yet
      local a1 = t[4]
      t[ARGS], t[4] = false, 0
      ok, r = run_in(co, t, t[FN], a1)
    elseif args then ok, r = run_in(co, t, call_task, t)
    else ok, r = run_in(co, t, t[FN]) end
  else
    ok, r = run_in(co, t, a, b, c)
  end
  after_resume(co, ok, r, t)
end

local function run_job(job)
  local co = take_runner()
  after_resume(co, run_in(co, nil, call_cb, job))
end

-- A batch runs callbacks from next_job() one after another in one runner,
-- without a resume per callback. When a callback waits, its runner becomes
-- its task and the batch goes on in another runner (run_batch); when that
-- callback ends later, its runner leaves the batch.
local stopped = false -- tide_stop was called: batches end after this callback

local function batch(next_job)
  local co = cur_co
  while not exiting and not stopped do
    local cb = next_job()
    if cb == nil then return end
    call_cb(cb) -- if it raises, this runner ends and run_batch goes on
    local t = co_task[co]
    if t then -- it became a task (it waited, or asked for tide.current())
      finish(co, nil, true)
      cur_task = nil -- (the runner goes on with the next callback)
      if t.detached then return end -- it waited: the batch went on elsewhere
    end
    if rq_head <= rq_tail then yield(DRAIN) end
  end
end

local drain

local function run_batch(next_job)
  while not exiting and not stopped do
    local co = take_runner()
    local ok, r = run_in(co, nil, batch, next_job)
    while ok and r == DRAIN do
      drain()
      ok, r = run_in(co, nil)
    end
    after_resume(co, ok, r)
    if ok then
      if r ~= PARK then break end -- the batch is over
      co_task[co].detached = true
    end
    drain() -- between this callback and the next
  end
  drain()
end

-- (tide_stop: true; the loop starting again: false)
local function stop_batches(on) stopped = on end

local draining = false
local only_callbacks = false -- exiting: close callbacks run, no task does

function drain()
  if draining then return end
  draining = true
  while rq_head <= rq_tail and not exiting and not only_callbacks do
    local h = rq_head
    local x, a, b, c = rq[h], rq[h + 1], rq[h + 2], rq[h + 3]
    rq[h], rq[h + 1], rq[h + 2], rq[h + 3] = nil, nil, nil, nil
    rq_head = h + 4
    if getmetatable(x) == Task then resume_task(x, a, b, c) else run_job(x) end
  end
  if rq_head > rq_tail then rq_head, rq_tail = 1, 0 end
  draining = false
end

-- entry points from the loop -------------------------------------------------------

-- fn(...) in a runner: a timer, immediate or close callback
local function run_task(fn, ...)
  local co = take_runner()
  after_resume(co, run_in(co, nil, call_cb, {fn, 0, select("#", ...), false, ...}))
  drain()
end

-- fn(...) in the main state: the scheduler's own callbacks, which never wait
local function run_direct(fn, ...)
  local ok, e = pcall(fn, ...)
  if not ok then stderr:write("tide: internal error: ", safe_tostring(e), "\n") end
  drain()
end

local function spawn(fn, ...)
  local n = select("#", ...)
  local t = new_task(fn, false, "ready")
  -- one argument goes straight to the runner's job(arg): no table, and no
  -- frame for unpacking it under the parked task
  if n == 1 then t[ARGS], t[4] = ONE, ... -- (t[4]: see resume_task)
  elseif n > 0 then
    local args = {n = 0, ...}
    args.n = n
    t[ARGS] = args
  end
  ntasks = ntasks + 1
  push_ready(t)
  return t
end

-- start(fn, main): a chunk loaded by tide_run_file and friends
local function start(fn, main)
  local t = spawn(fn)
  t.main = main or nil
  drain()
end

-- timers ------------------------------------------------------------------------
-- Every callback object (timer, immediate, close callback) is an array
-- {fn, state, nargs, extra, args...}, with no hash part: one allocation.
-- For a timer, state is its place in its list while armed (else 0) and
-- extra its delay in seconds; slot 0 (in the array part of any table with
-- one, so it costs no memory) holds its deadline while it is armed. `every`
-- timers have the Every metatable, with the same methods, and remember
-- their list in .list.
--
-- Constructors give the last array slot a constant ({fn, 0, 0, 0}, then
-- tm[4] = s): a table constant loaded from bytecode keeps only up to its
-- last constant slot, and a store past it would rehash every new table.
--
-- Timers of one delay wait in one FIFO list, as in Node: deadlines come
-- from the current clock, so appending keeps a list sorted, and starting a
-- timer costs no call into C. ltimer.c holds one C timer per list, armed
-- at the list's first deadline; the C timer structure orders the lists.
-- A stopped timer leaves a hole (false) in its list, skipped when reached,
-- and the list is compacted when holes outnumber timers.
--
-- Deadlines are nanoseconds since the host started, as doubles (exact for
-- 104 days, and still ordered after). A timer always waits at least 1 ns,
-- so one started in the timers phase is never due in the same pass.

local Timer = {}
Timer.__index = Timer
local Every = {__index = Timer}
local lists = {}  -- delay -> its shared list
local cslots = {} -- C timer slot -> list
local idle_lists = 0 -- empty lists kept in `lists`
local live_timers, armed_lists = 0, 0 -- for tide.stats()
local cur -- the list the timers phase is running (see next_timer)
local floor = math.floor

local function ns(s)
  if s > 1e9 then s = 1e9 end
  local n = floor(s * 1e9 + 0.5)
  return n < 1 and 1 or n
end

-- ts: the timers, holes are false; last: the deadline of the last timer
-- appended (the order check of the next one)
local function new_list(key)
  return {key = key, ts = {}, head = 1, tail = 0, last = 0, live = 0,
          refd = 0, cid = 0, holes = 0, idle = false}
end

-- Keeps the list's C timer at its first live deadline, referenced while
-- a referenced timer waits in it; lets the list go when it is empty.
local function list_sync(L)
  local ts, h, t = L.ts, L.head, L.tail
  while h <= t and not ts[h] do
    ts[h] = nil
    h = h + 1
    L.holes = L.holes - 1
  end
  L.head = h
  if h > t then
    if L.cid ~= 0 then
      C_stop(L.cid)
      cslots[L.cid] = nil
      L.cid = 0
      armed_lists = armed_lists - 1
    end
    L.head, L.tail, L.holes = 1, 0, 0
    -- an empty shared list stays for its next timer (a task sleeping in a
    -- loop), until many lie empty
    if L.key and not L.idle and lists[L.key] == L then
      L.idle = true
      idle_lists = idle_lists + 1
      if idle_lists > 64 then
        for k, x in pairs(lists) do
          if x.idle then lists[k] = nil; x.idle = false end
        end
        idle_lists = 0
      end
    end
    return
  end
  local id = C_start_at(L.cid, ts[h][0], L.refd > 0)
  if id < 0 then error("not enough memory", 0) end
  if L.cid == 0 then armed_lists = armed_lists + 1 end
  L.cid = id
  cslots[id] = L
end

local function list_of(tm)
  return tm.list or lists[tm[4]]
end

-- Appends tm with deadline d to the list of key (its delay).
local function add(tm, d, key)
  local L = lists[key]
  if not L then
    L = new_list(key)
    lists[key] = L
  elseif L.tail >= L.head and L.last > d then
    L = new_list(false) -- an `every` beat out of order: a list of its own
  elseif L.idle then
    L.idle = false -- an idle list back in use
    idle_lists = idle_lists - 1
  end
  local n = L.tail + 1
  L.ts[n], L.tail, L.last = tm, n, d
  tm[0], tm[2] = d, n
  live_timers = live_timers + 1
  local live = L.live + 1
  L.live = live
  if getmetatable(tm) == Every then tm.list = L end
  -- (the list the timers phase runs is synced when it is done with it)
  if tm.noref then
    if live == 1 and L ~= cur then list_sync(L) end
  else
    local refd = L.refd + 1
    L.refd = refd
    if (live == 1 or refd == 1) and L ~= cur then list_sync(L) end
  end
end

-- Takes tm out of its list (it leaves a hole).
local function remove(tm)
  local L = list_of(tm)
  local pos = tm[2]
  tm[2] = 0
  tm.list = nil
  live_timers = live_timers - 1
  L.ts[pos] = false
  L.live = L.live - 1
  L.holes = L.holes + 1
  local resync = L.live == 0
  if not tm.noref then
    L.refd = L.refd - 1
    resync = resync or L.refd == 0
  end
  if resync then
    list_sync(L)
  elseif L.holes > L.live + 32 then -- compact
    local ts, nts, n = L.ts, {}, 0
    for i = L.head, L.tail do
      local x = ts[i]
      if x then
        n = n + 1
        nts[n] = x
        x[2] = n
      end
    end
    L.ts, L.head, L.tail, L.holes, L.last = nts, 1, n, 0, nts[n][0]
  end
end

disarm = remove

function arm(tm, delay)
  if tm[2] ~= 0 then remove(tm) end
  tm[4] = delay
  -- a zero delay counts from the iteration's clock: due in the next pass,
  -- with no clock to read
  add(tm, C_clock(delay <= 0) + ns(delay), delay)
end

-- The timers phase: lt_pop gives the next list whose first deadline is
-- due; its due timers run until one of another list (or a C timer) comes
-- first, then the list's C timer moves to what remains.
local cur_now, cur_other, cur_ran = 0, 0, 0

-- Takes the due timer at the head of list L (the caller checked it).
local function take(L, h, tm, d)
  L.ts[h] = nil
  L.head = h + 1
  L.live = L.live - 1
  live_timers = live_timers - 1
  if not tm.noref then L.refd = L.refd - 1 end
  tm[2] = 0
  if tm.list then -- every: the next beat, without drift
    tm.list = nil
    local iv = ns(tm[4])
    local nd = d + iv
    if nd <= cur_now then nd = nd + (floor((cur_now - nd) / iv) + 1) * iv end
    add(tm, nd, tm[4])
  end
  cur_ran = cur_ran + 1
  return tm
end

-- The slow path of next_timer: skips holes, moves to the next due list.
local function next_timer_slow()
  while true do
    local L = cur
    if L then
      local ts = L.ts
      local h = L.head
      while h <= L.tail do
        local tm = ts[h]
        if tm then
          local d = tm[0]
          if d > cur_now or d > cur_other then break end
          return take(L, h, tm, d)
        end
        ts[h] = nil
        h = h + 1
        L.head = h
        L.holes = L.holes - 1
      end
      cur = nil
      list_sync(L)
    end
    local id, now, other = C_pop()
    if id == 0 then return nil end
    L = cslots[id]
    cslots[id] = nil
    L.cid = 0
    armed_lists = armed_lists - 1
    cur, cur_now, cur_other = L, now, other
    if cur_other < 0 then cur_other = huge end
  end
end

-- Without a loop of its own, so that the JIT compiles it into the batch's.
local function next_timer()
  local L = cur
  if L then
    local h = L.head
    local tm = L.ts[h]
    if tm then
      local d = tm[0]
      if d <= cur_now and d <= cur_other then return take(L, h, tm, d) end
    end
  end
  return next_timer_slow()
end

-- returns how many timers ran, for tide.stats()
local function run_timers()
  cur_ran = 0
  run_batch(next_timer)
  if cur then -- stopped early (tide.exit): keep the rest armed
    local L = cur
    cur = nil
    list_sync(L)
  end
  return cur_ran
end

function new_timer(fn, arg)
  local tm = setmetatable({fn, 0, 1, 0, false}, Timer)
  tm[5] = arg
  return tm
end

local function start_timer(fname, s, fn, mt, ...)
  if type(s) ~= "number" then
    argerror(1, fname, "number expected, got " .. type(s))
  end
  if s ~= s or s == huge or s == -huge then
    argerror(1, fname, "seconds must be a finite number")
  end
  if mt == Every and s <= 0 then
    argerror(1, fname, "interval must be positive")
  end
  check_function(fn, 2, fname)
  if s < 0 then s = 0 end
  local n = select("#", ...)
  local tm
  if n == 0 then tm = setmetatable({fn, 0, 0, 0}, mt)
  else tm = setmetatable({fn, 0, 0, 0, ...}, mt); tm[3] = n end
  tm[4] = s
  add(tm, (s > 0 and lt_clock(H) or lt_cached(H)) + ns(s), s)
  return tm
end

function tide.after(s, fn, ...)
  -- the common case inline: no arguments, a positive delay, a list of
  -- that delay already waiting (appending keeps it sorted)
  if type(s) == "number" and s > 0 and s <= 1e9 and type(fn) == "function"
     and select("#", ...) == 0 then
    local tm = setmetatable({fn, 0, 0, 0}, Timer)
    tm[4] = s
    local d = lt_clock(H) + ns(s)
    local L = lists[s]
    if L and L.live > 0 then
      if L.last <= d then
        local n = L.tail + 1
        L.ts[n], L.tail, L.last = tm, n, d
        tm[0], tm[2] = d, n
        live_timers = live_timers + 1
        L.live = L.live + 1
        local refd = L.refd + 1
        L.refd = refd
        if refd == 1 and L ~= cur then list_sync(L) end
        return tm
      end
    end
    add(tm, d, s)
    return tm
  end
  return start_timer("after", s, fn, Timer, ...)
end
function tide.every(s, fn, ...) return start_timer("every", s, fn, Every, ...) end

local function check_timer(tm, fname, open)
  local mt = getmetatable(tm)
  if mt ~= Timer and mt ~= Every then
    error(("bad argument #1 to '%s' (timer expected, got %s)"):format(
      fname, type(tm)), 3)
  end
  if open and tm.closed then error("attempt to use a closed timer", 3) end
end

function Timer:stop()
  check_timer(self, "stop")
  if self[2] ~= 0 then remove(self) end
end

-- again([s]): restart from now, with a new delay (interval) if given
function Timer:again(s)
  check_timer(self, "again", true)
  local d = self[4]
  if s ~= nil then
    d = check_seconds(s, 2, "again")
    if getmetatable(self) == Every and d <= 0 then
      argerror(2, "again", "interval must be positive")
    end
  end
  arm(self, d)
end

function Timer:active()
  check_timer(self, "active")
  return self[2] ~= 0
end

local function timer_ref(tm, want)
  if tm[2] ~= 0 and (not tm.noref) ~= want then
    local L = list_of(tm)
    L.refd = L.refd + (want and 1 or -1)
    if L.refd == (want and 1 or 0) then list_sync(L) end
  end
  tm.noref = (not want) or nil
  return tm
end

function Timer:ref() check_timer(self, "ref", true); return timer_ref(self, true) end
function Timer:unref() check_timer(self, "unref", true); return timer_ref(self, false) end

function Timer:__tostring()
  return ("tide.timer (%s)"):format(self.closed and "closed" or
    self[2] ~= 0 and "active" or "idle")
end
Every.__tostring = Timer.__tostring

-- close callbacks: {fn, 0, 1, false, handle}, run in the close phase
local cq, cq_head, cq_tail = {}, 1, 0

local function close_later(fn, handle)
  cq_tail = cq_tail + 1
  local cb = {fn, 0, 1, false, false}
  cb[5] = handle
  cq[cq_tail] = cb
  if cq_tail == cq_head then close_arm(H) end
end

local cq_last = 0

local cq_ran = 0

local function next_close()
  if cq_head > cq_last then return nil end
  cq_ran = cq_ran + 1
  local cb = cq[cq_head]
  cq[cq_head] = nil
  cq_head = cq_head + 1
  return cb
end

-- returns how many callbacks ran, for tide.stats()
local function run_closing()
  cq_last, cq_ran = cq_tail, 0
  -- close callbacks run even while exiting (tide.exit promises them), but
  -- then nothing they wake runs
  local was = exiting
  exiting, only_callbacks = false, was
  run_batch(next_close)
  exiting, only_callbacks = was, false
  if cq_head > cq_tail then cq_head, cq_tail = 1, 0
  else close_arm(H) end
  return cq_ran
end

-- close([fn]): stop for good; fn(timer) runs in the close phase
function Timer:close(fn)
  check_timer(self, "close")
  if self.closed then return end
  if fn ~= nil then check_function(fn, 1, "close") end
  self:stop()
  self.closed = true
  if fn then close_later(fn, self) end
end

-- immediates ---------------------------------------------------------------------
-- {fn, queued, nargs, false, args...}; the check phase runs those queued before it
-- started, FIFO.

local Immediate = {}
Immediate.__index = Immediate
local iq, iq_head, iq_tail = {}, 1, 0
local iq_live, iq_refd = 0, 0 -- queued and not stopped; of them referenced

local iq_last = 0 -- the last immediate of this check phase
local iq_ran = 0

local function next_immediate()
  local h = iq_head
  if h <= iq_last then
    local m = iq[h]
    iq[h] = nil
    iq_head = h + 1
    if m[2] then
      m[2] = false
      iq_live = iq_live - 1
      if not m.noref then iq_refd = iq_refd - 1 end
      iq_ran = iq_ran + 1
      return m
    end
    return next_immediate() -- (a cancelled one: the next)
  end
  return nil
end

-- The C node that makes the check phase call run_immediates is kept in
-- step with the queue, calling C only when its state changes.
local node_on, node_ref, in_check = false, false, false

local function sync_node()
  if in_check then return end -- run_immediates syncs when it ends
  local on, ref = iq_live > 0, iq_refd > 0
  if on ~= node_on or (on and ref ~= node_ref) then
    node_on, node_ref = on, ref
    C_imm_set(iq_live, iq_refd)
  end
end

-- returns how many immediates ran, for tide.stats()
-- The loop took the node off its queue to call this; it puts it back as
-- the second and third results say (queued, referenced immediates).
local function run_immediates()
  iq_last, iq_ran, in_check = iq_tail, 0, true
  run_batch(next_immediate)
  in_check = false
  if iq_head > iq_tail then iq_head, iq_tail = 1, 0 end
  node_on, node_ref = iq_live > 0, iq_refd > 0
  return iq_ran, iq_live, iq_refd
end

function tide.immediate(fn, ...)
  check_function(fn, 1, "immediate")
  local n = select("#", ...)
  local m
  if n == 0 then m = setmetatable({fn, true, 0, false}, Immediate)
  else m = setmetatable({fn, true, n, false, ...}, Immediate) end
  iq_tail = iq_tail + 1
  iq[iq_tail] = m
  iq_live, iq_refd = iq_live + 1, iq_refd + 1
  if not (node_on and node_ref) then sync_node() end
  return m
end

local check_imm = self_checker(Immediate, "immediate")

function Immediate:stop()
  check_imm(self, "stop")
  if self[2] then
    self[2] = false
    iq_live = iq_live - 1
    if not self.noref then iq_refd = iq_refd - 1 end
    sync_node()
  end
end
-- close([fn]): stop for good; fn(immediate) runs in the close phase
function Immediate:close(fn)
  check_imm(self, "close")
  if fn ~= nil then check_function(fn, 1, "close") end
  if self.closed then return end
  self:stop()
  self.closed = true
  if fn then close_later(fn, self) end
end

function Immediate:active()
  check_imm(self, "active")
  return self[2] == true
end

local function imm_ref(m, want)
  if m[2] and (not m.noref) ~= want then
    iq_refd = iq_refd + (want and 1 or -1)
    sync_node()
  end
  m.noref = (not want) or nil
  return m
end

function Immediate:ref() check_imm(self, "ref"); return imm_ref(self, true) end
function Immediate:unref() check_imm(self, "unref"); return imm_ref(self, false) end

-- blocking calls (host/request.c) ------------------------------------------------
-- A request is a pool job the calling task waits on; the task holds it as
-- its wait's clean-up, so a timeout or cancel closes it.

local req_task = setmetatable({}, {__mode = "k"}) -- request -> waiting task

-- (the loop thread, when the job is done) wakes the waiting task
local function complete(req, ...)
  local t = req_task[req]
  if not t then return end
  req_task[req] = nil
  if t[ST] == "waiting" and t[WQ] == req then
    -- one to three results go straight to the task, more (or none) in
    -- a table
    local n = select("#", ...)
    if n > 0 and n < 4 then wake(t, ...)
    else
      local r = {n = 0, ...}
      r.n = n
      wake(t, RESULTS, r)
    end
  end
end

-- Waits for request req in the current task: its results, or nil,
-- "timed out", "ETIMEDOUT".
local function await(req, timeout, fname)
  -- A wait that cannot begin (outside a task, or in a task cancelled
  -- before it parks) closes req first, so that what req holds for the
  -- wait (a socket operation, a queued job) does not outlive it.
  if not cur_co or user_depth > 0 then req:close() end
  local t = current_task(fname)
  if t.cancel_err then
    req:close()
    raise_cancel(t)
  end
  req_task[req] = t
  t[WQ] = req
  return park(nil, timeout, fname) -- (a tail call: no frame of ours stays)
end
-- For C modules' own waits (a socket's readiness, say): the task waits on
-- an object with a close() method (called when the wait times out or the
-- task is cancelled) until tide._complete(obj, ...) hands it the results.
tide._await = await
tide._complete = complete
-- the argument checks every module shares
tide._argerror, tide._describe = argerror, describe
tide._optional_seconds = optional_seconds
-- tide.spawn(fn, arg) for a task that may stay parked for long (a
-- server's handler of a connection): its coroutine is its own, not a
-- pooled runner, and fn runs at the bottom of that coroutine's stack, so
-- that a task parked with a few frames keeps the 47 stack slots LuaJIT
-- gives a coroutine (the JIT's traces want more room above a deeper
-- start). Only its first result is kept. A coroutine per task: for
-- short-lived tasks tide.spawn, which reuses runners, is cheaper.
function tide._spawn_own(fn, arg)
  local t = spawn(fn, arg)
  t[ARGS] = OWN
  return t
end
-- fn(task, arg) runs when task ends (returns, fails or is cancelled),
-- before its error is reported; for modules, such as a server closing the
-- connection (arg) of a handler task. When fn returns true, the failure
-- is its to deal with, and is not reported.
function tide._on_finish(t, fn, arg) t[FIN], t[FIN_ARG] = fn, arg end
-- whether e is a cancellation (tide.plugin keeps them from plugins' pcall)
function tide._is_cancel(e) return getmetatable(e) == Cancelled end
-- tostring(v) that cannot raise (nor wait): for error objects
tide._safe_tostring = safe_tostring
-- f(co) before each resume of a task or runner and, when it returned
-- true, f(false) after it (for tide.plugin's CPU budgets); nil removes it
function tide._slice_hook(f)
  slice_hook = f
  run_in = f and hooked_run_in or plain_run_in
end
-- tide_call (host/host.c): fn(...) as a task, run at once when called
-- from the loop (in a runner, as callbacks are: no task object unless it
-- waits); from inside Lua it waits in the ready queue, which is drained
-- before the running callback returns to the loop
function tide._call(fn, ...)
  if cur_co or draining then
    spawn(fn, ...)
  else
    run_task(fn, ...)
  end
end

-- the function tide_push_blocking gives C modules
-- (the start function is called through a local of the call's name, so
-- that its argument errors name the call, as luaL_argerror takes the name
-- from the calling code)
local function blocking(start, name)
  if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
    name = "start"
  end
  return assert(loadstring(([[
    local %s, await, current_task, pcall, error, pos = ...
    local function started(ok, req, ...)
      if ok then return req end
      if type(req) == "string" then -- (called through pcall, it has no name)
        req = req:gsub(pos, "", 1):gsub("^(bad argument #%%d+ to )'%%?'", "%%1'%s'")
      end
      error(req, 3) -- at the caller's line
    end
    return function(...)
      current_task(%q)
      return await(started(pcall(%s, ...)), nil, %q)
    end]]):format(name, name, name, name, name), "=" .. name))(
      start, await, current_task, pcall, error, "^" .. name .. ":%d+: ")
end

C.set_runners(run_task, run_direct, start, run_timers, run_immediates,
              run_closing, complete, blocking, stop_batches)

-- Coroutines a script makes run inside its task. A wait inside one cannot
-- park the task, so it raises a clear error; user_depth tells waits. The
-- resume is protected: it may raise (too many values for the coroutine's
-- stack) and user_depth must come down all the same. Nesting is limited:
-- LuaJIT's nested resumes use the C stack with no check of their own, and
-- some 100,000 of them crash the process.
local MAX_NESTING = 200
local NESTED = "coroutines nested too deeply (more than 200)"

local function leave(pok, ...)
  user_depth = user_depth - 1
  if pok then return ... end
  return false, (...)
end

function coroutine.resume(co, ...)
  if type(co) ~= "thread" then return resume(co, ...) end -- its error
  if user_depth >= MAX_NESTING then return false, NESTED end
  user_depth = user_depth + 1
  return leave(pcall(resume, co, ...))
end

local function leave_wrap(pok, ok, ...)
  user_depth = user_depth - 1
  if not pok then error(ok, 0) end -- (the resume itself raised)
  if ok then return ... end
  error((...), 0)
end

function coroutine.wrap(f)
  local co = coroutine_create(f)
  return function(...)
    if user_depth >= MAX_NESTING then error(NESTED, 2) end
    user_depth = user_depth + 1
    return leave_wrap(pcall(resume, co, ...))
  end
end

-- the core API ------------------------------------------------------------------

function tide.spawn(fn, ...)
  check_function(fn, 1, "spawn")
  return spawn(fn, ...)
end

function tide.next(fn, ...)
  check_function(fn, 1, "next")
  push_ready({fn, 0, select("#", ...), false, ...})
end

function tide.current()
  if parking then repair_park() end
  local co = cur_co
  if not co then return nil end
  return cur_task or co_task[co] or adopt(co)
end

-- The id of the running task, or nil in a callback that is not one (it
-- does not make the callback a task, as tide.current does); for tide.log.
function tide._task_id()
  local t = cur_task or cur_co and co_task[cur_co]
  return t and t[ID] or nil
end

function tide.sleep(s)
  s = check_seconds(s, 1, "sleep")
  current_task("sleep") -- (here, so that its error names the caller's line)
  park(nil, s, "sleep")
end

function tide.yield()
  local t = current_task("yield")
  if t.cancel_err then raise_cancel(t) end
  t[ST] = "waiting"
  wake(t)
  parking = t
  local a = yield(PARK)
  if a == CANCEL then raise_cancel(t) end
end

local cancel

local function timeout_fire(scope)
  if scope.active then cancel(scope.task, nil, scope.token) end
end

local function timeout_result(scope, ok, ...)
  scope.active = false
  scope.timer:stop()
  local t = scope.task
  local pending = t.cancel_err
  if pending and pending.token == scope.token then t.cancel_err = nil end
  if ok then return true, ... end
  local e = ...
  if getmetatable(e) == Cancelled and e.token == scope.token then
    return nil, "timed out", "ETIMEDOUT"
  end
  error(e, 0)
end

function tide.timeout(s, fn, ...)
  s = check_seconds(s, 1, "timeout")
  check_function(fn, 2, "timeout")
  local t = current_task("timeout")
  local scope = {task = false, token = false, active = true, timer = false}
  scope.task, scope.token = t, {}
  scope.timer = new_timer(timeout_fire, scope)
  arm(scope.timer, s)
  return timeout_result(scope, pcall(fn, ...))
end

function tide.on_error(fn)
  if fn ~= nil then check_function(fn, 1, "on_error") end
  error_handler = fn
end

function tide.exit(code)
  local tc = type(code)
  if code ~= nil and tc ~= "number" and tc ~= "boolean" then
    argerror(1, "exit", "number or boolean expected, got " .. tc)
  end
  C.exit(code)
  exiting = true
  local co = cur_co
  if co and user_depth == 0 then
    -- park for good: the loop stops after this callback
    if parking then repair_park() end
    local t = cur_task or co_task[co] or adopt(co)
    t[ST] = "waiting"
    t[WSEQ] = t[WSEQ] + 1
    yield(PARK)
  end
end

function tide.stats()
  local s = C.stats()
  s.tasks = ntasks
  s.immediates = iq_live
  s.timers = live_timers + s.timers - armed_lists -- Lua's, and C modules'
  s.jit_bad_traces = jitguard.found
  return s
end

local function on_readable(t)
  if t[ST] == "waiting" then wake(t, true) end
end

-- Waits until descriptor fd is readable (used by the REPL).
function tide._wait_readable(fd, timeout)
  local t = current_task("_wait_readable")
  local w = C.when_readable(fd, on_readable, t)
  if not w then return true end -- a regular file: readable, never waits
  t[WQ] = w
  local ok, msg, code = park(nil, timeout, "_wait_readable")
  w:close()
  return ok, msg, code
end

tide.version = C.version
function tide.now() return lt_now(H) end
tide.time, tide.hrtime = C.time, C.hrtime
tide.phase = C.phase

-- task methods ------------------------------------------------------------------------

local check_task = self_checker(Task, "task")

local finished = {done = true, failed = true, cancelled = true}

local function task_results(t)
  if t[ST] == "done" then
    local r = t.results
    if r then return true, unpack(r, 1, r.n) end
    return true
  elseif t[ST] == "cancelled" then
    return nil, tostring(t.err), "ECANCELED"
  end
  return nil, t.err
end

function Task:join(timeout)
  check_task(self, "join")
  timeout = check_seconds(timeout, 2, "join", true)
  if not finished[self[ST]] then
    local me = current_task("join")
    if me == self then error("a task cannot join itself", 2) end
    local j = self.joiners
    if not j then j = new_queue(); self.joiners = j end
    local ok, msg, code = park(j, timeout, "join")
    if not ok then return nil, msg, code end
  end
  return task_results(self)
end

function cancel(t, reason, token)
  local st = t[ST]
  if finished[st] then return false end
  local e = setmetatable({task = false, reason = false, token = false}, Cancelled)
  e.task, e.reason, e.token = t, reason, token
  if st == "waiting" then
    t.cancel_err = e
    abandon(t)
    wake(t, CANCEL)
  elseif st == "ready" and not t[CO] then
    -- never started: it ends now, without running
    ntasks = ntasks - 1
    t[FN], t[ARGS], t[4] = false, false, 0
    t[ST], t.err = "cancelled", e
    if t[FIN] then on_finish(t) end
    local j = t.joiners
    t.joiners = nil
    if j then
      while true do
        local w = q_pop(j)
        if not w then break end
        wake(w, true)
      end
    end
  else
    t.cancel_err = e -- raised at its next wait
  end
  return true
end

function Task:cancel(reason)
  check_task(self, "cancel")
  return cancel(self, reason)
end

function Task:status()
  check_task(self, "status")
  return self[ST]
end

function Task:__tostring()
  return ("tide.task %d (%s)"):format(self[ID], self[ST])
end

Cancelled.__index = Cancelled
function Cancelled:__tostring()
  if self.token then return "timed out" end
  if self.reason ~= nil then return "cancelled: " .. tostring(self.reason) end
  return "cancelled"
end

-- channels ----------------------------------------------------------------------------


local Channel = {}
Channel.__index = Channel

function tide.channel(capacity)
  if capacity == nil then capacity = 0 end
  if type(capacity) ~= "number" or capacity < 0 or capacity % 1 ~= 0 then
    argerror(1, "channel", "capacity must be a non-negative integer")
  end
  local ch = setmetatable({cap = 0, n = 0, bh = 1, buf = false, recvq = false,
                           sendq = false, closed = false}, Channel)
  ch.cap, ch.buf, ch.recvq, ch.sendq = capacity, {}, new_queue(), new_queue()
  return ch
end

local check_channel = self_checker(Channel, "channel")

function Channel:send(v, timeout)
  check_channel(self, "send")
  if v == nil then argerror(2, "send", "value expected, got nil") end
  timeout = check_seconds(timeout, 3, "send", true)
  if self.closed then error("send on a closed channel", 2) end
  local r = q_pop(self.recvq)
  if r then wake(r, v); return true end
  if self.n < self.cap then
    self.buf[self.bh + self.n] = v
    self.n = self.n + 1
    return true
  end
  return park(self.sendq, timeout, "send", v)
end

function Channel:recv(timeout)
  check_channel(self, "recv")
  timeout = check_seconds(timeout, 2, "recv", true)
  if self.n > 0 then
    local bh = self.bh
    local v = self.buf[bh]
    self.buf[bh] = nil
    self.bh, self.n = bh + 1, self.n - 1
    local st = q_pop(self.sendq) -- a waiting sender takes the freed slot
    if st then
      self.buf[self.bh + self.n] = st.sending
      self.n = self.n + 1
      wake(st, true) -- (wake clears st.sending)
    elseif self.n == 0 then
      self.bh = 1
    end
    return v
  end
  local st = q_pop(self.sendq) -- rendezvous
  if st then
    local v = st.sending
    wake(st, true)
    return v
  end
  if self.closed then return nil, "closed", "EPIPE" end
  return park(self.recvq, timeout, "recv")
end

function Channel:close()
  check_channel(self, "close")
  if self.closed then return end
  self.closed = true
  while true do
    local t = q_pop(self.recvq)
    if not t then break end
    wake(t, nil, "closed", "EPIPE")
  end
  while true do
    local t = q_pop(self.sendq)
    if not t then break end
    wake(t, nil, "closed", "EPIPE")
  end
end

-- how many values are buffered (LuaJIT ignores __len on tables)
function Channel:count() return self.n end

-- semaphores ------------------------------------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore

function tide.semaphore(n)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    argerror(1, "semaphore", "count must be a non-negative integer")
  end
  local sem = setmetatable({count = 0, q = false}, Semaphore)
  sem.count, sem.q = n, new_queue()
  return sem
end

local check_sem = self_checker(Semaphore, "semaphore")

function Semaphore:acquire(timeout)
  check_sem(self, "acquire")
  timeout = check_seconds(timeout, 2, "acquire", true)
  if self.count > 0 then
    self.count = self.count - 1
    return true
  end
  return park(self.q, timeout, "acquire")
end

function Semaphore:release()
  check_sem(self, "release")
  local t = q_pop(self.q)
  if t then wake(t, true) -- the permit passes straight to the waiter
  else self.count = self.count + 1 end
end

-- conditions ------------------------------------------------------------------------

local Cond = {}
Cond.__index = Cond

function tide.cond()
  local c = setmetatable({q = false}, Cond)
  c.q = new_queue()
  return c
end

local check_cond = self_checker(Cond, "condition")

function Cond:wait(timeout)
  check_cond(self, "wait")
  return park(self.q, check_seconds(timeout, 2, "wait", true), "wait")
end

function Cond:signal()
  check_cond(self, "signal")
  local t = q_pop(self.q)
  if t then wake(t, true); return true end
  return false
end

function Cond:broadcast()
  check_cond(self, "broadcast")
  local n = 0
  while true do
    local t = q_pop(self.q)
    if not t then return n end
    wake(t, true)
    n = n + 1
  end
end

-- tide.stdin, tide.stdout, tide.stderr: streams made on first use
-- (lua/tide/stdio.lua), so that a script that never uses them pays nothing
setmetatable(tide, {__index = function(_, k)
  if k == "stdin" or k == "stdout" or k == "stderr" then
    return require("tide.stdio")[k]
  end
end})

return tide
end
