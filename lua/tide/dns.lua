-- lua/tide/dns.lua - `require "tide.dns"`: names to addresses.
-- modules/dns.c is the C half ("tide.dns.c"); docs/dns.md is the manual.
--
--   dns.lookup(name[, {family=, all=, timeout=}])   getaddrinfo on the pool,
--       as the system resolves names (/etc/hosts, nsswitch, resolv.conf)
--   dns.resolve(name[, type[, {timeout=}]])          DNS queries with
--       libevent's asynchronous resolver (evdns) in the loop
--   dns.reverse(ip[, {timeout=}])                    resolve(ip, "PTR")
--   dns.resolver([{servers=, resolv_conf=, timeout=, tries=}]) -> resolver
--       a resolver of its own (r:resolve, r:reverse, r:servers, r:close, ...)
--   dns.configure([opts])                            the default resolver's
--       settings, as for dns.resolver; no argument: back to the system's
--   dns.is_ip(s) -> 4, 6 or false
--
-- This half checks arguments and options (misuse raises, naming the
-- argument), answers numeric addresses without the pool, and waits on the
-- requests the C half starts.

local tide = require "tide"
local C = require "tide.dns.c"

local type, error, pairs, tostring, getmetatable =
  type, error, pairs, tostring, getmetatable
local floor, huge = math.floor, math.huge
local await, current = tide._await, tide.current
local is_ip, TYPES = C.is_ip, C.types
local Resolver = C.resolver_mt.__index

local dns = {}

-- argument checks -----------------------------------------------------------
-- Every checker takes lvl, the level of error() that names the caller of
-- the public function: 3 for a checker the public function calls, one more
-- for each checker in between. (No tail calls here: they would drop a
-- level.)

local function argerror(n, fname, msg, lvl)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), lvl)
end

local describe = tide._describe

-- a host name: a non-empty string without NUL bytes
local function check_name(name, n, fname, what, lvl)
  if type(name) ~= "string" then
    argerror(n, fname, what .. " must be a string, got " .. type(name), lvl + 1)
  end
  if name == "" then argerror(n, fname, what .. " must not be empty", lvl + 1) end
  if name:find("\0", 1, true) then
    argerror(n, fname, what .. " must not contain a NUL byte", lvl + 1)
  end
  return name
end

local function check_seconds(v, n, fname, what, min, lvl)
  if type(v) ~= "number" or v ~= v or v == huge or v == -huge then
    argerror(n, fname, "option '" .. what .. "' must be a finite number " ..
      "of seconds, got " .. describe(v), lvl + 1)
  end
  if min and v < min then
    argerror(n, fname, ("option '%s' must be at least %g seconds, got %s"):format(
      what, min, describe(v)), lvl + 1)
  end
end

local NO_OPTIONS = {}

-- opts: nil or a table whose keys are all in `allowed` (name -> checker,
-- called as check(value, n, fname, name, lvl))
local function check_options(opts, n, fname, allowed, lvl)
  if opts == nil then return NO_OPTIONS end
  if type(opts) ~= "table" then
    argerror(n, fname, "options must be a table, got " .. type(opts), lvl + 1)
  end
  for k, v in pairs(opts) do
    local check = allowed[k]
    if not check then
      argerror(n, fname, "unknown option '" .. tostring(k) .. "'", lvl + 1)
    end
    check(v, n, fname, k, lvl + 1)
  end
  return opts
end

local function opt_boolean(v, n, fname, k, lvl)
  if type(v) ~= "boolean" then
    argerror(n, fname, "option '" .. k .. "' must be a boolean, got " ..
      type(v), lvl + 1)
  end
end

local function opt_family(v, n, fname, k, lvl)
  if v ~= 0 and v ~= 4 and v ~= 6 then
    argerror(n, fname, "option 'family' must be 0, 4 or 6, got " ..
      describe(v), lvl + 1)
  end
end

-- a call's own deadline (seconds; a negative one is 0, as in the core)
local function opt_timeout(v, n, fname, k, lvl)
  check_seconds(v, n, fname, k, nil, lvl + 1)
end

-- calls that wait must run in a task (lvl 3: called by the public function)
local function need_task(fname)
  if not current() then
    error(("'%s' must be called inside a task"):format(fname), 3)
  end
end

-- numeric addresses ----------------------------------------------------------

-- dns.is_ip(s) -> 4 or 6 (an IPv4 or IPv6 address in text), or false
function dns.is_ip(s)
  if type(s) ~= "string" then return false end
  return (is_ip(s))
end

local function family_of(addr)
  return addr:find(":", 1, true) and 6 or 4
end

-- lookup ------------------------------------------------------------------------

local LOOKUP_OPTIONS = {family = opt_family, all = opt_boolean,
                       timeout = opt_timeout}

-- dns.lookup(name[, opts]) -> {address, ...} (all=false: address, family)
-- / nil, message, code
function dns.lookup(name, opts)
  check_name(name, 1, "lookup", "name", 3)
  opts = check_options(opts, 2, "lookup", LOOKUP_OPTIONS, 3)
  local list
  local fam, addr = is_ip(name)
  if fam then
    -- the address itself, at once, whatever the family option says (as
    -- Node does)
    list = {addr}
  else
    need_task("lookup")
    local msg, code
    local timeout = opts.timeout
    if timeout and timeout < 0 then timeout = 0 end
    list, msg, code = await(C.lookup(name, opts.family or 0), timeout, "lookup")
    if not list then return nil, msg, code end
  end
  if opts.all == false then return list[1], family_of(list[1]) end
  return list
end

-- resolvers -------------------------------------------------------------------

local RESOLVER_MT = C.resolver_mt

local function check_resolver(r, fname)
  if getmetatable(r) ~= RESOLVER_MT then
    error(("bad argument #1 to '%s' (resolver expected, got %s)"):format(
      fname, type(r)), 3)
  end
  if r:closed() then error("attempt to use a closed resolver", 3) end
end

local RESOLVER_OPTIONS = {
  servers = function(v, n, fname, k, lvl)
    if type(v) ~= "table" then
      argerror(n, fname, "option 'servers' must be a list of strings, got " ..
        type(v), lvl + 1)
    end
    if #v == 0 then
      argerror(n, fname, "option 'servers' must name at least one server",
        lvl + 1)
    end
    for i = 1, #v do
      if type(v[i]) ~= "string" then
        argerror(n, fname, ("servers[%d] must be a string, got %s"):format(
          i, type(v[i])), lvl + 1)
      end
    end
  end,
  resolv_conf = function(v, n, fname, k, lvl)
    if type(v) ~= "string" or v == "" or v:find("\0", 1, true) then
      argerror(n, fname, "option 'resolv_conf' must be a path, got " ..
        describe(v), lvl + 1)
    end
  end,
  timeout = function(v, n, fname, k, lvl)
    check_seconds(v, n, fname, k, 0.001, lvl + 1)
  end,
  tries = function(v, n, fname, k, lvl)
    if type(v) ~= "number" or v ~= floor(v) or v < 1 or v > 255 then
      argerror(n, fname, "option 'tries' must be an integer from 1 to 255, got " ..
        describe(v), lvl + 1)
    end
  end,
}

-- (lvl 3: called by the public function)
local function new_resolver(opts, fname)
  opts = check_options(opts, 1, fname, RESOLVER_OPTIONS, 4)
  if opts.servers and opts.resolv_conf then
    argerror(1, fname, "give 'servers' or 'resolv_conf', not both", 4)
  end
  local r, msg, code = C.resolver(opts.servers, opts.resolv_conf,
                                  opts.timeout, opts.tries)
  if r then return r end
  if msg == false then
    argerror(1, fname, ("servers[%d] must be an IP address with an optional " ..
      "port, such as \"192.0.2.53\", \"192.0.2.53:5353\" or " ..
      "\"[2001:db8::53]:53\", got %s"):format(code,
      describe(opts.servers[code])), 4)
  end
  return nil, msg, code
end

-- dns.resolver([opts]) -> resolver / nil, message, code
function dns.resolver(opts)
  local r, msg, code = new_resolver(opts, "resolver")
  return r, msg, code
end

local SUPPORTED = "libevent 2.1's resolver answers A, AAAA and PTR only"
local OTHER_TYPES = {MX = true, TXT = true, SRV = true, NS = true, CNAME = true,
                     SOA = true, CAA = true, NAPTR = true, ANY = true,
                     DS = true, DNSKEY = true, TLSA = true, HTTPS = true,
                     SVCB = true}

local QUERY_OPTIONS = {timeout = opt_timeout}

-- The arguments of a query (name, type, opts at n, n + 1, n + 2): returns
-- the name to ask (false for one that cannot be asked: EBADNAME), the
-- type's code, and the call's timeout. (lvl 3: called by the public
-- function.)
local function check_query(name, rtype, opts, n, fname)
  check_name(name, n, fname, rtype == "PTR" and "address" or "name", 4)
  if rtype == nil then rtype = "A" end
  if type(rtype) ~= "string" then
    argerror(n + 1, fname, "type must be a string, got " .. type(rtype), 4)
  end
  local upper = rtype:upper()
  local code = TYPES[upper]
  if not code then
    if OTHER_TYPES[upper] then
      argerror(n + 1, fname, ("record type '%s' is not supported: %s"):format(
        rtype, SUPPORTED), 4)
    end
    argerror(n + 1, fname, "unknown record type " .. describe(rtype) ..
      " (A, AAAA or PTR)", 4)
  end
  opts = check_options(opts, n + 2, fname, QUERY_OPTIONS, 4)
  local timeout = opts.timeout
  if timeout and timeout < 0 then timeout = 0 end
  if upper == "PTR" then
    local fam, addr = is_ip(name)
    if not fam then
      argerror(n, fname, "an IP address expected, got " .. describe(name), 4)
    end
    return addr, code, timeout
  end
  -- what a DNS name may be: labels of 1 to 63 bytes, 253 in all, and one
  -- trailing dot (the root)
  local s = name:sub(-1) == "." and name:sub(1, -2) or name
  if #s == 0 or #s > 253 then return false, code, timeout end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 then return false, code, timeout end
  end
  return s, code, timeout
end

-- After the checks: the query, and its wait.
local function run_query(r, name, qname, code, timeout, fname)
  if not qname then
    return nil, "EBADNAME: invalid name: " .. name, "EBADNAME"
  end
  local q, msg, ecode = C.query(r, qname, code)
  if not q then return nil, msg, ecode end
  return await(q, timeout, fname)
end

-- resolver:resolve(name[, type[, opts]]) -> {record, ..., ttl=}
-- / nil, message, code
function Resolver.resolve(r, name, rtype, opts)
  check_resolver(r, "resolve")
  local qname, code, timeout = check_query(name, rtype, opts, 1, "resolve")
  need_task("resolve")
  return run_query(r, name, qname, code, timeout, "resolve")
end

-- resolver:reverse(ip[, opts]) -> {name, ttl=} / nil, message, code
function Resolver.reverse(r, ip, opts)
  check_resolver(r, "reverse")
  local qname, code, timeout = check_query(ip, "PTR", opts, 1, "reverse")
  need_task("reverse")
  return run_query(r, ip, qname, code, timeout, "reverse")
end

-- the default resolver -------------------------------------------------------

local default -- made on first use (or by configure)

local function default_resolver()
  if default then return default end
  local r, msg, code = C.resolver()
  if r then default = r end
  return r, msg, code
end

-- dns.configure([opts]) -> true / nil, message, code: the default
-- resolver's settings from now on. Queries in flight finish on the old
-- one. Without opts: the system's settings again (from the next query).
function dns.configure(opts)
  if opts == nil then
    default = nil
    return true
  end
  local r, msg, code = new_resolver(opts, "configure")
  if not r then return nil, msg, code end
  default = r
  return true
end

-- dns.resolve(name[, type[, opts]]) with the default resolver
function dns.resolve(name, rtype, opts)
  local qname, code, timeout = check_query(name, rtype, opts, 1, "resolve")
  need_task("resolve")
  local r, msg, ecode = default_resolver()
  if not r then return nil, msg, ecode end
  return run_query(r, name, qname, code, timeout, "resolve")
end

-- dns.reverse(ip[, opts]) with the default resolver
function dns.reverse(ip, opts)
  local qname, code, timeout = check_query(ip, "PTR", opts, 1, "reverse")
  need_task("reverse")
  local r, msg, ecode = default_resolver()
  if not r then return nil, msg, ecode end
  return run_query(r, ip, qname, code, timeout, "reverse")
end

-- (not public) the default resolver, made if need be: for the specs
function dns._default() return default_resolver() end

return dns
