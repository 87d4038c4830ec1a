-- lua/tide/http.lua - `require "tide.http"`: an HTTP/1.1 server and
-- client on tide.net's streams. modules/http.c ("tide.http.c") parses
-- message heads and chunk sizes, strictly; docs/http.md is the manual.
--
-- Server: every connection is one task (tide.net's handler task) that
-- reads a request head, runs the handler on that same task, writes the
-- response and loops (keep-alive; pipelined requests are answered in
-- order because they are read one after the other). The unparsed input
-- of a connection is one Lua string (cx[BUF]) and a position in it; a
-- request that arrives in one read is parsed from the string the read
-- returned, without copies.
--
-- Timeouts cost nothing per request: a read records its deadline in the
-- connection's state and one sweeper task per server (a tide.every timer)
-- cancels the reads whose deadline passed. The same sweeper peeks at the
-- sockets of handlers that wait after their request's body was received:
-- a client that went away cancels the handler's pending wait.
--
-- Client: http.request over a pool of idle keep-alive connections per
-- scheme, host and port.

local tide = require "tide"
local net = require "tide.net"
local C = require "tide.http.c"
local bit = require "bit"

local type, error, tostring, tonumber, pairs, next, setmetatable, getmetatable,
      rawget, rawset =
  type, error, tostring, tonumber, pairs, next, setmetatable, getmetatable,
  rawget, rawset
local band = bit.band
local find, sub, lower, upper, format, byte, gsub, char =
  string.find, string.sub, string.lower, string.upper, string.format,
  string.byte, string.gsub, string.char
local concat = table.concat
local floor, huge = math.floor, math.huge
local pcall = pcall
local now, current = tide.now, tide.current
local spawn_own, on_finish, is_cancel = tide._spawn_own, tide._on_finish, tide._is_cancel
local safe_tostring = tide._safe_tostring
local stderr = io.stderr

local parse_response, parse_trailers, chunk_size, scan_chunks =
  C.parse_response, C.parse_trailers, C.chunk_size, C.scan_chunks
-- parse_request's lazy form through the FFI: its results in PREQ
local ffi = require "ffi"
local PREQ = ffi.new(C.parse_ffi_result)
local parse_ffi = ffi.cast(ffi.typeof(
  "int (*)(const char *, double, double, double, double, double, $ *)",
  ffi.typeof(PREQ)), C.parse_ffi)
local BODY_NONE, BODY_LENGTH, BODY_CHUNKED = C.BODY_NONE, C.BODY_LENGTH, C.BODY_CHUNKED
local F_CLOSE, F_KEEPALIVE, F_CONTINUE, F_UNTIL_CLOSE =
  C.F_CLOSE, C.F_KEEPALIVE, C.F_CONTINUE, C.F_UNTIL_CLOSE

local http = {}

-- headers tables (made by the C half) look names up case-insensitively
local HMT = C.headers_mt
HMT.__index = function(t, k)
  if type(k) == "string" then return rawget(t, lower(k)) end
end

local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols", [200] = "OK",
  [201] = "Created", [202] = "Accepted", [203] = "Non-Authoritative Information",
  [204] = "No Content", [205] = "Reset Content", [206] = "Partial Content",
  [300] = "Multiple Choices", [301] = "Moved Permanently", [302] = "Found",
  [303] = "See Other", [304] = "Not Modified", [307] = "Temporary Redirect",
  [308] = "Permanent Redirect", [400] = "Bad Request", [401] = "Unauthorized",
  [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [406] = "Not Acceptable", [408] = "Request Timeout", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [412] = "Precondition Failed",
  [413] = "Content Too Large", [414] = "URI Too Long",
  [415] = "Unsupported Media Type", [416] = "Range Not Satisfiable",
  [417] = "Expectation Failed", [422] = "Unprocessable Content",
  [426] = "Upgrade Required", [428] = "Precondition Required",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}
http.reasons = REASONS

-- "HTTP/1.1 200 OK\r\n", made once per status
local status_lines = setmetatable({}, {__index = function(t, s)
  local l = format("HTTP/1.1 %d %s\r\n", s, REASONS[s] or "Unknown")
  t[s] = l
  return l
end})

-- "Date: ...\r\n", formatted once a second (by the C half, which puts
-- the same line in the heads it makes)
local date_header = C.date_line

-- argument checks ---------------------------------------------------------------

local argerror = tide._argerror

local function describe(v)
  if type(v) == "string" then return format("%q", v) end
  return tostring(v)
end

local check_field = C.check_field
local function is_token(s) return type(s) == "string" and check_field(s, "") == 0 end
local function bad_value(s) return check_field("x", s) ~= 0 end

http.defaults = {
  max_header_size = 16384,          -- bytes of the request line and fields
  max_request_line = 8192,
  max_headers = 100,
  max_body_size = 1048576,
  max_connections = 10000,
  max_requests_per_connection = 1000,
  headers_timeout = 60,             -- seconds to receive a whole head
  body_timeout = 60,                -- seconds one body read may wait
  send_timeout = 60,                -- seconds one write may wait
  keepalive_timeout = 5,            -- seconds idle between requests
}

local COUNTS = {max_header_size = 1, max_request_line = 1, max_headers = 1,
                max_body_size = 0, max_connections = 1,
                max_requests_per_connection = 1}
local SECONDS = {headers_timeout = true, body_timeout = true,
                 send_timeout = true, keepalive_timeout = true}
local SERVE_OPTS = {host = true, port = true, path = true, backlog = true,
                    reuseport = true, tls = true, handler = true}

local function check_serve(opts)
  if type(opts) ~= "table" then
    argerror(1, "serve", "options table expected, got " .. type(opts), 4)
  end
  local cfg = {}
  for k, v in pairs(opts) do
    if COUNTS[k] then
      if type(v) ~= "number" or v ~= floor(v) or v < COUNTS[k] or v > 2^53 then
        argerror(1, "serve", ("option '%s' must be an integer of at least %d, got %s")
          :format(k, COUNTS[k], describe(v)), 4)
      end
    elseif SECONDS[k] then
      if type(v) ~= "number" or v ~= v or v <= 0 or v == huge then
        argerror(1, "serve", ("option '%s' must be a positive number of seconds, got %s")
          :format(k, describe(v)), 4)
      end
    elseif not SERVE_OPTS[k] then
      argerror(1, "serve", "unknown option '" .. tostring(k) .. "'", 4)
    end
  end
  if type(opts.handler) ~= "function" then
    argerror(1, "serve", "option 'handler' must be a function, got " ..
      type(opts.handler), 4)
  end
  for k, v in pairs(http.defaults) do
    local o = opts[k]
    if o == nil then o = v end
    cfg[k] = o
  end
  if cfg.max_headers > 100000 then
    argerror(1, "serve", "option 'max_headers' must be at most 100000", 4)
  end
  cfg.handler = opts.handler
  return cfg
end

-- the connection's input ----------------------------------------------------------
-- A server connection's state is an array (fifteen slots: 120 bytes
-- where named fields take a hash part of 192 and more): its stream,
-- unparsed input from cx[POS] on in cx[BUF], the server's options, the
-- deadline of the current read (false: none), whether the connection
-- goes on after the current response, its task, cx[ST] (below); then a
-- timed-out read, the close, a broken stream and a client gone (when
-- they happen); the server, the count of requests so far, and the
-- response whose handler runs (false between handlers).
local CONN, BUF, POS, CFG, DEADLINE, KEEP, TASK, ST = 1, 2, 3, 4, 5, 6, 7, 8
local TIMED_OUT, CLOSED, BROKEN, GONE = 9, 10, 11, 12
local SRV, NREQ, CUR = 13, 14, 15
-- cx[BUF] holds unparsed input from cx[POS] on.

local function append(cx, d)
  local pos = cx[POS]
  if pos > #cx[BUF] then cx[BUF], cx[POS] = d, 1
  elseif pos == 1 then cx[BUF] = cx[BUF] .. d
  else cx[BUF], cx[POS] = sub(cx[BUF], pos) .. d, 1 end
end

-- (the same for the client's connections, whose state is a table of
-- named fields)
local function capp(cx, d)
  local pos = cx.pos
  if pos > #cx.buf then cx.buf, cx.pos = d, 1
  elseif pos == 1 then cx.buf = cx.buf .. d
  else cx.buf, cx.pos = sub(cx.buf, pos) .. d, 1 end
end

-- One read into the buffer, waiting at most `timeout` seconds: true, or
-- nil (end of stream) or nil, msg, code. The server's sweeper (below)
-- enforces the deadline: a wait timer per read would cost more than the
-- rest of a request.
local function fill(cx, timeout)
  cx[DEADLINE] = now() + timeout
  local ok, d, e, code = pcall(cx[CONN].read, cx[CONN])
  cx[DEADLINE] = false
  if not ok then
    if cx[TIMED_OUT] then
      cx[TIMED_OUT] = false
      return nil, "timed out", "ETIMEDOUT"
    end
    error(d, 0)
  end
  if not d then return nil, e, code end
  append(cx, d)
  return true
end

-- cx[ST]: IDLE while the connection waits for its next request (in
-- serve_conn: the sweeper closes it past its deadline), RUN while the
-- handler runs, WATCH while it runs with the whole request received (the
-- sweeper watches for the client going away); false otherwise.
local IDLE, RUN, WATCH = 1, 2, 3

-- (a task every tick, per server) cancels the reads past their deadline,
-- and the waits of handlers whose client went away (cx[ST] == WATCH: the
-- request's body has been received, so the end of the stream cannot be
-- the end of the body). The connection object's slot 1 is its stream
-- (lua/tide/net.lua).
local peer_gone = C.peer_gone
local function sweep(srv)
  local t, live = now(), srv.live
  if srv.closing and next(live) == nil then -- closed, and its last connection ended
    srv.sweeper:stop()
    return
  end
  for cx in next, live do
    local d = cx[DEADLINE]
    local st = cx[ST]
    if d and t >= d and st == IDLE then
      local ts = cx[TASK]:status()
      if ts == "done" or ts == "cancelled" or ts == "failed" then
        live[cx] = nil -- its wait raised: the task ended without counting out
        srv.n = srv.n - 1
      elseif not cx[CLOSED] then
        cx[TIMED_OUT] = true
        cx[CLOSED] = true
        cx[CONN]:close()
      end
    elseif d and t >= d and not cx[TIMED_OUT] and cx[TASK]:status() == "waiting" then
      cx[TIMED_OUT] = true
      cx[TASK]:cancel("timed out")
    elseif st == WATCH and not cx[CLOSED] and cx[TASK]:status() == "waiting" and
           peer_gone(cx[CONN][1]) then
      cx[ST] = RUN
      cx[GONE] = true
      cx[BROKEN] = true
      cx[TASK]:cancel("client disconnected")
    end
  end
end

local function avail(cx) return #cx[BUF] - cx[POS] + 1 end
local function cavail(cx) return #cx.buf - cx.pos + 1 end

-- closing -------------------------------------------------------------------------

-- Ends a connection after its last response: half-close, then read and
-- drop what the client still sends (briefly), so that unread input does
-- not turn the close into a reset that could destroy the response.
local LINGER_SECONDS, LINGER_BYTES = 2, 262144

local function close_conn(cx)
  local conn = cx[CONN]
  if cx[CLOSED] then return end
  cx[CLOSED] = true
  if not cx[BROKEN] then
    conn:shutdown()
    conn:set_timeout(0.5, cx[CFG].send_timeout)
    local deadline, total = now() + LINGER_SECONDS, 0
    while total < LINGER_BYTES and now() < deadline do
      local d = conn:read()
      if not d then break end
      total = total + #d
    end
  end
  conn:close()
end

-- An error answer: status, a short text body, and the end of the
-- connection (msg: why, for a reader of the code; the client gets the
-- status's reason phrase only)
local function reject(cx, status, msg)
  local body = (REASONS[status] or "Error") .. "\n"
  cx[CONN]:set_timeout(cx[CFG].send_timeout)
  local ok = cx[CONN]:write(status_lines[status], date_header(),
    "Content-Type: text/plain\r\nContent-Length: ", #body,
    "\r\nConnection: close\r\n\r\n", body)
  if not ok then cx[BROKEN] = true end
  close_conn(cx)
end

-- requests ---------------------------------------------------------------------------

-- A request is a table of two named fields (method, target: made before
-- the handler runs) and five array slots: the connection's state, the
-- buffer its head is in and the position of its field lines (for
-- req.headers), its minor version and the state of its body (B_* below);
-- the fields a request with a body needs are named ones.
-- A response is a table of four array slots: the connection's state, its
-- request, whether its head was sent and whether it is finished.
-- (Array slots: 160 and 104 bytes, where the same fields by name take a
-- hash part of 8 and 4 nodes: 256 and 160 bytes.)
local R_CX, R_BUF, R_HPOS, R_MINOR, R_STATE = 1, 2, 3, 4, 5
local S_CX, S_REQ, S_SENT, S_DONE = 1, 2, 3, 4

local Req = {}
local req_methods = {}

local function hex_char(h) return char(tonumber(h, 16)) end
local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", hex_char))
end

local function parse_query(q)
  local t = {}
  if not q then return t end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    k, v = unescape(k), unescape(v)
    local old = t[k]
    if old == nil then t[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else t[k] = {old, v} end
  end
  return t
end

-- the request's path: its target without the query, and without the
-- scheme and authority of an absolute form
local function target_path(target)
  local q = find(target, "?", 1, true)
  local path = q and sub(target, 1, q - 1) or target
  if byte(path, 1) ~= 47 and find(path, "^[Hh][Tt][Tt][Pp][Ss]?://") then
    path = path:match("^%a+://[^/]*(.*)$")
    if path == "" then path = "/" end
  end
  return path
end

-- fields made on first use
local LAZY = {
  path = function(req) return target_path(req.target) end,
  version = function(req) return req[R_MINOR] == 1 and "1.1" or "1.0" end,
  remote_address = function(req) return req[R_CX][CONN].remote_address end,
  remote_port = function(req) return req[R_CX][CONN].remote_port end,
  query = function(req)
    local target = req.target
    local q = find(target, "?", 1, true)
    return parse_query(q and sub(target, q + 1))
  end,
}

function Req.__index(req, k)
  local lazy = LAZY[k]
  if lazy then
    local v = lazy(req)
    rawset(req, k, v)
    return v
  end
  if k == "headers" then -- made on first use from the head's bytes
    local h, st, msg = C.headers(req[R_BUF], req[R_HPOS],
                                 req[R_CX][CFG].max_headers)
    if not h then error(("malformed header (%d %s)"):format(st, msg), 2) end
    rawset(req, "headers", h)
    return h
  end
  return req_methods[k]
end

local function check_req(req, fname)
  if getmetatable(req) ~= Req then
    error(("bad argument #1 to '%s' (request expected, got %s)"):format(
      fname, type(req)), 3)
  end
end

function req_methods.header(req, name)
  check_req(req, "header")
  if type(name) ~= "string" then
    argerror(1, "header", "string expected, got " .. type(name))
  end
  return rawget(req.headers, lower(name))
end

-- 100 Continue goes out before the first read of a body the client
-- holds back for it.
local function send_continue(req)
  req._continue = false
  local res = req._res
  if res[S_SENT] then return end
  local ok = req[R_CX][CONN]:write("HTTP/1.1 100 Continue\r\n\r\n")
  if not ok then req[R_CX][BROKEN] = true end
end

-- body states
local B_DONE, B_LENGTH, B_SIZE, B_DATA, B_CRLF, B_TRAILER = 0, 1, 2, 3, 4, 5

local function body_fail(req, status, msg, code)
  req._err = status
  req[R_STATE] = B_DONE
  req[R_CX][KEEP] = false
  return nil, msg, code
end

local function body_fill(req)
  local cx = req[R_CX]
  local ok, e, code = fill(cx, cx[CFG].body_timeout)
  if ok then return true end
  cx[BROKEN] = true
  if code == "ETIMEDOUT" then return body_fail(req, 408, "timed out", "ETIMEDOUT") end
  if not e then return body_fail(req, 400, "connection closed in the body", "ECONNRESET") end
  return body_fail(req, 400, e, code)
end

-- read([n]) -> the next piece of the body (at most n bytes) | nil at its
-- end | nil, msg, code
function req_methods.read(req, n)
  check_req(req, "read")
  if n == nil then n = huge
  elseif type(n) ~= "number" or n < 1 or n ~= floor(n) then
    argerror(1, "read", "count must be a positive integer, got " .. describe(n))
  end
  local cx = req[R_CX]
  if req._continue then send_continue(req) end
  while true do
    local st = req[R_STATE]
    if st == B_DONE then
      if req._err then return nil, req._errmsg, req._errcode end
      return nil
    elseif st == B_LENGTH or st == B_DATA then
      local a = avail(cx)
      if a > 0 then
        local left = req._left
        local take = a < left and a or left
        if take > n then take = n end
        local pos = cx[POS]
        local d = (pos == 1 and take == #cx[BUF]) and cx[BUF] or sub(cx[BUF], pos, pos + take - 1)
        cx[POS] = pos + take
        left = left - take
        req._left = left
        if left == 0 then
          if st == B_LENGTH then
            req[R_STATE] = B_DONE
            if cx[ST] == RUN then cx[ST] = WATCH end -- the body is in: the end of the stream means gone
          else
            req[R_STATE] = B_CRLF
          end
        end
        return d
      end
      local ok, e, code = body_fill(req)
      if not ok then req._errmsg, req._errcode = e, code; return nil, e, code end
    elseif st == B_SIZE then
      local size, nxt = chunk_size(cx[BUF], cx[POS])
      if size then
        cx[POS] = nxt
        local total = req._total + size
        req._total = total
        if total > cx[CFG].max_body_size then
          local e, code = "request body too large", "E2BIG"
          req._errmsg, req._errcode = e, code
          return body_fail(req, 413, e, code)
        end
        if size == 0 then req[R_STATE] = B_TRAILER
        else req._left, req[R_STATE] = size, B_DATA end
      elseif size == nil then
        cx[BROKEN] = true
        local e, code = "malformed chunked body", "EPROTO"
        req._errmsg, req._errcode = e, code
        return body_fail(req, 400, e, code)
      else
        local ok, e, code = body_fill(req)
        if not ok then req._errmsg, req._errcode = e, code; return nil, e, code end
      end
    elseif st == B_CRLF then
      if avail(cx) >= 2 then
        if sub(cx[BUF], cx[POS], cx[POS] + 1) ~= "\r\n" then
          cx[BROKEN] = true
          local e, code = "malformed chunked body", "EPROTO"
          req._errmsg, req._errcode = e, code
          return body_fail(req, 400, e, code)
        end
        cx[POS] = cx[POS] + 2
        req[R_STATE] = B_SIZE
      else
        local ok, e, code = body_fill(req)
        if not ok then req._errmsg, req._errcode = e, code; return nil, e, code end
      end
    else -- B_TRAILER: never merged into req.headers
      local cfg = cx[CFG]
      local t, nxt, msg = parse_trailers(cx[BUF], cx[POS], cfg.max_header_size,
                                         cfg.max_headers)
      if t then
        cx[POS] = nxt
        req.trailers = t
        req[R_STATE] = B_DONE
        if cx[ST] == RUN then cx[ST] = WATCH end
      elseif t == nil then
        cx[BROKEN] = true
        local e, code = "malformed trailer: " .. msg, "EPROTO"
        req._errmsg, req._errcode = e, code
        return body_fail(req, nxt, e, code)
      else
        local ok, e, code = body_fill(req)
        if not ok then req._errmsg, req._errcode = e, code; return nil, e, code end
      end
    end
  end
end

-- body([max]) -> the whole body as a string (kept: a second call returns
-- it again) | nil, msg, code
function req_methods.body(req, max)
  check_req(req, "body")
  if max ~= nil and (type(max) ~= "number" or max < 0) then
    argerror(1, "body", "max must be a non-negative number, got " .. describe(max))
  end
  if req._body then return req._body end
  max = max or req[R_CX][CFG].max_body_size
  local parts, n, size = {}, 0, 0
  while true do
    local d, e, code = req_methods.read(req)
    if not d then
      if e then return nil, e, code end
      break
    end
    size = size + #d
    if size > max then
      req[R_CX][KEEP] = false
      return nil, "request body too large", "E2BIG"
    end
    n = n + 1
    parts[n] = d
  end
  local b = n == 1 and parts[1] or concat(parts)
  req._body = b
  return b
end

-- Consumes what is left of the body if it is already buffered (no
-- waiting); true when the body is complete.
local function skip_buffered(req)
  local st, cx = req[R_STATE], req[R_CX]
  if st == B_DONE then return not rawget(req, "_err") end
  if st == B_LENGTH and avail(cx) >= req._left then
    cx[POS] = cx[POS] + req._left
    req[R_STATE] = B_DONE
    return true
  end
  return false
end

-- responses --------------------------------------------------------------------------

local Res = {}
Res.__index = Res
Res.status = 200 -- (until set_status or a returned status sets the response's own)

local function check_res(res, fname)
  if getmetatable(res) ~= Res then
    error(("bad argument #1 to '%s' (response expected, got %s)"):format(
      fname, type(res)), 3)
  end
end

function Res.set_status(res, code)
  check_res(res, "set_status")
  if type(code) ~= "number" or code ~= floor(code) or code < 200 or code > 999 then
    argerror(1, "set_status", "status must be an integer from 200 to 999, got " ..
      describe(code))
  end
  if res[S_SENT] then error("response headers already sent", 2) end
  res.status = code
  return res
end

-- res._h: {name, value, name, value, ...} and lower-case name -> index
local function add_header(res, name, value)
  local h = res._h
  if not h then h = {}; res._h = h end
  local key = lower(name)
  local i = h[key]
  if i then h[i + 1] = value
  else
    local n = #h
    h[n + 1], h[n + 2] = name, value
    h[key] = n + 1
  end
end

local function set_header(res, name, value, fname, level)
  if not is_token(name) then
    argerror(1, fname, "header name must be a token, got " .. describe(name), level)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" or bad_value(value) then
    argerror(2, fname, "header value must be a string without CR, LF or NUL, got " ..
      describe(value), level)
  end
  if res[S_SENT] then error("response headers already sent", level) end
  add_header(res, name, value)
end

-- set_header(name, value): replaces a header of that name (any case);
-- value nil removes it
function Res.set_header(res, name, value)
  check_res(res, "set_header")
  if value == nil then
    if not is_token(name) then
      argerror(1, "set_header", "header name must be a token, got " .. describe(name))
    end
    if res[S_SENT] then error("response headers already sent", 2) end
    local h = res._h
    local i = h and h[lower(name)]
    if i then h[i], h[i + 1] = false, false; h[lower(name)] = nil end
    return res
  end
  set_header(res, name, value, "set_header", 4)
  return res
end

local function no_body_status(s) return s < 200 or s == 204 or s == 304 end

-- Writes the head; length: the body's length, or nil (streamed).
-- Returns true or nil, msg, code.
-- the result of a write of the response: a failed one ends the connection
local function sent(cx, ok, e, code)
  if not ok then cx[BROKEN] = true; cx[KEEP] = false end
  return ok, e, code
end

local function send_head(res, length, body)
  local cx, req = res[S_CX], res[S_REQ]
  local status = res.status
  res[S_SENT] = true
  if req[R_STATE] ~= B_DONE and not skip_buffered(req) then
    cx[KEEP] = false -- the unread body would be taken for the next request
  end
  local h = res._h
  local parts, n = {status_lines[status], false}, 2
  local user_len, user_date
  if h then
    for i = 1, #h, 2 do
      local name = h[i]
      if name then
        local key = lower(name)
        if key == "content-length" then
          user_len = tonumber(h[i + 1])
        elseif key == "connection" then
          if find(lower(h[i + 1]), "close", 1, true) then cx[KEEP] = false end
          name = false
        elseif key == "transfer-encoding" then
          name = false -- the framing is the server's
        elseif key == "date" then
          user_date = true
        end
        if name and key ~= "content-length" then
          parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] =
            name, ": ", h[i + 1], "\r\n"
          n = n + 4
        end
      end
    end
  end
  if no_body_status(status) then
    res._nobody = true
    if status == 304 and user_len then
      parts[n + 1] = "Content-Length: " .. user_len .. "\r\n"; n = n + 1
    end
  else
    if req.method == "HEAD" then res._nobody = true end
    if length == nil then length = user_len end
    if length then
      parts[n + 1] = "Content-Length: " .. length .. "\r\n"; n = n + 1
      res._length = length
    elseif req[R_MINOR] == 1 then
      parts[n + 1] = "Transfer-Encoding: chunked\r\n"; n = n + 1
      res._chunked = true
    else
      cx[KEEP] = false -- an HTTP/1.0 body ends with the connection
    end
  end
  if not cx[KEEP] then parts[n + 1] = "Connection: close\r\n"; n = n + 1
  elseif req[R_MINOR] == 0 then parts[n + 1] = "Connection: keep-alive\r\n"; n = n + 1 end
  parts[n + 1] = "\r\n"
  parts[2] = user_date and "" or date_header()
  local ok, e, code
  if body and not res._nobody then
    ok, e, code = cx[CONN]:write(concat(parts), body)
  else
    ok, e, code = cx[CONN]:write(concat(parts))
  end
  return sent(cx, ok, e, code)
end

-- write(chunk) -> true | nil, msg, code: the head goes first; without a
-- Content-Length the body is chunked (HTTP/1.1) or runs to the close
function Res.write(res, chunk)
  check_res(res, "write")
  if type(chunk) == "number" then chunk = tostring(chunk) end
  if type(chunk) ~= "string" then
    argerror(1, "write", "string expected, got " .. type(chunk))
  end
  if res[S_DONE] then error("response already finished", 2) end
  local cx = res[S_CX]
  if not res[S_SENT] then
    local ok, e, code = send_head(res, nil)
    if not ok then return nil, e, code end
  end
  if res._nobody or #chunk == 0 then return true end
  if cx[BROKEN] then return nil, "connection closed", "EPIPE" end
  local ok, e, code
  if res._chunked then
    ok, e, code = cx[CONN]:write(format("%x\r\n", #chunk), chunk, "\r\n")
  else
    local left = res._length
    if left then -- a Content-Length the handler set: no byte beyond it
      if #chunk > left then chunk = sub(chunk, 1, left); cx[KEEP] = false end
      res._length = left - #chunk
      if #chunk == 0 then return true end
    end
    ok, e, code = cx[CONN]:write(chunk)
  end
  return sent(cx, ok, e, code)
end

-- finish([body]) -> true | nil, msg, code: the end of the response
function Res.finish(res, body)
  check_res(res, "finish")
  if type(body) == "number" then body = tostring(body) end
  if body ~= nil and type(body) ~= "string" then
    argerror(1, "finish", "string expected, got " .. type(body))
  end
  if res[S_DONE] then error("response already finished", 2) end
  local cx = res[S_CX]
  if not res[S_SENT] then
    res[S_DONE] = true
    return send_head(res, body and #body or 0, body)
  end
  local ok, e, code = true, nil, nil
  if body and body ~= "" then ok, e, code = Res.write(res, body) end
  res[S_DONE] = true
  if ok and res._chunked and not res._nobody and not cx[BROKEN] then
    ok, e, code = cx[CONN]:write("0\r\n\r\n")
    if not ok then cx[BROKEN] = true end
  end
  -- short of the Content-Length it announced: only the close can tell
  if res._length and res._length > 0 and not res._nobody then cx[KEEP] = false end
  return ok, e, code
end

-- the server --------------------------------------------------------------------------

local function log_error(cx, req, e)
  stderr:write(("tide.http: error in handler for %s %s: %s\n"):format(
    req.method, req.target, tostring(e)))
end

local function respond_error(res, status)
  res.status = status
  res._h = nil
  local body = (REASONS[status] or "Error") .. "\n"
  set_header(res, "Content-Type", "text/plain", "finish", 3)
  res[S_DONE] = true
  return send_head(res, #body, body)
end

-- The headers a handler returned, checked and given to res for
-- send_head: true, or nil after answering 500. (The common case, a head
-- made in one string by returned_head, does not come here.)
local function returned_headers(cx, req, res, c)
  if type(c) ~= "table" then
    log_error(cx, req, "handler returned headers that are not a table")
    respond_error(res, 500)
    return nil
  end
  for k, v in next, c do
    if type(v) == "number" then v = tostring(v) end
    if type(k) ~= "string" or type(v) ~= "string" or check_field(k, v) ~= 0 then
      log_error(cx, req, "handler returned an invalid header " .. describe(k))
      respond_error(res, 500)
      return nil
    end
  end
  for k, v in next, c do add_header(res, k, tostring(v)) end
  return true
end

-- The head of a returned answer in one string (with the body when it is
-- at most 4 KiB), made in HEAD_BUF through the FFI (calls that do not
-- end the JIT's trace); nil when a header is one the server frames, a
-- number or invalid, or the head does not fit: then the general path
-- decides.
local HEAD_SIZE = 8192
local HEAD_BUF = ffi.new("char[?]", HEAD_SIZE)
local TAIL_KEEP, TAIL_KEEP10, TAIL_CLOSE = 0, 1, 2
local head_start = ffi.cast("double (*)(char *, double, const char *, double)",
                            C.head_start_ffi)
local head_field = ffi.cast(
  "double (*)(char *, double, double, const char *, double, const char *, double)",
  C.head_field_ffi)
local head_end = ffi.cast(
  "double (*)(char *, double, double, double, int, const char *, double)", C.head_end_ffi)
local function returned_head(sl, c, b, tail)
  local buf = HEAD_BUF
  local n = head_start(buf, HEAD_SIZE, sl, #sl)
  if c ~= nil then
    if type(c) ~= "table" then return nil end
    for k, v in next, c do
      if type(k) ~= "string" or type(v) ~= "string" then return nil end
      n = head_field(buf, HEAD_SIZE, n, k, #k, v, #v)
      if n < 0 then return nil end
    end
  end
  local bl = #b
  n = head_end(buf, HEAD_SIZE, n, bl, tail, b, bl <= 4096 and bl or -1)
  if n < 0 then return nil end
  return ffi.string(buf, n)
end

-- Runs one request; returns true to go on with the connection.
local function run_request(cx, req, res)
  local handler = cx[CFG].handler
  cx[ST] = (req[R_STATE] == B_DONE or (req[R_STATE] == B_LENGTH and avail(cx) >= req._left))
          and WATCH or RUN
  -- (not under xpcall: an error ends the task, and conn_done answers it)
  cx[CUR] = res
  local a, b, c = handler(req, res)
  cx[CUR] = false
  cx[ST] = false
  if cx[GONE] then return false end
  -- (rawget: a field a request has only after a failed body; a miss
  -- through Req.__index would cost a call per request)
  local err = rawget(req, "_err")
  if not res[S_DONE] then
    if err and not res[S_SENT] then
      respond_error(res, err)
    elseif res[S_SENT] then
      Res.finish(res)
    elseif type(a) == "number" then
      if a ~= floor(a) or a < 200 or a > 999 then
        log_error(cx, req, "handler returned an invalid status " .. tostring(a))
        respond_error(res, 500)
      else
        if b ~= nil and type(b) ~= "string" then b = tostring(b) end
        -- simple: the head is made here, in one string
        local simple = not res._h and not err and b and not no_body_status(a) and
                       req.method ~= "HEAD" and (req[R_STATE] == B_DONE or skip_buffered(req))
        local head
        if simple then -- (nil: a header the server frames, or one to reject)
          head = returned_head(status_lines[a], c, b,
            cx[KEEP] and (req[R_MINOR] == 1 and TAIL_KEEP or TAIL_KEEP10) or TAIL_CLOSE)
        end
        if not head and c ~= nil then
          if not returned_headers(cx, req, res, c) then return cx[KEEP] and not cx[BROKEN] end
        end
        res[S_DONE] = true
        if head then
          local ok2
          if #b <= 4096 then ok2 = cx[CONN]:write(head)
          else ok2 = cx[CONN]:write(head, b) end
          res[S_SENT] = true
          if not ok2 then cx[BROKEN] = true end
        else
          res.status = a
          send_head(res, b and #b or 0, b)
        end
      end
    else
      Res.finish(res)
    end
  end
  if req[R_STATE] ~= B_DONE and not skip_buffered(req) then cx[KEEP] = false end
  return cx[KEEP] and not cx[BROKEN]
end

-- The head at cx[POS]: parse_request's lazy results (method, target,
-- minor, the position of the field lines, next, body, length, flags),
-- false (incomplete) or nil, status, message. Through the FFI, so that
-- the call does not end the JIT's trace (the results are read from
-- PREQ before anything else can parse).
local function parse_head(cx, cfg)
  local buf = cx[BUF]
  local r = parse_ffi(buf, #buf, cx[POS], cfg.max_request_line, cfg.max_header_size,
                      cfg.max_headers, PREQ)
  local p = PREQ
  if r == 1 then
    return sub(buf, p.m_from, p.m_to), sub(buf, p.t_from, p.t_to), p.minor, p.hpos,
           p.next, p.body, p.length, p.flags
  elseif r == 0 then
    return false
  end
  return nil, p.status, ffi.string(p.msg)
end

-- The rest of a head that came in part: reads until it is complete,
-- within headers_timeout of its first bytes.
local function read_head_slow(srv, cx)
  local cfg = cx[CFG]
  local deadline = now() + cfg.headers_timeout
  while true do
    local t = deadline - now()
    if t <= 0 then return reject(cx, 408, "headers timeout") end
    local r, _, code = fill(cx, t)
    if not r then
      if code == "ETIMEDOUT" then return reject(cx, 408, "headers timeout") end
      cx[BROKEN] = true
      return close_conn(cx)
    end
    local method, target, minor, headers, nxt, body, length, flags = parse_head(cx, cfg)
    if method then return method, target, minor, headers, nxt, body, length, flags end
    if method == nil then return reject(cx, target, minor) end
  end
end

-- The head of a connection's next request, some of it in the buffer:
-- the results of parse_request, or nothing once the connection is done
-- (answered and closed here). (No loop on the common path: the JIT
-- compiles it.)
local function read_head(srv, cx)
  local cfg = cx[CFG]
  local method, target, minor, headers, nxt, body, length, flags = parse_head(cx, cfg)
  if method then return method, target, minor, headers, nxt, body, length, flags end
  if method == nil then return reject(cx, target, minor) end
  return read_head_slow(srv, cx)
end

-- The request and response objects of a parsed head, or nothing when the
-- request is refused (answered and closed here).
local function new_exchange(srv, cx, nreq, method, target, minor, headers, nxt,
                            body, length, flags)
  local cfg = cx[CFG]
  cx[POS] = nxt
  local keep
  if minor == 1 then keep = band(flags, F_CLOSE) == 0
  else keep = band(flags, F_KEEPALIVE) ~= 0 and band(flags, F_CLOSE) == 0 end
  if nreq >= cfg.max_requests_per_connection or srv.closing then keep = false end
  cx[KEEP] = keep
  if body == BODY_LENGTH and length > cfg.max_body_size then
    return reject(cx, 413, "request body too large")
  elseif body == BODY_CHUNKED then
    local okc, st, msg = scan_chunks(cx[BUF], nxt, cfg.max_body_size,
                                     cfg.max_header_size, cfg.max_headers)
    if not okc then return reject(cx, st, msg) end
  end
  -- (a small table: what the handler may not need is made by Req.__index.
  -- Every field of a constructor has a constant value, then the stores:
  -- the embedded bytecode's template keeps only the keys whose value is
  -- a constant, and each key stored beyond them would grow the table
  -- through a rehash.)
  local req = setmetatable({false, false, 0, 0, 0, method = false, target = false}, Req)
  req[R_CX], req[R_BUF], req[R_HPOS], req[R_MINOR] = cx, cx[BUF], headers, minor
  req.method, req.target = method, target
  local res = setmetatable({false, false, false, false}, Res)
  res[S_CX], res[S_REQ] = cx, req
  if body ~= BODY_NONE then
    req[R_STATE] = body == BODY_LENGTH and B_LENGTH or B_SIZE
    req._left, req._total = length, 0
    req._continue = band(flags, F_CONTINUE) ~= 0
    req._res = res
  end
  return req, res
end

-- The requests of a connection's buffer, one after the other (and the
-- rest of one that came in part): true once the buffer is empty and the
-- connection waits for more, or false when it is done (closed here).
local function serve_buffered(srv, cx)
  repeat
    local method, target, minor, headers, nxt, body, length, flags = read_head(srv, cx)
    if not method then return false end
    local nreq = cx[NREQ] + 1
    cx[NREQ] = nreq
    local req, res = new_exchange(srv, cx, nreq, method, target, minor, headers,
                                  nxt, body, length, flags)
    if not req then return false end
    if not run_request(cx, req, res) then close_conn(cx); return false end
  until cx[POS] > #cx[BUF]
  return true
end

-- The end of a connection: closed (gracefully when close is set: an
-- error there ends the task, and conn_done comes back here without it),
-- and counted out. (A stream's close is idempotent.)
local function serve_end(srv, cx, close)
  if close then close_conn(cx) end
  srv.live[cx] = nil
  srv.n = srv.n - 1
  cx[CLOSED] = true
  cx[CONN]:close()
end

-- The reads and requests of a connection, until it ends. The wait for
-- the next request is here, in a small frame and not under a pcall: a
-- parked idle connection keeps its coroutine's stack at the size it was
-- made with (deeper, the stack doubles: 0.4 KiB more per connection).
local function serve_loop(srv, cx)
  local cfg, conn = cx[CFG], cx[CONN]
  repeat
    if srv.closing then return serve_end(srv, cx, true) end
    cx[DEADLINE] = now() + (cx[NREQ] == 0 and cfg.headers_timeout or cfg.keepalive_timeout)
    cx[ST] = IDLE
    local d = conn:read()
    cx[DEADLINE], cx[ST] = false, false
    if not d then
      cx[BROKEN] = not cx[TIMED_OUT]
      return serve_end(srv, cx, true)
    end
    append(cx, d)
  until not serve_buffered(srv, cx)
  return serve_end(srv, cx, false)
end

-- A task that goes on with a connection after its handler failed (see
-- conn_done): the 500 (or the status of a failed body) when nothing was
-- sent yet, then the requests that follow when the connection is kept.
local function after_failure(cx)
  local srv, res = cx[SRV], cx[CUR]
  cx[CUR] = false
  local keep = false
  if not res[S_SENT] then
    res[S_DONE] = false
    respond_error(res, res[S_REQ]._err or 500)
    keep = cx[KEEP] and not cx[BROKEN]
  end
  if not keep then return serve_end(srv, cx, true) end
  if cx[POS] <= #cx[BUF] and not serve_buffered(srv, cx) then
    return serve_end(srv, cx, false)
  end
  return serve_loop(srv, cx)
end

-- The end of a connection's task (tide._on_finish). One that returned has
-- closed its connection and counted it out (serve_end). Handlers run in
-- the task itself, not under xpcall (with Debian 12's LuaJIT, an xpcall
-- handler called for a stack overflow in compiled code can crash the
-- process, LuaJIT issue #1196; an error that ends a coroutine does not):
-- a handler's error ends the task, and is logged here, with the traceback
-- of the dead coroutine, and answered by a new task that goes on with the
-- connection. Any other failure ends the connection here.
-- (The connection is seen to first: the error object's __tostring may
-- fail or try to wait, and safe_tostring turns that into a message.)
local function conn_done(t, cx)
  if t:status() == "done" then return end
  local e, res = t.err, cx[CUR]
  if res and not cx[GONE] then
    cx[ST] = false
    local nt = spawn_own(after_failure, cx)
    cx[TASK] = nt
    on_finish(nt, conn_done, cx)
    log_error(cx, res[S_REQ], type(e) == "string" and e or safe_tostring(e))
    return true
  end
  cx[BROKEN] = true
  serve_end(cx[SRV], cx, false)
  if not cx[GONE] and not is_cancel(e) then
    stderr:write("tide.http: ", safe_tostring(e), "\n")
  end
  return true
end

-- A connection's task, from the server's listener.
local function serve_conn(srv, conn)
  local cfg = srv.cfg
  local cx = {conn, "", 1, cfg, false, true, current(), false, false, false, false,
              false, false, 0, false}
  cx[SRV] = srv
  on_finish(cx[TASK], conn_done, cx)
  conn:set_timeout(nil, cfg.send_timeout)
  srv.n = srv.n + 1
  srv.live[cx] = true
  if srv.n > cfg.max_connections then
    reject(cx, 503, "too many connections")
    return serve_end(srv, cx, false)
  end
  return serve_loop(srv, cx)
end

local Server = {}
Server.__index = Server

-- close(): stops accepting; idle keep-alive connections close now, busy
-- ones after their current response
function Server.close(srv)
  if srv.closing then return end
  srv.closing = true
  srv.net:close() -- (the sweeper goes on for the connections still open)
  for cx in pairs(srv.live) do
    if cx[ST] == IDLE and not cx[CLOSED] then cx[CLOSED] = true; cx[CONN]:close() end
  end
end

function Server.__tostring(srv)
  return ("tide.http.server (%s:%s%s)"):format(srv.host, srv.port,
    srv.closing and ", closed" or "")
end

-- http.serve{host=, port=, tls=, handler=fn(req, res), limits...} -> server
function http.serve(opts)
  local cfg = check_serve(opts)
  local srv = setmetatable({cfg = cfg, n = 0, live = setmetatable({}, {__mode = "k"}),
                            closing = false}, Server)
  local lopts = {host = opts.host or "0.0.0.0", port = opts.port or 0,
                 path = opts.path, backlog = opts.backlog,
                 reuseport = opts.reuseport, tls = opts.tls,
                 handler = function(conn) return serve_conn(srv, conn) end}
  if opts.path then lopts.host, lopts.port = nil, nil end
  local s, e, code = net.listen(lopts)
  if not s then return nil, e, code end
  srv.net = s
  srv.host, srv.port, srv.path = s.host, s.port, s.path
  local tick = math.min(cfg.headers_timeout, cfg.body_timeout, cfg.keepalive_timeout) / 4
  tick = tick < 0.01 and 0.01 or tick > 1 and 1 or tick
  srv.sweeper = tide.every(tick, sweep, srv)
  srv.sweeper:unref()
  return srv
end

-- the client --------------------------------------------------------------------------

http.max_idle_per_host = 16 -- idle keep-alive connections kept per origin
http.idle_timeout = 30      -- seconds an idle pooled connection is kept
local MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS = 65536, 200

local pool = {} -- origin -> {conn, idle since, conn, idle since, ...}
local idle_usable = C.idle_usable

-- whether a pooled connection idle since `since` may carry a request at t
local function reusable(cx, since, t)
  return t - since < http.idle_timeout and not cx.conn_closed and
         idle_usable(cx.conn[1])
end

local function pool_take(origin)
  local list = pool[origin]
  if not list then return nil end
  local t = now()
  while #list > 0 do
    local n = #list
    local cx, since = list[n - 1], list[n]
    list[n], list[n - 1] = nil, nil
    if reusable(cx, since, t) then return cx end
    cx.conn:close()
  end
  pool[origin] = nil
  return nil
end

-- Every second while connections are pooled, those past idle_timeout, or
-- closed by their server (or sent bytes unasked), are closed, whatever
-- their origin: a program that met many origins keeps no descriptors
-- for them. The timer does not keep the loop alive.
local pool_timer = false

local function pool_sweep()
  local t, left = now(), false
  for origin, list in pairs(pool) do
    local keep = {}
    for i = 1, #list, 2 do
      local cx, since = list[i], list[i + 1]
      if reusable(cx, since, t) then
        keep[#keep + 1], keep[#keep + 2] = cx, since
      else
        cx.conn:close()
      end
    end
    if #keep > 0 then pool[origin] = keep; left = true else pool[origin] = nil end
  end
  if not left and pool_timer then pool_timer:stop(); pool_timer = false end
end

local function pool_put(origin, cx)
  local list = pool[origin]
  if not list then list = {}; pool[origin] = list end
  if #list >= 2 * http.max_idle_per_host then
    cx.conn:close()
    return
  end
  list[#list + 1], list[#list + 2] = cx, now()
  if not pool_timer then
    pool_timer = tide.every(1, pool_sweep)
    pool_timer:unref()
  end
end

-- http.close_idle(): closes every pooled connection
function http.close_idle()
  for origin, list in pairs(pool) do
    for i = 1, #list, 2 do list[i].conn:close() end
    pool[origin] = nil
  end
  if pool_timer then pool_timer:stop(); pool_timer = false end
end

-- url -> scheme, host, port, target
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then return nil, scheme end
  local auth, target = rest:match("^([^/?#]*)(.*)$")
  target = target:gsub("#.*$", "")
  if target == "" then target = "/"
  elseif byte(target, 1) == 63 then target = "/" .. target end
  auth = auth:gsub("^.*@", "")
  local host, port = auth:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then
    -- a name or an IPv4 address: letters, digits, '.', '-', '_', at most
    -- 253 characters (anything else is a malformed URL, not a connect error)
    host, port = auth:match("^([%w._-]*):?(%d*)$")
    if host and #host > 253 then return nil end
  end
  if not host or host == "" then return nil end
  port = port ~= "" and tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then return nil end
  if find(target, "[%z%s]") then return nil end
  return scheme, host, port, target
end

-- Resolves a Location against the URL it came from.
local function resolve(base, loc)
  if find(loc, "^%a[%w+.-]*://") then return loc end
  local scheme, auth, path = base:match("^(%a[%w+.-]*)://([^/?#]*)([^?#]*)")
  if sub(loc, 1, 2) == "//" then return scheme .. ":" .. loc end
  if sub(loc, 1, 1) == "/" then return scheme .. "://" .. auth .. loc end
  local dir = path:match("^(.*/)") or "/"
  return scheme .. "://" .. auth .. dir .. loc
end

local function fail_eproto(msg) return nil, "malformed response: " .. msg, "EPROTO" end

-- One client connection's reads, with a deadline.
local function cfill(cx, deadline)
  local t = false
  if deadline then
    t = deadline - tide.hrtime()
    if t <= 0 then return nil, "timed out", "ETIMEDOUT" end
  end
  if t ~= cx.rt then cx.rt = t; cx.conn:set_timeout(t or nil) end
  local d, e, code = cx.conn:read()
  if not d then
    if e == nil then return nil, "connection closed by the server", "ECONNRESET" end
    return nil, e, code
  end
  capp(cx, d)
  cx.got = true
  return true
end

-- Reads the body of a response into parts.
local function read_body(cx, kind, length, until_close, deadline, max)
  local parts, n, size = {}, 0, 0
  local function add(d)
    size = size + #d
    if size > max then return false end
    n = n + 1
    parts[n] = d
    return true
  end
  -- `left` bytes of body, a piece at a time as they come (never the whole
  -- announced size in the buffer first)
  local function take(left)
    while left > 0 do
      local a = cavail(cx)
      if a == 0 then
        local ok, e, code = cfill(cx, deadline)
        if not ok then return nil, e, code end
        a = cavail(cx)
      end
      if a > left then a = left end
      if not add(sub(cx.buf, cx.pos, cx.pos + a - 1)) then
        return nil, "response body too large", "E2BIG"
      end
      cx.pos = cx.pos + a
      left = left - a
    end
    return true
  end
  if kind == BODY_LENGTH then
    if length > max then return nil, "response body too large", "E2BIG" end
    local ok, e, code = take(length)
    if not ok then return nil, e, code end
  elseif kind == BODY_CHUNKED then
    while true do
      local size_, nxt = chunk_size(cx.buf, cx.pos)
      if size_ == nil then return fail_eproto("bad chunk size") end
      if size_ == false then
        local ok, e, code = cfill(cx, deadline)
        if not ok then return nil, e, code end
      else
        cx.pos = nxt
        if size_ == 0 then
          while true do
            local t, nx = parse_trailers(cx.buf, cx.pos, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS)
            if t then cx.pos = nx; break end
            if t == nil then return fail_eproto("bad trailer") end
            local ok, e, code = cfill(cx, deadline)
            if not ok then return nil, e, code end
          end
          break
        end
        -- over the limit: at once, before its bytes are read
        if size + size_ > max then return nil, "response body too large", "E2BIG" end
        local ok, e, code = take(size_)
        if not ok then return nil, e, code end
        while cavail(cx) < 2 do
          local ok, e, code = cfill(cx, deadline)
          if not ok then return nil, e, code end
        end
        if sub(cx.buf, cx.pos, cx.pos + 1) ~= "\r\n" then
          return fail_eproto("chunk without its CRLF")
        end
        cx.pos = cx.pos + 2
      end
    end
  elseif until_close then
    if cavail(cx) > 0 then
      add(sub(cx.buf, cx.pos)); cx.pos = #cx.buf + 1
    end
    while true do
      local t = false
      if deadline then
        t = deadline - tide.hrtime()
        if t <= 0 then return nil, "timed out", "ETIMEDOUT" end
      end
      cx.conn:set_timeout(t or nil)
      local d, e, code = cx.conn:read()
      if not d then
        if e then return nil, e, code end
        break
      end
      if not add(d) then return nil, "response body too large", "E2BIG" end
    end
  end
  return n == 1 and parts[1] or concat(parts)
end

local REQUEST_OPTS = {method = true, url = true, headers = true, body = true,
                      timeout = true, follow = true, tls = true,
                      max_body_size = true}

-- One exchange on one connection (no redirects). Returns the response
-- table, or nil, msg, code, retry (retry: a reused connection failed
-- before any answer).
local function exchange(scheme, host, port, target, method, headers, body,
                        deadline, tls, max)
  local origin = scheme .. "://" .. host .. ":" .. port
  local cx = pool_take(origin)
  local reused = cx ~= nil
  if not cx then
    local copts = {host = host, port = port}
    if deadline then
      copts.timeout = deadline - tide.hrtime()
      if copts.timeout <= 0 then return nil, "timed out", "ETIMEDOUT" end
    end
    if scheme == "https" then
      -- (net.connect verifies the server against host, by default)
      copts.tls = type(tls) == "table" and tls or true
      local conn, e, code = net.connect(copts)
      if not conn then return nil, e, code end
      cx = {conn = false, buf = "", pos = 1, rt = nil}
      cx.conn = conn
    else
      local conn, e, code = net.connect(copts)
      if not conn then return nil, e, code end
      cx = {conn = false, buf = "", pos = 1, rt = nil}
      cx.conn = conn
    end
  end
  cx.got = false
  local conn = cx.conn
  local hostport = (find(host, ":", 1, true) and "[" .. host .. "]" or host) ..
                   ((scheme == "http" and port == 80 or scheme == "https" and port == 443)
                    and "" or ":" .. port)
  local parts = {method, " ", target, " HTTP/1.1\r\n"}
  local have = {}
  if headers then
    for k, v in pairs(headers) do
      parts[#parts + 1] = k .. ": " .. v .. "\r\n"
      have[lower(k)] = true
    end
  end
  if not have.host then parts[#parts + 1] = "Host: " .. hostport .. "\r\n" end
  if not have["user-agent"] then parts[#parts + 1] = "User-Agent: tide\r\n" end
  local chunked = false
  if type(body) == "string" then
    if not have["content-length"] and (#body > 0 or method == "POST" or method == "PUT" or method == "PATCH") then
      parts[#parts + 1] = "Content-Length: " .. #body .. "\r\n"
    end
  elseif type(body) == "function" then
    chunked = true
    parts[#parts + 1] = "Transfer-Encoding: chunked\r\n"
  end
  parts[#parts + 1] = "\r\n"
  local t = false
  if deadline then
    t = deadline - tide.hrtime()
    if t <= 0 then conn:close(); return nil, "timed out", "ETIMEDOUT" end
  end
  conn:set_timeout(t or nil)
  cx.rt = t
  local ok, e, code
  if type(body) == "string" and #body > 0 then
    ok, e, code = conn:write(concat(parts), body)
  else
    ok, e, code = conn:write(concat(parts))
  end
  if ok and chunked then
    while true do
      local piece = body()
      if piece == nil then break end
      if type(piece) ~= "string" then
        conn:close()
        error("request body function must return strings or nil, got " .. type(piece), 0)
      end
      if #piece > 0 then
        ok, e, code = conn:write(format("%x\r\n", #piece), piece, "\r\n")
        if not ok then break end
      end
    end
    if ok then ok, e, code = conn:write("0\r\n\r\n") end
  end
  if not ok then
    conn:close()
    return nil, e, code, reused
  end
  -- the head (interim 1xx answers are skipped)
  local status, reason, minor, rh, nxt, kind, length, flags
  while true do
    status, reason, minor, rh, nxt, kind, length, flags =
      parse_response(cx.buf, cx.pos, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS)
    if status == nil then conn:close(); return fail_eproto(minor) end
    if status then
      cx.pos = nxt
      if status >= 200 then break end
      if status == 101 then conn:close(); return fail_eproto("unexpected 101") end
    else
      local got = cx.got
      ok, e, code = cfill(cx, deadline)
      if not ok then
        conn:close()
        if code == "ECONNRESET" and cavail(cx) > 0 then return fail_eproto("truncated head") end
        return nil, e, code, reused and not got
      end
    end
  end
  local until_close = band(flags, F_UNTIL_CLOSE) ~= 0
  if method == "HEAD" or status == 204 or status == 304 then
    kind, until_close = 0, false
  end
  local rbody, be, bcode = read_body(cx, kind, length, until_close, deadline, max)
  if not rbody then conn:close(); return nil, be, bcode end
  local keep = not until_close and band(flags, F_CLOSE) == 0 and
               (minor == 1 or band(flags, F_KEEPALIVE) ~= 0)
  if keep and cavail(cx) == 0 then
    cx.buf, cx.pos = "", 1
    pool_put(origin, cx)
  else
    conn:close()
  end
  -- (constants in the constructor, then the stores: see new_exchange;
  -- url is set by http.request)
  local r = {status = 0, reason = false, version = false, headers = false,
             body = false, url = false}
  r.status, r.reason, r.version, r.headers, r.body =
    status, reason, minor == 1 and "1.1" or "1.0", rh, rbody
  return r
end

-- http.request{method=, url=, headers=, body=, timeout=, follow=, tls=,
-- max_body_size=} -> {status=, reason=, headers=, body=, version=, url=}
-- | nil, msg, code
function http.request(opts)
  if type(opts) ~= "table" then argerror(1, "request", "options table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not REQUEST_OPTS[k] then argerror(1, "request", "unknown option '" .. tostring(k) .. "'") end
  end
  local url = opts.url
  if type(url) ~= "string" then argerror(1, "request", "option 'url' must be a string, got " .. type(url)) end
  local method = opts.method or "GET"
  if not is_token(method) then argerror(1, "request", "option 'method' must be a token, got " .. describe(method)) end
  method = upper(method)
  local headers = opts.headers
  if headers ~= nil then
    if type(headers) ~= "table" then argerror(1, "request", "option 'headers' must be a table") end
    for k, v in pairs(headers) do
      if not is_token(k) then argerror(1, "request", "header name must be a token, got " .. describe(k)) end
      if type(v) == "number" then v = tostring(v); headers[k] = v end
      if type(v) ~= "string" or bad_value(v) then
        argerror(1, "request", "header '" .. k .. "' must be a string without CR, LF or NUL")
      end
    end
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" and type(body) ~= "function" then
    argerror(1, "request", "option 'body' must be a string or a function, got " .. type(body))
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    argerror(1, "request", "option 'timeout' must be a non-negative number, got " .. describe(timeout))
  end
  local follow = opts.follow or 0
  if type(follow) ~= "number" or follow < 0 or follow ~= floor(follow) then
    argerror(1, "request", "option 'follow' must be a non-negative integer, got " .. describe(follow))
  end
  local max = opts.max_body_size or huge
  local deadline = timeout and timeout ~= huge and tide.hrtime() + timeout
  local redirects = 0
  while true do
    local scheme, host, port, target = parse_url(url)
    if not scheme then
      if host then return nil, "unsupported URL scheme: " .. host, "EINVAL" end
      return nil, "malformed URL: " .. url, "EINVAL"
    end
    local res, e, code, retry = exchange(scheme, host, port, target, method,
                                         headers, body, deadline, opts.tls, max)
    if not res and retry and type(body) ~= "function" then
      -- a pooled connection the server had closed: once more, on a new one
      res, e, code = exchange(scheme, host, port, target, method, headers,
                              body, deadline, opts.tls, max)
    end
    if not res then return nil, e, code end
    res.url = url
    local loc = res.headers.location
    local s = res.status
    if not (loc and (s == 301 or s == 302 or s == 303 or s == 307 or s == 308)) or follow == 0 then
      return res
    end
    if redirects >= follow then
      return nil, ("too many redirects (more than %d): %s"):format(follow, url), "ELOOP"
    end
    redirects = redirects + 1
    url = resolve(url, loc)
    if s == 303 or ((s == 301 or s == 302) and method == "POST") then
      if method ~= "HEAD" then method = "GET" end
      body = nil
      if headers then
        local h = {}
        for k, v in pairs(headers) do
          local lk = lower(k)
          if lk ~= "content-length" and lk ~= "content-type" and lk ~= "transfer-encoding" then h[k] = v end
        end
        headers = h
      end
    elseif type(body) == "function" then
      return res -- a streamed body cannot be sent again
    end
  end
end

-- http.get(url[, opts]) -> response | nil, msg, code
function http.get(url, opts)
  if type(url) ~= "string" then argerror(1, "get", "string expected, got " .. type(url)) end
  if opts ~= nil and type(opts) ~= "table" then argerror(2, "get", "options table expected, got " .. type(opts)) end
  local o = {url = url, method = "GET"}
  if opts then for k, v in pairs(opts) do o[k] = v end end
  o.url = url
  return http.request(o)
end

return http
