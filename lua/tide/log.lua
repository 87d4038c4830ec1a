-- tide.log: levelled, structured logging to stderr.
--
--   log.info("listening", {port = 8080})
--   2026-11-26T16:40:01.123Z INFO listening port=8080 task=1
--
-- Plain text by default; JSON lines (one object per line) with
-- log.configure{format = "json"} or TIDE_LOG_FORMAT=json. The level comes
-- from log.configure{level = ...} or TIDE_LOG_LEVEL (default "info").
-- Each line is written whole with one write to stderr, so lines from
-- tasks never interleave; docs/log.md says why that write is not handed
-- to the pool.
local tide = require "tide"

local type, tostring, pairs, select = type, tostring, pairs, select
local concat, sort = table.concat, table.sort
local format, floor = string.format, math.floor

local LEVELS = {debug = 10, info = 20, warn = 30, error = 40}
local NAMES = {debug = "DEBUG", info = "INFO", warn = "WARN", error = "ERROR"}
local RESERVED = {time = true, level = true, msg = true, task = true}

local log = {}

local config = {level = 20, format = "text", output = nil, fields = nil}

local function check_level(v, where)
  local n = LEVELS[v]
  if not n then
    error(("bad %s (debug, info, warn or error expected, got %s)")
          :format(where, tostring(v)), 3)
  end
  return n
end

local function check_format(v, where)
  if v ~= "text" and v ~= "json" then
    error(("bad %s (\"text\" or \"json\" expected, got %s)"):format(where, tostring(v)), 3)
  end
  return v
end

-- The environment sets the defaults; a wrong value is reported once and
-- ignored rather than stopping the program at its first log line.
do
  local f = os.getenv("TIDE_LOG_FORMAT")
  if f == "json" or f == "text" then config.format = f
  elseif f and f ~= "" then
    io.stderr:write("tide.log: TIDE_LOG_FORMAT must be text or json, not " .. f .. "\n")
  end
  local l = os.getenv("TIDE_LOG_LEVEL")
  if l and LEVELS[l] then config.level = LEVELS[l]
  elseif l and l ~= "" then
    io.stderr:write("tide.log: TIDE_LOG_LEVEL must be debug, info, warn or error, not " .. l .. "\n")
  end
end

-- RFC 3339 UTC with milliseconds.
local function timestamp()
  local t = tide.time()
  local s = floor(t)
  local ms = floor((t - s) * 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", ms)
end

-- JSON string escaping (control characters, quote, backslash; bytes
-- above 127 pass through: log text is expected to be UTF-8).
local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r",
                 ["\t"] = "\\t"}
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or format("\\u%04x", c:byte())
  end) .. '"'
end

local function json_value(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == 1/0 or v == -1/0 then return json_string(tostring(v)) end
    if v == floor(v) and v > -2^53 and v < 2^53 then return format("%d", v) end
    return format("%.17g", v)
  elseif t == "boolean" then return tostring(v)
  elseif t == "nil" then return "null"
  end
  return json_string(tostring(v))
end

-- A text value: bare when it is one plain word, quoted otherwise.
local function text_value(v)
  local s = tostring(v)
  if s ~= "" and not s:find('[%s%c"=\\]') then return s end
  return json_string(s)
end

-- Keys in a stable order: the fields the caller gave, sorted.
local function sorted_keys(t, into)
  for k in pairs(t) do into[#into + 1] = k end
  sort(into, function(a, b) return tostring(a) < tostring(b) end)
  return into
end

local function render(level, msg, fields, extra)
  local task = tide._task_id()
  local fmt = config.format
  local parts = {}
  if fmt == "json" then
    parts[1] = '{"time":' .. json_string(timestamp()) .. ',"level":"' .. level ..
               '","msg":' .. json_string(msg)
    if task then parts[#parts + 1] = ',"task":' .. task end
  else
    parts[1] = timestamp() .. " " .. NAMES[level] .. " " .. msg
  end
  for _, set in ipairs{config.fields or false, extra or false, fields or false} do
    if set then
      for _, k in ipairs(sorted_keys(set, {})) do
        local key = tostring(k)
        -- a field named like one of the line's own keys keeps its value
        -- under "_"..name rather than making a second key of that name
        if RESERVED[key] then key = "_" .. key end
        if fmt == "json" then
          parts[#parts + 1] = "," .. json_string(key) .. ":" .. json_value(set[k])
        else
          parts[#parts + 1] = " " .. key .. "=" .. text_value(set[k])
        end
      end
    end
  end
  if fmt == "json" then parts[#parts + 1] = "}\n"
  else
    if task then parts[#parts + 1] = " task=" .. task end
    parts[#parts + 1] = "\n"
  end
  return concat(parts)
end

local function emit(level, msg, fields, extra, fname)
  if LEVELS[level] < config.level then return end
  if type(msg) ~= "string" then
    if msg == nil then
      error(("bad argument #1 to '%s' (message expected)"):format(fname), 3)
    end
    msg = tostring(msg)
  end
  if fields ~= nil and type(fields) ~= "table" then
    error(("bad argument #2 to '%s' (table of fields expected, got %s)")
          :format(fname, type(fields)), 3)
  end
  local line = render(level, msg, fields, extra)
  local out = config.output
  if out then out(line) else io.stderr:write(line) end
end

-- A logger: the four level functions, adding `extra` fields to each line.
local function logger(into, extra)
  for level in pairs(LEVELS) do
    into[level] = function(msg, fields) return emit(level, msg, fields, extra, level) end
  end
  -- A child logger adding these fields to every line (log.with{conn = id}).
  function into.with(fields)
    if type(fields) ~= "table" then
      error(("bad argument #1 to 'with' (table expected, got %s)"):format(type(fields)), 2)
    end
    local merged = {}
    if extra then for k, v in pairs(extra) do merged[k] = v end end
    for k, v in pairs(fields) do merged[k] = v end
    return logger({}, merged)
  end
  return into
end
logger(log, nil)

-- log.configure{level=, format=, fields=, output=}: output is a function
-- receiving each finished line (for tests or another sink); nil restores
-- stderr. Returns the previous settings.
function log.configure(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'configure' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if k ~= "level" and k ~= "format" and k ~= "fields" and k ~= "output" then
      error(("bad argument #1 to 'configure' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  local old = {format = config.format, fields = config.fields, output = config.output}
  for name, n in pairs(LEVELS) do if n == config.level then old.level = name end end
  if opts.level ~= nil then config.level = check_level(opts.level, "option 'level'") end
  if opts.format ~= nil then config.format = check_format(opts.format, "option 'format'") end
  if opts.fields ~= nil then
    if type(opts.fields) ~= "table" then
      error("bad option 'fields' (table expected)", 2)
    end
    config.fields = opts.fields
  end
  if opts.output ~= nil then
    if opts.output ~= false and type(opts.output) ~= "function" then
      error("bad option 'output' (function or false expected)", 2)
    end
    config.output = opts.output or nil
  end
  return old
end

-- Whether a level would be written (to skip building costly fields).
function log.enabled(level)
  return check_level(level, "argument #1 to 'enabled'") >= config.level
end

return log
