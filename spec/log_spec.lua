-- spec/log_spec.lua - tide.log (API.md, "Other modules"): levels, fields,
-- text and JSON lines, child loggers, the environment, stderr.

local S = require "spec.support"
local log = require "tide.log"
local json = require "tide.json"

local lines, saved

local function capture(opts)
  lines = {}
  opts = opts or {}
  opts.output = function(line) lines[#lines + 1] = line end
  saved = log.configure(opts)
end

local function restore()
  saved.output = saved.output or false
  saved.fields = saved.fields or {}
  log.configure(saved)
end

describe("tide.log", function()
  after_each(function() if saved then restore(); saved = nil end end)

  it("writes text lines with a timestamp, the level, the message and sorted fields", function()
    capture{format = "text", level = "info"}
    log.info("listening", {port = 8080, host = "0.0.0.0", note = "two words"})
    assert.equal(1, #lines)
    local line = lines[1]
    local stamp, rest = line:match("^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ) (.*)\n$")
    assert.is_string(stamp, line)
    assert.equal('INFO listening host=0.0.0.0 note="two words" port=8080 task=' ..
                 tide.current().id, rest)
  end)

  it("stamps lines with the current UTC time", function()
    capture{format = "json"}
    local before = os.time()
    log.info("now")
    local stamp = json.decode(lines[1]).time
    local y, mo, d, h, mi, s = stamp:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
    local t = os.time{year = y, month = mo, day = d, hour = h, min = mi, sec = s}
    -- os.time reads its table as local time; correct it to UTC
    local utc_offset = os.time() - os.time(os.date("!*t"))
    assert.truthy(math.abs(t + utc_offset - before) <= 2, stamp)
  end)

  it("filters by level", function()
    capture{level = "warn"}
    log.debug("d"); log.info("i"); log.warn("w"); log.error("e")
    assert.equal(2, #lines)
    assert.matches(" WARN w", lines[1])
    assert.matches(" ERROR e", lines[2])
    assert.is_false(log.enabled("info"))
    assert.is_true(log.enabled("error"))
    log.configure{level = "debug"}
    log.debug("d")
    assert.equal(3, #lines)
    assert.matches(" DEBUG d", lines[3])
  end)

  it("writes JSON lines that decode, with typed fields", function()
    capture{format = "json", level = "info"}
    log.error("boom", {err = 'a"b\nc\1', n = 3, ratio = 0.25, ok = true})
    assert.equal("\n", lines[1]:sub(-1))
    local v = assert(json.decode(lines[1]))
    assert.equal("error", v.level)
    assert.equal("boom", v.msg)
    assert.equal('a"b\nc\1', v.err)
    assert.equal(3, v.n)
    assert.equal(0.25, v.ratio)
    assert.is_true(v.ok)
    assert.equal(tide.current().id, v.task)
  end)

  it("keeps a field named like a line key under a prefixed name", function()
    capture{format = "json"}
    log.info("real", {msg = "field", level = 9})
    local v = json.decode(lines[1])
    assert.equal("real", v.msg)
    assert.equal("info", v.level)
    assert.equal("field", v._msg)
    assert.equal(9, v._level)
  end)

  it("names the task that logged", function()
    capture{format = "json"}
    local t = tide.spawn(function() log.info("inside") end)
    t:join()
    local v = json.decode(lines[1])
    assert.equal(t.id, v.task)
    assert.are_not.equal(tide.current().id, v.task)
  end)

  it("adds no task to a line from a timer callback that is not a task", function()
    capture{format = "json"}
    local done = tide.cond()
    tide.after(0, function() log.info("tick"); done:signal() end)
    done:wait(5)
    assert.is_nil(json.decode(lines[1]).task)
  end)

  it("adds configured and child-logger fields to every line", function()
    capture{format = "json", fields = {service = "demo"}}
    local db = log.with{component = "db"}
    local q = db.with{query = 7}
    db.info("a")
    q.warn("b", {rows = 2})
    local a, b = json.decode(lines[1]), json.decode(lines[2])
    assert.equal("demo", a.service)
    assert.equal("db", a.component)
    assert.is_nil(a.query)
    assert.same({"demo", "db", 7, 2}, {b.service, b.component, b.query, b.rows})
  end)

  it("quotes text values that are not one plain word", function()
    capture{format = "text"}
    log.info("m", {a = "", b = "x=y", c = 'q"', d = "tab\there"})
    assert.matches('a="" b="x=y" c="q\\"" d="tab\\there"', lines[1], 1, true)
  end)

  it("raises on misuse, naming the argument", function()
    assert.has_error(function() log.info() end, "bad argument #1 to 'info' (message expected)")
    assert.has_error(function() log.info("m", "k=v") end,
                     "bad argument #2 to 'info' (table of fields expected, got string)")
    assert.has_error(function() log.configure{level = "loud"} end)
    assert.has_error(function() log.configure{format = "xml"} end)
    assert.has_error(function() log.configure{colour = true} end)
    assert.has_error(function() log.with("x") end)
  end)

  it("writes to stderr, and takes its format and level from the environment", function()
    local script = os.tmpname()
    S.write_file(script, [[
      local log = require "tide.log"
      log.debug("dbg", {k = 1})
      log.info("inf")
    ]])
    local q = S.shell_quote
    local out, err, rc = S.run("env TIDE_LOG_FORMAT=json TIDE_LOG_LEVEL=debug " ..
                               q(S.TIDE) .. " " .. q(script))
    assert.equal(0, rc)
    assert.equal("", out)
    local first, second = err:match("^([^\n]*)\n([^\n]*)\n$")
    assert.equal("dbg", json.decode(first).msg)
    assert.equal(1, json.decode(first).k)
    assert.equal("inf", json.decode(second).msg)
    out, err, rc = S.run(q(S.TIDE) .. " " .. q(script))
    assert.equal(0, rc)
    assert.matches("^%S+ INFO inf task=1\n$", err)
    out, err, rc = S.run("env TIDE_LOG_FORMAT=yaml " .. q(S.TIDE) .. " " .. q(script))
    os.remove(script)
    assert.equal(0, rc)
    assert.matches("TIDE_LOG_FORMAT must be text or json", err)
  end)
end)
