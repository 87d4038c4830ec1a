-- examples/automate.lua - config-driven automation: runs commands at
-- intervals and when files change, reports each result over HTTP, logs
-- with tide.log, reloads its config on SIGHUP (a broken config is logged
-- and the old one kept) and stops gracefully on SIGTERM.
--
--   build/tide examples/automate.lua [config.lua | config.json]
--
-- docs/automation.md walks through it.
local fs = require "tide.fs"
local http = require "tide.http"
local json = require "tide.json"
local log = require "tide.log"
local process = require "tide.process"
local signal = require "tide.signal"

local config_path = arg[1] or (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/automate.conf.lua"

-- Configuration -------------------------------------------------------------

-- Reads the config file: a Lua chunk returning a table (run with no access
-- to anything but the values it builds), or JSON when the name ends in .json.
local function read_config(path)
  local text, err = fs.read_file(path)
  if not text then return nil, err end
  if path:match("%.json$") then
    return json.decode(text)
  end
  local chunk, perr = loadstring(text, "@" .. path)
  if not chunk then return nil, perr end
  setfenv(chunk, {})
  local ok, conf = pcall(chunk)
  if not ok then return nil, tostring(conf) end
  return conf
end

local function check_command(run, where)
  if type(run) ~= "table" or #run == 0 then
    return where .. ": run must be a list of words, the program first"
  end
  for i, word in ipairs(run) do
    if type(word) ~= "string" then
      return ("%s: run[%d] must be a string"):format(where, i)
    end
  end
end

-- Returns the config, or nil and what is wrong with it.
local function validate(conf)
  if type(conf) ~= "table" then return nil, "the config must be a table" end
  if conf.report_url ~= nil and type(conf.report_url) ~= "string" then
    return nil, "report_url must be a string"
  end
  if conf.grace ~= nil and (type(conf.grace) ~= "number" or conf.grace < 0) then
    return nil, "grace must be a number of seconds"
  end
  local names = {}
  local function check_name(item, where)
    if type(item) ~= "table" then return where .. " must be a table" end
    if type(item.name) ~= "string" or item.name == "" then
      return where .. ": name must be a non-empty string"
    end
    if names[item.name] then return "two jobs are named " .. item.name end
    names[item.name] = true
  end
  for i, job in ipairs(conf.jobs or {}) do
    local where = ("jobs[%d]"):format(i)
    local err = check_name(job, where) or check_command(job.run, where)
    if err then return nil, err end
    if type(job.every) ~= "number" or job.every <= 0 then
      return nil, where .. ": every must be a positive number of seconds"
    end
  end
  for i, w in ipairs(conf.watches or {}) do
    local where = ("watches[%d]"):format(i)
    local err = check_name(w, where) or check_command(w.run, where)
    if err then return nil, err end
    if type(w.path) ~= "string" then return nil, where .. ": path must be a string" end
    if w.debounce ~= nil and (type(w.debounce) ~= "number" or w.debounce < 0) then
      return nil, where .. ": debounce must be a number of seconds"
    end
  end
  return conf
end

local function load_config(path)
  local conf, err = read_config(path)
  if conf == nil then return nil, err end
  return validate(conf)
end

-- Running jobs ----------------------------------------------------------------

local running = {}   -- job name -> the task running it
local function in_flight() -- jobs running now (SIGTERM waits for them)
  local n = 0
  for _ in pairs(running) do n = n + 1 end
  return n
end
local idle = tide.cond()

local function report(url, result)
  local res, err = http.request{method = "POST", url = url, timeout = 5,
                                headers = {["content-type"] = "application/json"},
                                body = json.encode(result)}
  if not res then
    log.warn("report failed", {job = result.job, err = err})
  elseif res.status >= 300 then
    log.warn("report refused", {job = result.job, status = res.status})
  end
end

-- Runs one job (in its own task); `env` adds environment variables.
local function run_job(conf, job, env)
  if running[job.name] then
    log.warn("still running, beat skipped", {job = job.name})
    return
  end
  running[job.name] = tide.spawn(function()
    local t0 = tide.now()
    local opts = {}
    for i, word in ipairs(job.run) do opts[i] = word end
    if env then -- the child's environment: tide's, plus these
      opts.env = process.environ()
      for k, v in pairs(env) do opts.env[k] = v end
    end
    local res, err = process.run(opts)
    local result = {job = job.name, seconds = tide.now() - t0}
    if res then
      result.code, result.signal = res.code, res.signal
      result.stdout, result.stderr = res.stdout, res.stderr
      log.info("job done", {job = job.name, code = res.code, signal = res.signal,
                            seconds = ("%.3f"):format(result.seconds)})
    else
      result.error = err
      log.error("job failed to start", {job = job.name, err = err})
    end
    if env and env.CHANGED then result.changed = env.CHANGED end
    if conf.report_url then report(conf.report_url, result) end
    running[job.name] = nil
    if next(running) == nil then idle:broadcast() end
  end)
end

-- What one config starts: timers and watchers, stopped together.
local active = {timers = {}, watchers = {}, debounce = {}}

local function stop_all()
  for _, t in ipairs(active.timers) do t:close() end
  for _, w in ipairs(active.watchers) do w:close() end
  for _, t in pairs(active.debounce) do t:close() end
  active = {timers = {}, watchers = {}, debounce = {}}
end

-- Starts a config's jobs and watches; returns nil, message if a watch
-- cannot start (a missing folder), having started nothing.
local function start_all(conf)
  local next_active = {timers = {}, watchers = {}, debounce = {}}
  for _, w in ipairs(conf.watches or {}) do
    local changed = {}
    local watcher, err = fs.watch(w.path, function(event, name)
      changed[name or w.path] = true
      local pending = next_active.debounce[w.name]
      if pending then pending:close() end
      next_active.debounce[w.name] = tide.after(w.debounce or 0.2, function()
        next_active.debounce[w.name] = nil
        local names = {}
        for n in pairs(changed) do names[#names + 1] = n end
        table.sort(names)
        changed = {}
        log.info("change seen", {watch = w.name, event = event, files = table.concat(names, " ")})
        run_job(conf, w, {CHANGED = table.concat(names, " ")})
      end)
    end)
    if not watcher then
      for _, x in ipairs(next_active.watchers) do x:close() end
      return nil, ("watch %s: %s"):format(w.name, err)
    end
    next_active.watchers[#next_active.watchers + 1] = watcher
  end
  for _, job in ipairs(conf.jobs or {}) do
    next_active.timers[#next_active.timers + 1] =
      tide.every(job.every, function() run_job(conf, job) end)
  end
  stop_all()
  active = next_active
  return true
end

-- Main ----------------------------------------------------------------------

local conf, err = load_config(config_path)
if not conf then
  log.error("cannot load config", {path = config_path, err = err})
  tide.exit(1)
end
local ok, serr = start_all(conf)
if not ok then
  log.error("cannot start", {path = config_path, err = serr})
  tide.exit(1)
end

signal.on("HUP", function()
  local new, lerr = load_config(config_path)
  if not new then
    log.error("config rejected, keeping the old one", {path = config_path, err = lerr})
    return
  end
  local started, why = start_all(new)
  if not started then
    log.error("config rejected, keeping the old one", {path = config_path, err = why})
    return
  end
  conf = new
  log.info("config reloaded", {path = config_path, jobs = #(new.jobs or {}),
                               watches = #(new.watches or {})})
end)

local stopping = false
local function shutdown(name)
  if stopping then
    log.warn("second signal, exiting now", {signal = name})
    tide.exit(1)
  end
  stopping = true
  log.info("stopping", {signal = name, running = in_flight()})
  stop_all()
  local deadline = tide.now() + (conf.grace or 10)
  while next(running) ~= nil do
    local left = deadline - tide.now()
    if left <= 0 or not idle:wait(left) then
      log.warn("grace period over, exiting with jobs running", {running = in_flight()})
      tide.exit(1)
    end
  end
  log.info("stopped")
  tide.exit(0)
end
signal.on("TERM", shutdown)
signal.on("INT", shutdown)

log.info("ready", {path = config_path, jobs = #(conf.jobs or {}),
                   watches = #(conf.watches or {}), pid = process.pid})
