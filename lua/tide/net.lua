-- lua/tide/net.lua - `require "tide.net"`: TCP and Unix sockets, the
-- byte stream every connection is, and UDP sockets. modules/net.c,
-- modules/stream.c and modules/udp.c are the C half ("tide.net.c");
-- docs/net.md is the manual. Host names go through tide.dns.lookup in the
-- calling task.
--
-- The C half never waits: a call that must wait records what it waits
-- for and returns false, and this half waits with tide._await on the
-- direction's waiter (read or write), then asks again. Readiness wakes a
-- waiter only when its operation can finish (a line has come, the output
-- drained below the low-water mark), and a read() that waits for any data
-- is handed the data with its wake-up.
--
-- A woken task runs before any other (the ready queue is empty between
-- the loop's callbacks), so it asks again before another task can take
-- what it was woken for.
--
-- TLS (modules/tls.c, docs/tls.md) is a session inside the stream: the
-- same calls work on it. This half checks the `tls` options, caches the
-- contexts (one per set of options), and waits for the handshakes.
--
-- Here: argument and option checks (misuse raises, naming the argument),
-- timeouts, tasks that queue behind another task's read or write on the
-- same connection, waking the tasks that wait on a handle when it is
-- closed, and the handler task of each accepted connection.

local tide = require "tide"
local C = require "tide.net.c"

local type, error, tostring, select, pairs, setmetatable, getmetatable,
      xpcall, tonumber =
  type, error, tostring, select, pairs, setmetatable, getmetatable,
  xpcall, tonumber
local floor, huge = math.floor, math.huge
local traceback = debug.traceback
local await, complete, hrtime, spawn, cond, on_finish, spawn_own =
  tide._await, tide._complete, tide.hrtime, tide.spawn, tide.cond,
  tide._on_finish, tide._spawn_own

local s_read, s_some, s_write, s_flush, s_shutdown, s_close, s_cancel =
  C.s_read, C.s_some, C.s_write, C.s_flush, C.s_shutdown, C.s_close, C.s_cancel
local s_bind, s_buffered, s_limits, s_ref =
  C.s_bind, C.s_buffered, C.s_limits, C.s_ref
local getfenv = debug.getfenv
local C_address, C_accept, C_server_cancel = C.address, C.accept, C.server_cancel

local net = {}

local MAX_STRING = 0x7fffff00 -- LuaJIT's strings stop short of 2 GiB

-- the read kinds of s_read
local SOME, LINE, EXACT, UNTIL = 1, 2, 3, 4

net.defaults = {read_high = C.READ_HIGH, write_high = C.WRITE_HIGH,
                write_low = C.WRITE_LOW, max_line = C.MAX_LINE,
                linger = C.LINGER}

-- argument checks -------------------------------------------------------------
-- level: 3 when called by the public function itself, 4 from a checker.
-- Methods number their arguments from the first after self, as Lua does.

local argerror = tide._argerror

local describe = tide._describe

local function check_seconds(s, n, fname)
  if s == nil then return false end
  if type(s) ~= "number" or s ~= s or s == huge or s == -huge then
    argerror(n, fname, "seconds must be a finite number or nil, got " ..
      describe(s), 4)
  end
  return s < 0 and 0 or s
end

local function check_count(v, n, fname, what, min)
  if type(v) ~= "number" or v ~= floor(v) or v < min or v > MAX_STRING then
    argerror(n, fname, ("%s must be an integer from %d to %d, got %s"):format(
      what, min, MAX_STRING, describe(v)), 4)
  end
  return v
end

local function check_port(p, n, fname, min)
  local v = p
  if type(p) == "string" and p:match("^%d+$") then v = tonumber(p) end
  if type(v) ~= "number" or v ~= floor(v) or v < min or v > 65535 then
    argerror(n, fname, ("port must be an integer from %d to 65535, got %s")
      :format(min, describe(p)), 4)
  end
  return v
end

local function remaining(deadline)
  if not deadline then return false end
  local r = deadline - hrtime()
  return r > 0 and r or 0
end

-- A numeric address, "localhost" (127.0.0.1), or a host name for
-- tide.dns.lookup. Returns the address without brackets and its family
-- ("inet", "inet6"; nil: a name to look up).
local function check_host(host, n, fname)
  if type(host) ~= "string" then
    argerror(n, fname, "host must be a string, got " .. type(host), 4)
  end
  if host == "localhost" then return "127.0.0.1", "inet" end
  local family = not host:find("\0", 1, true) and C.parse_host(host)
  if not family then
    if host == "" or #host > 253 or host:find("[%z%s/%[%]]") then
      argerror(n, fname, "host must be an IP address or a host name, got " ..
        describe(host), 4)
    end
    return host, nil
  end
  if host:sub(1, 1) == "[" then host = host:sub(2, -2) end
  return host, family
end

-- The addresses of host name `name` (tide.dns.lookup, in the calling
-- task): {{address, family}, ...} or nil, msg, code.
local dns
local function lookup(name, deadline)
  dns = dns or require "tide.dns"
  local list, e, code = dns.lookup(name, {timeout = deadline and
                                           remaining(deadline) or nil})
  if not list then return nil, e, code end
  local r = {}
  for i = 1, #list do
    local a = list[i]
    r[i] = {a, a:find(":", 1, true) and "inet6" or "inet"}
  end
  if #r == 0 then
    return nil, "ENOTFOUND: no such host: " .. name, "ENOTFOUND"
  end
  return r
end

local function check_path(p, n, fname)
  if type(p) ~= "string" then
    argerror(n, fname, "path must be a string, got " .. type(p), 4)
  end
  if p == "" or #p > 107 or p:find("\0", 1, true) then
    argerror(n, fname, "path must be 1 to 107 bytes without NUL, got " ..
      describe(p), 4)
  end
  return p
end

-- opts: a table whose keys are all in `allowed` (name -> type or checker)
local function check_options(opts, n, fname, allowed)
  if type(opts) ~= "table" then
    argerror(n, fname, "options table expected, got " .. type(opts), 4)
  end
  for k, v in pairs(opts) do
    local kind = allowed[k]
    if not kind then
      argerror(n, fname, "unknown option '" .. tostring(k) .. "'", 4)
    end
    if kind == "boolean" and type(v) ~= "boolean" then
      argerror(n, fname, "option '" .. k .. "' must be a boolean, got " ..
        type(v), 4)
    elseif kind == "function" and type(v) ~= "function" then
      argerror(n, fname, "option '" .. k .. "' must be a function, got " ..
        type(v), 4)
    end
  end
  return opts
end

-- The buffer limits in opts over those of base: {read_high, write_high,
-- write_low, max_line}, checked.
local LIMIT_KEYS = {"read_high", "write_high", "write_low", "max_line"}

local function check_limits(opts, base, n, fname)
  local lim = {}
  for i = 1, 4 do
    local k = LIMIT_KEYS[i]
    local v = opts[k]
    if v == nil then v = base[i]
    else check_count(v, n, fname, "option '" .. k .. "'", k == "write_low" and 0 or 1) end
    lim[i] = v
  end
  if lim[3] > lim[2] then
    argerror(n, fname, ("option 'write_low' (%d) must not exceed 'write_high' (%d)")
      :format(lim[3], lim[2]), 4)
  end
  return lim
end

local DEFAULT_LIMITS = {C.READ_HIGH, C.WRITE_HIGH, C.WRITE_LOW, C.MAX_LINE}

-- waiting -----------------------------------------------------------------------
-- A connection is a table: the stream userdata and the state this half
-- keeps, in array slots (no hash part for them, and a small table).
-- WW is TIDE_STREAM_WRITE_WAITER of modules/stream.h.

local UD, CLOSED, RT, WT, SHUT, WW, RQ, WQ, LIM = 1, 2, 3, 4, 5, 6, 7, 8, 9
-- (and, when set: the host a client named, the TLS context in use)
local HOST, TLS = 10, 11
-- The address fields (conn.family, ...) are array slots too, read through
-- Conn.__index: a table with a hash part of 8 nodes for them would be 192
-- bytes per connection.
local FIELDS = {family = 12, remote_address = 13, remote_port = 14,
                local_address = 15, local_port = 16}

local function signal(h, slot) -- the next task queued for that direction
  local q = h[slot]
  if q then q:signal() end
end

-- A read waits on the stream userdata itself (its environment is the
-- connection): the core calls close() on it when the wait times out or
-- the task is cancelled.
function C.stream_index.close(ud)
  s_cancel(ud, 1)
  signal(getfenv(ud), RQ)
end

-- A write (flush, connect) waits on {handle, WQ}, an accept on
-- {server, S_Q}: made when first needed.
local Waiter = {}
Waiter.__index = Waiter

function Waiter:close()
  local h, slot = self[1], self[2]
  if slot == WQ then s_cancel(h[UD], 2)
  else C_server_cancel(h[UD]) end
  signal(h, slot)
end

local function write_waiter(c)
  local w = setmetatable({c, WQ}, Waiter)
  c[WW] = w
  return w
end

-- Waits in the queue of slot (another task's operation is parked).
local function queue_wait(h, slot, deadline)
  local q = h[slot]
  if not q then q = cond(); h[slot] = q end
  return q:wait(remaining(deadline) or nil)
end

-- A read that s_read parked finishes in the C half, which wakes its task
-- with the read's results (or the wait ends: timed out, closed): the
-- reads tail-call await, so a task parked in a read has no frame of
-- this module on its stack. The C half gives the next task queued
-- behind a read its turn when it wakes the read; a read that times out
-- or is cancelled does it in the waiter's close().

-- The slow path of the reads: another task's read is parked; wait for
-- our turn in the queue, then read.
local function read_turn(c, fname, kind, a, b)
  local tmo = c[RT]
  local deadline = tmo and hrtime() + tmo
  while true do
    local r, e, code = queue_wait(c, RQ, deadline)
    if not r then signal(c, RQ); return nil, e, code end -- timed out
    if c[CLOSED] then signal(c, RQ); return nil, "closed", "ECANCELED" end
    r, e, code = s_read(c[UD], kind, a, b)
    if r ~= false then
      signal(c, RQ) -- (the next one may find data buffered too)
      if e == nil then return r end
      return r, e, code
    end
    if not e then return await(c[UD], remaining(deadline), fname) end
  end
end

-- The slow path of write and flush; pos: the bytes of the data taken (-1:
-- another task's write is parked, queue behind it).
local function write_wait(c, fname, pos, ...)
  local tmo = c[WT]
  local deadline = tmo and hrtime() + tmo
  local w = c[WW] or write_waiter(c)
  local r, e, code
  while true do
    if pos < 0 then
      r, e, code = queue_wait(c, WQ, deadline)
    else
      r, e, code = await(w, deadline and remaining(deadline), fname)
    end
    if not r then break end
    if c[CLOSED] then r, e, code = nil, "closed", "ECANCELED"; break end
    if fname == "flush" then r, e, code = s_flush(c[UD])
    else r, e, code = s_write(c[UD], pos < 0 and 0 or pos, ...) end
    if r ~= false then break end
    pos = e or 0
  end
  local q = c[WQ]
  if q then q:signal() end
  if e == nil then return r end
  return r, e, code
end

-- connections -------------------------------------------------------------------

local methods = {}
local Conn = {}
local rawget = rawget
function Conn.__index(c, k)
  local m = methods[k]
  if m ~= nil then return m end
  local i = FIELDS[k]
  if i then return rawget(c, i) end
end

local function check_conn(c, fname, open)
  if getmetatable(c) ~= Conn then
    error(("bad argument #1 to '%s' (connection expected, got %s)"):format(
      fname, type(c)), 3)
  end
  if open and c[CLOSED] then error("attempt to use a closed connection", 3) end
end

-- (the hot paths test inline and call check_conn only to raise)

function methods.read(c, n)
  if getmetatable(c) ~= Conn or c[CLOSED] then check_conn(c, "read", true) end
  if n == nil then n = MAX_STRING else check_count(n, 1, "read", "count", 1) end
  local r, e, code = s_some(c[UD], n) -- (s_read's kind 1 in two arguments)
  if r ~= false then if e == nil then return r end return r, e, code end
  if e then return read_turn(c, "read", SOME, n) end
  return await(c[UD], c[RT], "read")
end

function methods.read_line(c, max)
  check_conn(c, "read_line", true)
  if max ~= nil then check_count(max, 1, "read_line", "max", 1) end
  local r, e, code = s_read(c[UD], LINE, max)
  if r ~= false then if e == nil then return r end return r, e, code end
  if e then return read_turn(c, "read_line", LINE, max) end
  return await(c[UD], c[RT], "read_line")
end

function methods.read_exactly(c, n)
  check_conn(c, "read_exactly", true)
  check_count(n, 1, "read_exactly", "count", 0)
  local r, e, code = s_read(c[UD], EXACT, n)
  if r ~= false then if e == nil then return r end return r, e, code end
  if e then return read_turn(c, "read_exactly", EXACT, n) end
  return await(c[UD], c[RT], "read_exactly")
end

function methods.read_until(c, sep, max)
  check_conn(c, "read_until", true)
  if type(sep) ~= "string" or sep == "" then
    argerror(1, "read_until", "separator must be a non-empty string, got " ..
      describe(sep))
  end
  if max ~= nil then check_count(max, 2, "read_until", "max", 0) end
  local r, e, code = s_read(c[UD], UNTIL, sep, max)
  if r ~= false then if e == nil then return r end return r, e, code end
  if e then return read_turn(c, "read_until", UNTIL, sep, max) end
  return await(c[UD], c[RT], "read_until")
end

local function check_data(n, ...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local t = type(v)
    if t ~= "string" and t ~= "number" then
      argerror(n + i, "write", "string expected, got " .. t, 4)
    end
  end
end

-- write(data, ...): strings (or numbers) sent in order, as one
function methods.write(c, data, ...)
  if getmetatable(c) ~= Conn or c[CLOSED] then check_conn(c, "write", true) end
  if c[SHUT] then error("attempt to write after shutdown", 2) end
  local t = type(data)
  if t ~= "string" and t ~= "number" then
    argerror(1, "write", "string expected, got " .. t)
  end
  if select("#", ...) > 0 then check_data(1, ...) end
  local r, e, code = s_write(c[UD], 0, data, ...)
  if r == true then return true end
  if r == nil then return nil, e, code end
  return write_wait(c, "write", e, data, ...)
end

-- flush(): waits until everything written went to the kernel
function methods.flush(c)
  check_conn(c, "flush", true)
  local r, e, code = s_flush(c[UD])
  if r ~= false then if e == nil then return r end return r, e, code end
  return write_wait(c, "flush", e or 0)
end

function methods.shutdown(c)
  check_conn(c, "shutdown", true)
  c[SHUT] = true
  return s_shutdown(c[UD])
end

-- close([fn]): idempotent; fn(conn) runs in the close phase. Tasks that
-- wait on the connection get nil, "closed", "ECANCELED".
function methods.close(c, fn)
  check_conn(c, "close")
  if fn ~= nil and type(fn) ~= "function" then
    argerror(1, "close", "function expected, got " .. type(fn))
  end
  if c[CLOSED] then return end
  c[CLOSED] = true
  s_close(c[UD], fn and {fn, c} or nil)
  complete(c[UD], nil, "closed", "ECANCELED")
  if c[WW] then complete(c[WW], nil, "closed", "ECANCELED") end
  if c[RQ] then c[RQ]:broadcast() end
  if c[WQ] then c[WQ]:broadcast() end
end

-- reset(): close at once, dropping what is queued; the peer gets a
-- reset (ECONNRESET) rather than the end of the stream
function methods.reset(c)
  check_conn(c, "reset")
  if c[CLOSED] then return end
  s_close(c[UD], nil, true)
  methods.close(c)
end

-- set_timeout(s[, write_s]): for each read and write call; nil: none
function methods.set_timeout(c, s, ws)
  check_conn(c, "set_timeout", true)
  local r = check_seconds(s, 1, "set_timeout")
  if ws == nil then c[RT], c[WT] = r, r
  else c[RT], c[WT] = r, check_seconds(ws, 2, "set_timeout") end
  -- the write timeout also bounds close()'s flush in the background
  C.s_linger(c[UD], c[WT] or C.LINGER)
end

local LIMIT_OPTS = {read_high = "number", write_high = "number",
                    write_low = "number", max_line = "number"}

function methods.set_buffer_limits(c, opts)
  check_conn(c, "set_buffer_limits", true)
  check_options(opts, 1, "set_buffer_limits", LIMIT_OPTS)
  local lim = check_limits(opts, c[LIM] or DEFAULT_LIMITS, 1, "set_buffer_limits")
  c[LIM] = lim
  s_limits(c[UD], lim[1], lim[2], lim[3], lim[4])
end

function methods.buffered(c)
  check_conn(c, "buffered")
  return s_buffered(c[UD])
end

function methods.set_nodelay(c, on)
  check_conn(c, "set_nodelay", true)
  if c.family == "unix" then return true end -- nothing to do
  return C.nodelay(c[UD], on == nil or on)
end

function methods.set_keepalive(c, on, idle)
  check_conn(c, "set_keepalive", true)
  if idle ~= nil then
    if type(idle) ~= "number" or idle < 1 or idle ~= floor(idle) then
      argerror(2, "set_keepalive", "idle seconds must be a positive integer, got " ..
        describe(idle))
    end
  end
  if c.family == "unix" then return true end
  return C.keepalive(c[UD], on == nil or on, idle)
end

function methods.ref(c)
  check_conn(c, "ref")
  s_ref(c[UD], true)
  return c
end

function methods.unref(c)
  check_conn(c, "unref")
  s_ref(c[UD], false)
  return c
end

local function endpoint(family, address, port)
  if family == "unix" then return address or "(unnamed)" end
  if family == "inet6" then return ("[%s]:%s"):format(address, port) end
  return ("%s:%s"):format(address, port)
end

function Conn.__tostring(c)
  if c[CLOSED] then return "tide.net.conn (closed)" end
  if c.family == "unix" then
    return ("tide.net.conn (%s)"):format(c.remote_address or c.local_address or "unix")
  end
  return ("tide.net.conn (%s -> %s)"):format(
    endpoint(c.family, c.local_address, c.local_port),
    endpoint(c.family, c.remote_address, c.remote_port))
end

-- (the constructor ends with constants, so that the table it copies has
-- every slot: values stored past a constructor's last constant would
-- make LuaJIT resize each new connection's array)
local function wrap(ud, family, address, port, laddr, lport, lim)
  local c = setmetatable({ud, false, false, false, false, false, false, false,
                          false, false, false, false, false, false, false,
                          false}, Conn)
  c[LIM] = lim or false
  c[12], c[13], c[14], c[15], c[16] = family, address, port, laddr, lport
  s_bind(ud, c)
  return c
end

-- TLS ---------------------------------------------------------------------------
-- A context (SSL_CTX) per set of options, built on the worker pool and
-- cached while anything uses it: a server holds its own, a connection the
-- one its session was made from.

local tls_context, tls_attach, tls_info, s_handshake =
  C.tls_context, C.tls_attach, C.tls_info, C.s_handshake
local concat, min = table.concat, math.min

net.defaults.handshake_timeout = 10

local contexts = setmetatable({}, {__mode = "v"})

local TLS_CLIENT = {servername = "string", verify = "boolean", ca = "string",
                    alpn = "table", handshake_timeout = "number"}
local TLS_SERVER = {cert = "string", key = "string", alpn = "table",
                    handshake_timeout = "number"}
local TLS_STARTTLS = {server = "boolean"}
for k, v in pairs(TLS_CLIENT) do TLS_STARTTLS[k] = v end
for k, v in pairs(TLS_SERVER) do TLS_STARTTLS[k] = v end

-- The `tls` option (true: a client's defaults) checked and normalised:
-- {server=, verify=, servername=, ca=, cert=, key=, alpn= (wire format),
-- handshake_timeout=}. Called by the public function itself.
local function check_tls(t, n, fname, server, starttls)
  if t == true then t = {} end
  if type(t) ~= "table" then
    argerror(n, fname, "option 'tls' must be true or a table, got " .. type(t), 4)
  end
  local allowed = starttls and TLS_STARTTLS or server and TLS_SERVER or TLS_CLIENT
  for k, v in pairs(t) do
    local kind = allowed[k]
    if not kind then
      argerror(n, fname, "unknown TLS option '" .. tostring(k) .. "'", 4)
    end
    if type(v) ~= kind then
      argerror(n, fname, ("TLS option '%s' must be a %s, got %s"):format(
        k, kind, type(v)), 4)
    end
    if kind == "string" and (v == "" or v:find("\0", 1, true)) then
      argerror(n, fname, ("TLS option '%s' must be a non-empty string without NUL, got %s")
        :format(k, describe(v)), 4)
    end
  end
  local r = {server = server or false, verify = t.verify ~= false,
             servername = t.servername, ca = t.ca, cert = t.cert, key = t.key,
             handshake_timeout = net.defaults.handshake_timeout}
  if server then
    if not t.cert or not t.key then
      argerror(n, fname, "TLS options 'cert' and 'key' are required for a server", 4)
    end
    r.verify = false
  elseif t.cert or t.key then
    argerror(n, fname, "TLS options 'cert' and 'key' are for servers (server = true)", 4)
  end
  local hto = t.handshake_timeout
  if hto ~= nil then
    if hto ~= hto or hto <= 0 or hto == huge then
      argerror(n, fname, "TLS option 'handshake_timeout' must be a positive number of seconds, got " ..
        describe(hto), 4)
    end
    r.handshake_timeout = hto
  end
  if t.alpn then
    local wire = {}
    for i = 1, #t.alpn do
      local p = t.alpn[i]
      if type(p) ~= "string" or #p == 0 or #p > 255 then
        argerror(n, fname, ("TLS option 'alpn' must list protocol names of 1 to 255 bytes, got %s at %d")
          :format(describe(p), i), 4)
      end
      wire[i] = string.char(#p) .. p
    end
    if #wire == 0 then
      argerror(n, fname, "TLS option 'alpn' must list at least one protocol", 4)
    end
    r.alpn = concat(wire)
  end
  return r
end

-- The context for checked options t (fresh: build it anew, and cache that)
local function context(t, fresh)
  local key = concat({t.server and "s" or "c", t.verify and "v" or "-",
                      t.cert or "", t.key or "", t.ca or "", t.alpn or ""}, "\0")
  local ctx = not fresh and contexts[key]
  if ctx then return ctx end
  local e, code
  ctx, e, code = tls_context(t.server, t.verify, t.cert, t.key, t.ca, t.alpn)
  if not ctx then return nil, e, code end
  contexts[key] = ctx
  return ctx
end

-- Waits for the handshake of c's session: true or nil, msg, code.
local function handshake(c, timeout, fname)
  local r, e, code = s_handshake(c[UD])
  if r == false then
    r, e, code = await(c[WW] or write_waiter(c), timeout or nil, fname)
    if c[CLOSED] then r, e, code = nil, "closed", "ECANCELED"
    elseif code == "ETIMEDOUT" then e = "TLS handshake timed out" end
  end
  signal(c, WQ) -- writes that queued behind the handshake (starttls)
  if not r then return nil, e, code end
  local info = tls_info(c[UD])
  c.alpn = info and info.alpn
  return true
end

-- A client session on c and its handshake. host: the host the client
-- named (a name, or a numeric address), if any.
local function client_tls(c, t, ctx, host, timeout, fname)
  local e, code
  -- a name goes in SNI and is what the certificate must carry; a numeric
  -- address (as host, or as servername) is checked as an IP address and
  -- sent in no SNI (RFC 6066)
  local target = t.servername or host
  local numeric = target and C.parse_host(target)
  local sni = target and not numeric and target or nil
  local name, ip
  if t.verify then
    if sni then name = sni
    elseif numeric then ip = target:gsub("^%[", ""):gsub("%]$", ""):gsub("%%.*", "")
    end
  end
  local ok
  ok, e, code = tls_attach(c[UD], ctx, false, sni, name, ip)
  if not ok then return nil, e, code end
  c[TLS] = ctx
  return handshake(c, timeout and min(timeout, t.handshake_timeout) or
                      t.handshake_timeout, fname)
end

-- A server session on c (context ctx) and its handshake
local function server_tls(c, ctx, timeout, fname)
  local ok, e, code = tls_attach(c[UD], ctx, true)
  if not ok then return nil, e, code end
  c[TLS] = ctx
  return handshake(c, timeout, fname)
end

-- starttls(opts): TLS from now on over this connection, once what was
-- written has been sent; {server = true, cert =, key =} for the server's
-- side. true, or nil, msg, code (then close the connection).
function methods.starttls(c, opts)
  check_conn(c, "starttls", true)
  if c[TLS] then error("attempt to start TLS twice on a connection", 2) end
  if c[SHUT] then error("attempt to start TLS after shutdown", 2) end
  local server = type(opts) == "table" and opts.server == true
  local t = check_tls(opts == nil and true or opts, 1, "starttls", server, true)
  if not server and t.verify and not t.servername and not c[HOST] then
    argerror(1, "starttls", "option 'servername' is required to verify the server of a connection not made by net.connect{host=}")
  end
  -- the context first: the session must start right after the flush, with
  -- no wait in between for another task to write in the clear
  local ctx, e, code = context(t)
  if not ctx then return nil, e, code end
  if c[CLOSED] then return nil, "closed", "ECANCELED" end
  local ok
  ok, e, code = methods.flush(c)
  if not ok then return nil, e, code end
  if server then return server_tls(c, ctx, t.handshake_timeout, "starttls") end
  return client_tls(c, t, ctx, c[HOST], nil, "starttls")
end

-- tls_info() -> {version=, cipher=, alpn=, servername=, peer_subject=,
-- peer_issuer=, verified=, verify_result=, established=}, or nil (plain)
function methods.tls_info(c)
  check_conn(c, "tls_info", true)
  return tls_info(c[UD])
end

-- connect ----------------------------------------------------------------------

-- One address: a connection, or nil, msg, code (shown: where, in messages)
local function connect_to(family, where, port, nodelay, lim, timeout, shown)
  local ud, st, code = C.connect(family, where, port, nodelay,
                                 lim[1], lim[2], lim[3], lim[4])
  if ud == nil then return nil, st .. ": " .. shown, code end
  -- (the local end is bound by connect(2), done or in progress)
  local laddr, lport = C_address(ud, false)
  local c = wrap(ud, family, where, port, laddr, lport,
                 lim ~= DEFAULT_LIMITS and lim)
  if not st then
    local ok, e
    ok, e, code = await(write_waiter(c), timeout or nil, "connect")
    if not ok then
      c:close()
      if code == "ETIMEDOUT" or code == "ECANCELED" then return nil, e, code end
      return nil, e .. ": " .. shown, code
    end
  end
  return c
end

local CONNECT_OPTS = {host = "any", port = "any", path = "any", timeout = "any",
                      nodelay = "boolean", tls = "any", read_high = "number",
                      write_high = "number", write_low = "number",
                      max_line = "number"}

-- The connection of net.connect, before any TLS
local function connect_plain(family, where, port, nodelay, lim, timeout, deadline)
  if family then
    return connect_to(family, where, port, nodelay, lim, timeout,
                      endpoint(family, where, port))
  end
  -- a host name: its addresses in order, until one connects
  local addrs, e, code = lookup(where, deadline)
  if not addrs then return nil, e, code end
  local shown = ("%s:%s"):format(where, port)
  for i = 1, #addrs do
    local c
    c, e, code = connect_to(addrs[i][2], addrs[i][1], port, nodelay, lim,
                            deadline and remaining(deadline), shown)
    if c or code == "ETIMEDOUT" or code == "ECANCELED" then return c, e, code end
  end
  return nil, e, code
end

-- net.connect{host=, port=, path=, timeout=, nodelay=, tls=, limits...}
-- -> conn
function net.connect(opts)
  check_options(opts, 1, "connect", CONNECT_OPTS)
  local tls = opts.tls
  if tls ~= nil and tls ~= false then tls = check_tls(tls, 1, "connect")
  else tls = nil end
  local family, where, port
  if opts.path ~= nil then
    if opts.host ~= nil or opts.port ~= nil then
      argerror(1, "connect", "'path' cannot be combined with 'host' or 'port'")
    end
    family, where = "unix", check_path(opts.path, 1, "connect")
  else
    if opts.port == nil then
      argerror(1, "connect", "option 'port' (or 'path') is required")
    end
    port = check_port(opts.port, 1, "connect", 1)
    where, family = check_host(opts.host == nil and "127.0.0.1" or opts.host,
                               1, "connect")
  end
  local timeout = check_seconds(opts.timeout, 1, "connect")
  local lim = check_limits(opts, DEFAULT_LIMITS, 1, "connect")
  local host = opts.path == nil and (opts.host == nil and "127.0.0.1" or opts.host) or nil
  if tls and tls.verify and not tls.servername and not host then
    argerror(1, "connect", "TLS option 'servername' is required to verify a server at a path")
  end
  local deadline = timeout and hrtime() + timeout
  local ctx, e, code
  if tls then -- (a file that cannot be read fails before connecting)
    ctx, e, code = context(tls)
    if not ctx then return nil, e, code end
  end
  local c
  c, e, code = connect_plain(family, where, port, opts.nodelay ~= false,
                             lim, deadline and remaining(deadline), deadline)
  if not c then return nil, e, code end
  c[HOST] = host or false
  if tls then
    local ok
    ok, e, code = client_tls(c, tls, ctx, host, deadline and remaining(deadline),
                             "connect")
    if not ok then
      c:close()
      return nil, e, code
    end
  end
  return c
end

-- servers ------------------------------------------------------------------------

local Server = {}

-- Shared by servers and UDP sockets ------------------------------------------

-- A closed handle wakes the task waiting on it (w) and those taking turns
-- behind it (q).
local function wake_closed(w, q)
  if w then complete(w, nil, "closed", "ECANCELED") end
  if q then q:broadcast() end
end

-- ref() and unref() for methods, with check(h, fname) and the C half's
-- set_ref(ud, on)
local function ref_methods(methods, check, set_ref)
  function methods.ref(h)
    check(h, "ref")
    set_ref(h[UD], true)
    return h
  end
  function methods.unref(h)
    check(h, "unref")
    set_ref(h[UD], false)
    return h
  end
end
Server.__index = Server
-- slots: 1 the userdata, 2 closed, 3 handler, 4 waiter, 5 queue, 6 limits,
-- 7 the TLS context (false: plain), 8 the handshake timeout, 9 the
-- handler's TLS front (a handshake, then the handler)
local S_HANDLER, S_W, S_Q, S_LIM, S_CTX, S_HTO, S_RUN = 3, 4, 5, 6, 7, 8, 9

local function check_server(sv, fname, open)
  if getmetatable(sv) ~= Server then
    error(("bad argument #1 to '%s' (server expected, got %s)"):format(
      fname, type(sv)), 3)
  end
  if open and sv[CLOSED] then error("attempt to use a closed server", 3) end
end

-- (the poll phase, from the C half) a connection for a handler: its task
-- runs handler(conn) and, however it ends, closes the connection (the
-- handler runs right on the task, with no frame of ours under it: a
-- parked handler's coroutine stays small)
-- (one function for every handler task, given the connection: no closure
-- per connection)
local function handler_done(_, c) c:close() end

local function on_accept(sv, ud, address, port, laddr, lport)
  local c = wrap(ud, sv.family, address, port, laddr, lport, sv[S_LIM])
  on_finish(spawn_own(sv[S_RUN] or sv[S_HANDLER], c), handler_done, c)
end

-- A TLS server's handler task: the handshake with the server's context of
-- the moment, then the handler (a tail call: no frame of ours under it).
-- A failed handshake just ends the task, which closes the connection.
local function tls_front(sv, handler)
  return function(c)
    local ok = server_tls(c, sv[S_CTX], sv[S_HTO], "handler")
    if not ok then
      sv.tls_errors = sv.tls_errors + 1
      return
    end
    return handler(c)
  end
end

local LISTEN_OPTS = {host = "any", port = "any", path = "any", backlog = "any",
                     reuseport = "boolean", handler = "function",
                     nodelay = "boolean", tls = "any", read_high = "number",
                     write_high = "number", write_low = "number",
                     max_line = "number"}

-- net.listen{host=, port=, path=, backlog=, reuseport=, handler=,
-- nodelay=, tls=, limits...} -> server
function net.listen(opts)
  check_options(opts, 1, "listen", LISTEN_OPTS)
  local tls = opts.tls
  if tls ~= nil and tls ~= false then tls = check_tls(tls, 1, "listen", true)
  else tls = nil end
  local family, where, port
  if opts.path ~= nil then
    if opts.host ~= nil or opts.port ~= nil then
      argerror(1, "listen", "'path' cannot be combined with 'host' or 'port'")
    end
    family, where = "unix", check_path(opts.path, 1, "listen")
  else
    port = check_port(opts.port == nil and 0 or opts.port, 1, "listen", 0)
    where, family = check_host(opts.host == nil and "0.0.0.0" or opts.host, 1, "listen")
  end
  local backlog = opts.backlog
  if backlog == nil then backlog = 511
  else check_count(backlog, 1, "listen", "option 'backlog'", 1) end
  local lim = check_limits(opts, DEFAULT_LIMITS, 1, "listen")
  local ud, e, code, ctx
  if tls then -- (the files first: a bad certificate binds nothing)
    ctx, e, code = context(tls, true)
    if not ctx then return nil, e, code end
  end
  if family then
    ud, e, code = C.listen(family, where, port, backlog, opts.reuseport,
                           opts.nodelay ~= false, lim[1], lim[2], lim[3], lim[4])
    if ud == nil then return nil, e .. ": " .. endpoint(family, where, port), code end
  else -- a host name: the first of its addresses that can be bound
    local addrs
    addrs, e, code = lookup(where)
    if not addrs then return nil, e, code end
    for i = 1, #addrs do
      family = addrs[i][2]
      ud, e, code = C.listen(family, addrs[i][1], port, backlog, opts.reuseport,
                             opts.nodelay ~= false, lim[1], lim[2], lim[3], lim[4])
      if ud then break end
    end
    if ud == nil then return nil, ("%s: %s:%s"):format(e, where, port), code end
  end
  local sv = setmetatable({ud, false, opts.handler or false, false, false,
                           lim ~= DEFAULT_LIMITS and lim or false,
                           ctx or false, tls and tls.handshake_timeout or false,
                           false, family = family}, Server)
  if ctx then
    sv.tls_errors = 0
    if opts.handler then sv[S_RUN] = tls_front(sv, opts.handler) end
  end
  if family == "unix" then
    sv.path = where
  else
    sv.host, sv.port = C_address(ud, false)
  end
  if opts.handler then C.serve(ud, on_accept, sv) end
  return sv
end

-- The next connection (timeout: seconds or false)
local function accept_plain(sv, timeout)
  local ud, a, p, la, lp = C_accept(sv[UD])
  local deadline, busy = timeout and hrtime() + timeout, a
  while ud == false do
    local w = sv[S_W]
    if not w then
      w = setmetatable({sv, S_Q}, Waiter)
      sv[S_W] = w
      C.server_set_waiter(sv[UD], w)
    end
    local ok, e, code
    if busy then ok, e, code = queue_wait(sv, S_Q, deadline)
    else ok, e, code = await(w, remaining(deadline), "accept") end
    if not ok then
      signal(sv, S_Q)
      return nil, e, code
    end
    if sv[CLOSED] then signal(sv, S_Q); return nil, "closed", "ECANCELED" end
    ud, a, p, la, lp = C_accept(sv[UD])
    busy = a
    if ud ~= false then signal(sv, S_Q) end
  end
  if ud == nil then return nil, a, p end
  return wrap(ud, sv.family, a, p, la, lp, sv[S_LIM])
end

-- accept([timeout]) -> conn, without a handler; on a TLS server, once its
-- handshake is done (a connection whose handshake fails is closed, and
-- the next one taken, within the timeout)
function Server.accept(sv, timeout)
  check_server(sv, "accept", true)
  if sv[S_HANDLER] then
    error("this server has a handler: it accepts connections itself", 2)
  end
  timeout = check_seconds(timeout, 1, "accept")
  if not sv[S_CTX] then return accept_plain(sv, timeout) end
  local deadline = timeout and hrtime() + timeout
  while true do
    local c, e, code = accept_plain(sv, remaining(deadline))
    if not c then return nil, e, code end
    local hto = sv[S_HTO]
    if deadline then hto = min(hto, remaining(deadline)) end
    local ok
    ok, e, code = server_tls(c, sv[S_CTX], hto, "accept")
    if ok then return c end
    c:close()
    sv.tls_errors = sv.tls_errors + 1
    if sv[CLOSED] then return nil, "closed", "ECANCELED" end
    if deadline and remaining(deadline) <= 0 then
      return nil, "timed out", "ETIMEDOUT"
    end
  end
end

-- set_tls(tls) -> true | nil, msg, code: new certificate, key or ALPN
-- list (the files are read again) for the connections accepted from now
-- on; those already made keep theirs
function Server.set_tls(sv, opts)
  check_server(sv, "set_tls", true)
  if not sv[S_CTX] then error("this server does not run TLS", 2) end
  local t = check_tls(opts, 1, "set_tls", true)
  local ctx, e, code = context(t, true)
  if not ctx then return nil, e, code end
  sv[S_CTX], sv[S_HTO] = ctx, t.handshake_timeout
  return true
end

-- close([fn]): stops accepting (connections already accepted go on);
-- fn(server) runs in the close phase
function Server.close(sv, fn)
  check_server(sv, "close")
  if fn ~= nil and type(fn) ~= "function" then
    argerror(1, "close", "function expected, got " .. type(fn))
  end
  if sv[CLOSED] then return end
  sv[CLOSED] = true
  C.server_close(sv[UD], fn and {fn, sv} or nil)
  wake_closed(sv[S_W], sv[S_Q])
end

ref_methods(Server, check_server, C.server_ref)

function Server.__tostring(sv)
  return ("tide.net.server (%s)"):format(sv[CLOSED] and "closed" or
    endpoint(sv.family, sv.path or sv.host, sv.port))
end

-- UDP ----------------------------------------------------------------------------
-- A socket is a table: slot 1 the userdata, 2 closed, 3 the waiter of a
-- recv_from (made when first needed), 4 the queue of tasks behind it.

local U_W, U_Q = 3, 4
local udp_methods = {}
local Udp = {}
local udp_stats, udp_recv = C.udp_stats, C.udp_recv

function Udp.__index(u, k)
  if k == "drops" then
    local _, drops = udp_stats(u[UD])
    return drops
  end
  return udp_methods[k]
end

local UdpWaiter = {}
UdpWaiter.__index = UdpWaiter

function UdpWaiter:close()
  local u = self[1]
  C.udp_cancel(u[UD])
  signal(u, U_Q)
end

local function check_udp(u, fname, open)
  if getmetatable(u) ~= Udp then
    error(("bad argument #1 to '%s' (UDP socket expected, got %s)"):format(
      fname, type(u)), 3)
  end
  if open and u[CLOSED] then error("attempt to use a closed socket", 3) end
end

local UDP_OPTS = {host = "any", port = "any", queue = "any"}
local MAX_QUEUE = 1000000

-- net.udp{host=, port=, queue=} -> sock | nil, msg, code
function net.udp(opts)
  if opts == nil then opts = {} end
  check_options(opts, 1, "udp", UDP_OPTS)
  local port = check_port(opts.port == nil and 0 or opts.port, 1, "udp", 0)
  local where, family = check_host(opts.host == nil and "0.0.0.0" or opts.host,
                                   1, "udp")
  local queue = opts.queue
  if queue == nil then queue = 1024
  elseif type(queue) ~= "number" or queue ~= floor(queue) or queue < 1 or
         queue > MAX_QUEUE then
    argerror(1, "udp", ("option 'queue' must be an integer from 1 to %d, got %s")
      :format(MAX_QUEUE, describe(queue)))
  end
  local ud, e, code
  if family then
    ud, e, code = C.udp_open(family, where, port, queue)
    if ud == nil then return nil, e .. ": " .. endpoint(family, where, port), code end
  else -- a host name: the first of its addresses that can be bound
    local addrs
    addrs, e, code = lookup(where)
    if not addrs then return nil, e, code end
    for i = 1, #addrs do
      family = addrs[i][2]
      ud, e, code = C.udp_open(family, addrs[i][1], port, queue)
      if ud then break end
    end
    if ud == nil then return nil, ("%s: %s:%s"):format(e, where, port), code end
  end
  local u = setmetatable({ud, false, false, false, family = family}, Udp)
  u.local_address, u.local_port = C.udp_address(ud)
  u.host, u.port = u.local_address, u.local_port
  return u
end

-- send_to(data, host, port) -> true | nil, msg, code; never waits
function udp_methods.send_to(u, data, host, port)
  check_udp(u, "send_to", true)
  if type(data) ~= "string" then
    argerror(1, "send_to", "string expected, got " .. type(data))
  end
  if #data > C.UDP_MAX then
    argerror(1, "send_to", ("datagram must be at most %d bytes, got %d")
      :format(C.UDP_MAX, #data))
  end
  if type(host) ~= "string" or not C.parse_host(host) or host:find("\0", 1, true) then
    argerror(2, "send_to", "host must be a numeric IPv4 or IPv6 address, got " ..
      describe(host))
  end
  port = check_port(port, 3, "send_to", 1)
  if host:sub(1, 1) == "[" then host = host:sub(2, -2) end
  local ok, e, code = C.udp_send(u[UD], data, host, port)
  if ok then return true end
  return nil, e .. ": " .. endpoint(C.parse_host(host), host, port), code
end

-- recv_from([timeout]) -> data, host, port | nil, msg, code
function udp_methods.recv_from(u, timeout)
  check_udp(u, "recv_from", true)
  timeout = check_seconds(timeout, 1, "recv_from")
  local w = u[U_W]
  if not w then w = setmetatable({u}, UdpWaiter); u[U_W] = w end
  local d, a, p = udp_recv(u[UD], w)
  if d ~= false then return d, a, p end
  local deadline, busy = timeout and hrtime() + timeout, a
  while true do
    local ok, e, code
    if busy then ok, e, code = queue_wait(u, U_Q, deadline)
    else ok, e, code = await(w, remaining(deadline), "recv_from") end
    if not ok then signal(u, U_Q); return nil, e, code end
    if u[CLOSED] then signal(u, U_Q); return nil, "closed", "ECANCELED" end
    d, a, p = udp_recv(u[UD], w)
    if d ~= false then signal(u, U_Q); return d, a, p end
    busy = a
  end
end

-- stats() -> {queued=, drops=, received=}
function udp_methods.stats(u)
  check_udp(u, "stats")
  local q, drops, received = udp_stats(u[UD])
  return {queued = q, drops = drops, received = received}
end

-- close(): idempotent; a task waiting in recv_from gets nil, "closed",
-- "ECANCELED"
function udp_methods.close(u)
  check_udp(u, "close")
  if u[CLOSED] then return end
  u[CLOSED] = true
  C.udp_close(u[UD])
  wake_closed(u[U_W], u[U_Q])
end

ref_methods(udp_methods, check_udp, C.udp_ref)

function Udp.__tostring(u)
  return ("tide.net.udp (%s)"):format(u[CLOSED] and "closed" or
    endpoint(u.family, u.local_address, u.local_port))
end

-- tide.stats() gets udp_drops: what every UDP socket dropped
do
  local core_stats, total = tide.stats, C.udp_total_drops
  function tide.stats()
    local s = core_stats()
    s.udp_drops = total()
    return s
  end
end

-- Other modules that make streams (process pipes, stdio) wrap them here.
net._wrap = wrap

return net
