-- spec/automate_spec.lua - examples/automate.lua end to end: a child tide
-- runs it with a config in a temporary folder; its job results reach an
-- HTTP server here; writing a file into a watched folder runs a command;
-- SIGHUP applies a new config (and keeps the old one when the new one is
-- broken); SIGTERM ends it with status 0. The test follows the example
-- through its JSON log lines on stderr, never by sleeping.

local S = require "spec.support"
local fs = require "tide.fs"
local http = require "tide.http"
local json = require "tide.json"
local process = require "tide.process"

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(fs.mkdir(path))
  return path
end

-- A running example: its log lines and the reports it posted, each read
-- by a task into a channel so the test can wait for the next one.
local function start(conf_text, conf_name)
  local dir = tmpdir()
  local conf = dir .. "/" .. (conf_name or "jobs.conf.lua")
  assert(fs.write_file(conf, conf_text))
  local env = process.environ()
  env.TIDE_LOG_FORMAT = "json"
  local child = S.reap(assert(process.spawn{S.TIDE, "examples/automate.lua", conf,
                                             env = env, stderr = "pipe", stdout = "null"}))
  local lines = tide.channel(1000)
  local raw = {}
  tide.spawn(function()
    while true do
      local line = child.stderr:read_line()
      if not line then break end
      raw[#raw + 1] = line
      local v = json.decode(line)
      lines:send(v or {msg = "(not JSON) " .. line})
    end
    lines:close()
  end)
  local ex = {child = child, dir = dir, conf = conf, lines = lines, raw = raw}
  -- waits for the next log line whose msg is `msg` (and whose fields
  -- match `fields`), skipping the others
  function ex.expect(msg, fields, timeout)
    local deadline = tide.now() + (timeout or 10)
    while true do
      local v = lines:recv(math.max(0.001, deadline - tide.now()))
      if not v then
        error(("no log line %q; saw:\n%s"):format(msg, table.concat(raw, "\n")), 2)
      end
      local ok = v.msg == msg
      for k, want in pairs(fields or {}) do ok = ok and v[k] == want end
      if ok then return v end
    end
  end
  return ex
end

describe("examples/automate.lua", function()
  after_each(S.reap_all)
  local dog, server, reports, ex
  before_each(function()
    dog = S.watchdog("automate_spec")
    reports = tide.channel(100)
    server = assert(http.serve{host = "127.0.0.1", port = 0, handler = function(req)
      local body = json.decode(req:body())
      reports:send(body)
      return 204
    end})
  end)
  after_each(function()
    if ex and ex.child then ex.child:kill("KILL"); ex.child:wait(5) end
    if ex then os.execute("rm -rf " .. S.shell_quote(ex.dir)) end
    ex = nil
    server:close()
    dog:close()
  end)

  local function next_report(job)
    while true do
      local r = assert(reports:recv(10), "no report for " .. job)
      if r.job == job then return r end
    end
  end

  it("runs jobs on time, reports them, reacts to files, reloads and stops", function()
    local watched = tmpdir()
    local url = ("http://127.0.0.1:%d/results"):format(server.port)
    ex = start(([[
      return {
        report_url = %q,
        jobs = {{name = "tick", every = 0.05, run = {"echo", "tick output"}}},
        watches = {{name = "inbox", path = %q, debounce = 0.05,
                    run = {"sh", "-c", "echo saw $CHANGED"}}},
      }]]):format(url, watched))
    ex.expect("ready", {jobs = 1, watches = 1})

    local r = next_report("tick")
    assert.equal(0, r.code)
    assert.equal("tick output\n", r.stdout)

    -- a file written into the watched folder runs the watch's command
    assert(fs.write_file(watched .. "/new.txt", "data"))
    r = next_report("inbox")
    assert.equal(0, r.code)
    assert.equal("new.txt", r.changed)
    assert.equal("saw new.txt\n", r.stdout)

    -- SIGHUP with a new config: the new job runs, the old one stops
    assert(fs.write_file(ex.conf, ([[
      return {report_url = %q,
              jobs = {{name = "tock", every = 0.05, run = {"sh", "-c", "exit 3"}}}}
    ]]):format(url)))
    assert(ex.child:kill("HUP"))
    ex.expect("config reloaded", {jobs = 1, watches = 0})
    r = next_report("tock")
    assert.equal(3, r.code)

    -- a broken config is refused and the old one keeps running
    assert(fs.write_file(ex.conf, "return {jobs = {{name = 'x', every = -1, run = {'true'}}}}"))
    assert(ex.child:kill("HUP"))
    local v = ex.expect("config rejected, keeping the old one")
    assert.matches("every must be a positive number", v.err)
    while reports:recv(0) do end -- drop reports from before
    assert.equal("tock", next_report("tock").job)

    -- SIGTERM: a graceful stop, status 0
    assert(ex.child:kill("TERM"))
    ex.expect("stopped")
    local code = ex.child:wait(10)
    assert.equal(0, code)
    ex.child = nil
    os.execute("rm -rf " .. S.shell_quote(watched))
  end)

  it("waits for a running job on SIGTERM, and exits at once on a second signal", function()
    ex = start([[
      return {grace = 30,
              jobs = {{name = "slow", every = 0.01, run = {"sleep", "3"}}}}]])
    ex.expect("ready")
    -- the job has started once its beat was skipped for still running
    ex.expect("still running, beat skipped", {job = "slow"})
    assert(ex.child:kill("TERM"))
    ex.expect("stopping", {running = 1})
    assert(ex.child:kill("INT"))
    ex.expect("second signal, exiting now")
    local code = ex.child:wait(10)
    assert.equal(1, code)
    ex.child = nil
  end)

  it("takes a JSON config, and refuses to start on a broken one", function()
    ex = start(json.encode({jobs = {{name = "j", every = 0.05, run = {"true"}}}}),
               "jobs.json")
    ex.expect("ready", {jobs = 1})
    ex.expect("job done", {job = "j", code = 0})
    assert(ex.child:kill("TERM"))
    assert.equal(0, (ex.child:wait(10)))
    os.execute("rm -rf " .. S.shell_quote(ex.dir))

    ex = start("return {jobs = {{name = 'j', run = {'true'}}}}")
    local v = ex.expect("cannot load config")
    assert.matches("every must be a positive number", v.err)
    assert.equal(1, (ex.child:wait(10)))
    ex.child = nil
  end)
end)
