-- spec/dns_spec.lua - tide.dns (API.md, "Networking"; docs/dns.md):
-- lookup (getaddrinfo on the pool: names from /etc/hosts, families,
-- numeric addresses without the pool, failures, timeout and cancel of a
-- queued job) and resolve (libevent's resolver in the loop) against a tiny
-- DNS server on loopback, spec/fixtures/dns_responder.py, started here on
-- a free port: records, NXDOMAIN and the other failures, timeouts (a name
-- it never answers), cancellation, closing, the loop kept alive, and
-- misuse.
--
-- The sandbox may have no network: nothing here needs any besides
-- loopback. The test bodies run inside tide's main task, so they may wait.

local S = require "spec.support"
local dns = require "tide.dns"
local pool = require "tide.pool"

local function pack(...) return {n = select("#", ...), ...} end

-- The error raised by fn(...), as a string (fails when it raises none).
local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

-- Asserts that r (packed results) is nil, message, code with the code and
-- a message that names `name`.
local function assert_fail(code, r, name)
  assert.is_nil(r[1], "expected a failure, got " .. tostring(r[1]))
  assert.equal(code, r[3], tostring(r[2]))
  assert.equal(code .. ": ", r[2]:sub(1, #code + 2))
  if name then
    assert.is_truthy(r[2]:find(name, 1, true), r[2] .. " should name " .. name)
  end
end

-- Waits (with sleeps, up to `timeout` seconds) until pred() is true.
local function eventually(pred, timeout)
  local deadline = tide.hrtime() + (timeout or 5)
  while not pred() do
    if tide.hrtime() > deadline then return false end
    tide.sleep(0.005)
  end
  return true
end

local watchdog = S.watchdog("dns_spec.lua")

-- the responder: started in setup, killed in teardown
local responder, port, pid
local function start_responder()
  responder = assert(io.popen("exec python3 spec/fixtures/dns_responder.py", "r"))
  port, pid = responder:read("*n", "*n")
  assert(port and pid, "the DNS responder did not start")
end

local function server() return "127.0.0.1:" .. port end

-- a resolver of the responder (fails fast: 0.5 s a try, 2 tries)
local function resolver(opts)
  opts = opts or {}
  opts.servers = opts.servers or {server()}
  if opts.timeout == nil then opts.timeout = 0.5 end
  if opts.tries == nil then opts.tries = 2 end
  return assert(dns.resolver(opts))
end

-- what /etc/resolv.conf names, as resolver:servers() shows them
local function system_servers()
  local list = {}
  local f = io.open("/etc/resolv.conf")
  if f then
    for line in f:lines() do
      local ns = line:match("^%s*nameserver%s+(%S+)")
      if ns then
        if ns:find(":", 1, true) then
          list[#list + 1] = "[" .. ns .. "]:53"
        else
          list[#list + 1] = ns .. ":53"
        end
      end
    end
    f:close()
  end
  if #list == 0 then list[1] = "127.0.0.1:53" end
  return list
end

describe("tide.dns", function()
  setup(start_responder)

  teardown(function()
    dns.configure()
    if pid then os.execute("kill " .. pid) end
    if responder then responder:close() end
    watchdog:stop()
  end)

  describe("lookup", function()
    it("finds localhost in /etc/hosts, as a list of address strings", function()
      local list = assert(dns.lookup("localhost"))
      assert.is_true(#list >= 1)
      local v4 = false
      for _, a in ipairs(list) do
        assert.equal("string", type(a))
        assert.is_truthy(dns.is_ip(a), a)
        if a == "127.0.0.1" then v4 = true end
      end
      assert.is_true(v4, "127.0.0.1 among " .. table.concat(list, ", "))
    end)

    it("completes in the poll phase (a pool job's completion)", function()
      assert(dns.lookup("localhost"))
      assert.equal("poll", tide.phase())
    end)

    it("honours family", function()
      local list = assert(dns.lookup("localhost", {family = 4}))
      for _, a in ipairs(list) do assert.equal(4, dns.is_ip(a)) end
      -- /etc/hosts may have no ::1 line for localhost (it has none here)
      local r = pack(dns.lookup("localhost", {family = 6}))
      if r[1] then
        for _, a in ipairs(r[1]) do assert.equal(6, dns.is_ip(a)) end
      else
        assert_fail("ENOTFOUND", r, "localhost")
      end
      list = assert(dns.lookup("localhost", {family = 0}))
      assert.is_true(#list >= 1)
    end)

    it("with all=false returns the first address and its family", function()
      local addr, family = dns.lookup("localhost", {all = false, family = 4})
      assert.equal("127.0.0.1", addr)
      assert.equal(4, family)
    end)

    it("answers numeric addresses at once, without the pool", function()
      local ran = false
      tide.spawn(function() ran = true end)
      assert.same({"192.0.2.5"}, dns.lookup("192.0.2.5"))
      assert.same({"::1"}, dns.lookup("::0001")) -- in canonical form
      assert.same({"2001:db8::1"}, dns.lookup("2001:DB8:0:0:0:0:0:1"))
      local a, f = dns.lookup("::1", {all = false})
      assert.equal("::1", a)
      assert.equal(6, f)
      -- the family option does not apply to an address (as in Node)
      assert.same({"127.0.0.1"}, dns.lookup("127.0.0.1", {family = 6}))
      assert.is_false(ran, "a numeric lookup must not wait")
      tide.yield()
      assert.is_true(ran)
    end)

    it("fails cleanly for a name that cannot exist", function()
      -- without a network getaddrinfo may say EAI_AGAIN instead
      local r = pack(dns.lookup("no-such-host.invalid"))
      assert.equal(3, r.n)
      assert.is_nil(r[1])
      assert.is_truthy(r[3] == "ENOTFOUND" or r[3] == "EAI_AGAIN", r[3])
      assert_fail(r[3], r, "no-such-host.invalid")
      if r[3] == "ENOTFOUND" then
        assert.equal("ENOTFOUND: no such host: no-such-host.invalid", r[2])
      end
    end)

    describe("behind a busy pool", function()
      -- getaddrinfo is a slow job: at most half the threads (at least one)
      -- run slow jobs, so sleeping slow jobs on those keep a lookup queued
      local sleepers
      local function fill_slow_slots()
        local size = pool.stats().size
        local slots = math.max(1, math.floor(size / 2))
        sleepers = {}
        for i = 1, slots do
          sleepers[i] = tide.spawn(pool.sleep, 0.4, {slow = true})
        end
        assert(eventually(function() return pool.stats().running == slots end))
      end
      after_each(function()
        for _, t in ipairs(sleepers or {}) do t:join() end
        sleepers = nil
      end)

      it("times out with the timeout option, and the job leaves the queue", function()
        fill_slow_slots()
        local t0 = tide.hrtime()
        local r = pack(dns.lookup("localhost", {timeout = 0.05}))
        assert.same({n = 3, nil, "timed out", "ETIMEDOUT"}, r)
        assert.is_true(tide.hrtime() - t0 < 0.35) -- before the sleepers end
        assert(eventually(function() return pool.stats().queued == 0 end, 1))
      end)

      it("is cancelled with its task", function()
        fill_slow_slots()
        local t = tide.spawn(dns.lookup, "localhost")
        tide.sleep(0.02)
        assert.equal("waiting", t:status())
        t:cancel()
        local ok, msg, code = t:join()
        assert.is_nil(ok)
        assert.equal("ECANCELED", code, msg)
        assert(eventually(function() return pool.stats().queued == 0 end, 1))
      end)
    end)
  end)

  describe("resolve", function()
    local r
    before_each(function() r = resolver() end)
    after_each(function() r:close() end)

    it("answers A and AAAA with address strings and the TTL", function()
      local list = assert(r:resolve("host.test"))
      assert.same({"192.0.2.1", "192.0.2.2"}, {list[1], list[2]})
      assert.equal(2, #list)
      assert.equal(300, list.ttl)
      list = assert(r:resolve("host.test", "A"))
      assert.equal(2, #list)
      list = assert(r:resolve("HOST.test.", "AAAA"))
      assert.equal(1, #list)
      assert.equal("2001:db8::1", list[1])
      list = assert(r:resolve("host.test", "aaaa")) -- types in any case
      assert.equal("2001:db8::1", list[1])
    end)

    it("completes in the poll phase", function()
      assert(r:resolve("host.test"))
      assert.equal("poll", tide.phase())
    end)

    it("answers PTR for an IPv4 or IPv6 address (reverse)", function()
      local list = assert(r:resolve("192.0.2.1", "PTR"))
      assert.same({"host.test"}, {list[1]})
      assert.equal(300, list.ttl)
      list = assert(r:reverse("2001:db8::1"))
      assert.equal("host6.test", list[1])
      list = assert(r:reverse("2001:0db8:0000::0001")) -- any spelling
      assert.equal("host6.test", list[1])
      assert_fail("ENOTFOUND", pack(r:reverse("192.0.2.99")), "192.0.2.99")
    end)

    it("gives at most 32 addresses (libevent's limit)", function()
      local list = assert(r:resolve("many.test"))
      assert.equal(32, #list)
      assert.equal("192.0.2.100", list[1])
    end)

    it("fails with ENOTFOUND for NXDOMAIN", function()
      local res = pack(r:resolve("nxdomain.test"))
      assert.same({n = 3, nil, "ENOTFOUND: no such host: nxdomain.test",
                   "ENOTFOUND"}, res)
      assert_fail("ENOTFOUND", pack(r:resolve("nxdomain.test", "AAAA")),
                  "nxdomain.test")
    end)

    it("fails with ENODATA for a name without records of the type", function()
      assert(r:resolve("v4only.test", "A"))
      local res = pack(r:resolve("v4only.test", "AAAA"))
      assert_fail("ENODATA", res, "v4only.test")
      assert.is_truthy(res[2]:find("AAAA", 1, true), res[2])
    end)

    it("fails with EREFUSED when the server refuses", function()
      assert_fail("EREFUSED", pack(r:resolve("refused.test")), "refused.test")
    end)

    it("reports SERVFAIL as a timeout, quickly (libevent 2.1 retries it)", function()
      local t0 = tide.hrtime()
      assert_fail("ETIMEDOUT", pack(r:resolve("servfail.test")), "servfail.test")
      assert.is_true(tide.hrtime() - t0 < 1)
    end)

    it("fails with EBADNAME for a name DNS cannot carry, without asking", function()
      local long_label = ("a"):rep(64) .. ".test"
      assert_fail("EBADNAME", pack(r:resolve(long_label)), long_label)
      assert_fail("EBADNAME", pack(r:resolve("a..test")), "a..test")
      assert_fail("EBADNAME", pack(r:resolve(".")), ".")
      local long = ("abcdefgh."):rep(29) .. "test" -- 265 bytes
      assert_fail("EBADNAME", pack(r:resolve(long)))
      assert.equal(0, r:pending())
    end)

    it("times out after the resolver's timeout and tries", function()
      local slow = resolver{timeout = 0.1, tries = 2}
      local t0 = tide.hrtime()
      local res = pack(slow:resolve("silent.test"))
      local elapsed = tide.hrtime() - t0
      slow:close()
      assert_fail("ETIMEDOUT", res, "silent.test")
      assert.is_true(elapsed >= 0.15 and elapsed < 2, "took " .. elapsed)
    end)

    -- regression: libevent's clock is cached while poll-phase callbacks
    -- run; a task woken there that ran long before its next query got an
    -- evdns timeout that had expired already
    it("times a query from now, after a long run in the poll phase", function()
      local once = resolver{timeout = 0.5, tries = 1}
      assert(once:resolve("host.test"))
      assert.equal("poll", tide.phase()) -- woken by evdns's callback
      S.busy(0.7) -- longer than the timeout
      local list = assert(once:resolve("host.test"))
      assert.equal("192.0.2.1", list[1])
      once:close()
    end)

    it("takes a call's own timeout, and cancels the query", function()
      local t0 = tide.hrtime()
      local res = pack(r:resolve("silent.test", "A", {timeout = 0.05}))
      assert.same({n = 3, nil, "timed out", "ETIMEDOUT"}, res)
      assert.is_true(tide.hrtime() - t0 < 1)
      -- evdns calls back for the cancelled query in the next poll phase
      assert(eventually(function() return r:pending() == 0 end, 1))
      assert(r:resolve("host.test")) -- and the resolver goes on
    end)

    it("is bounded by tide.timeout, which cancels the query", function()
      local res = pack(tide.timeout(0.05, r.resolve, r, "silent.test"))
      assert.same({n = 3, nil, "timed out", "ETIMEDOUT"}, res)
      assert(eventually(function() return r:pending() == 0 end, 1))
    end)

    it("is cancelled with its task", function()
      local t = tide.spawn(r.resolve, r, "silent.test")
      tide.sleep(0.02)
      assert.equal("waiting", t:status())
      assert.equal(1, r:pending())
      t:cancel()
      local ok, msg, code = t:join()
      assert.is_nil(ok)
      assert.equal("ECANCELED", code, msg)
      assert.equal("cancelled", t:status())
      assert(eventually(function() return r:pending() == 0 end, 1))
    end)

    it("runs many queries at once", function()
      local tasks = {}
      for i = 1, 40 do
        local name = i % 2 == 0 and "host.test" or "slow.test"
        tasks[i] = tide.spawn(r.resolve, r, name)
      end
      local t0 = tide.hrtime()
      for i, t in ipairs(tasks) do
        local ok, list = t:join()
        assert.is_true(ok)
        assert.equal(i % 2 == 0 and "192.0.2.1" or "192.0.2.7", list[1])
      end
      assert.is_true(tide.hrtime() - t0 < 1.5) -- in parallel, not 20 x 0.3 s
      assert.equal(0, r:pending())
    end)

    it("wakes a task waiting on a resolver that gets closed", function()
      local other = resolver{timeout = 5}
      local t = tide.spawn(other.resolve, other, "silent.test")
      tide.sleep(0.02)
      assert.equal(1, other:pending())
      other:close()
      other:close() -- idempotent
      local ok, list, msg, code = t:join()
      assert.is_true(ok)
      assert.same({nil, "closed", "ECANCELED"}, {list, msg, code})
      assert(eventually(function() return other:pending() == 0 end, 1))
      assert.is_true(other:closed())
      assert.equal("tide.dns.resolver (closed)", tostring(other))
      assert.is_truthy(error_of(other.resolve, other, "host.test")
        :find("closed resolver", 1, true))
      assert.is_truthy(error_of(other.unref, other):find("closed resolver", 1, true))
      assert.same({}, other:servers())
    end)

    it("lists its servers", function()
      assert.same({server()}, r:servers())
      local two = resolver{servers = {server(), "[::1]:5353"}}
      local list = two:servers()
      table.sort(list)
      assert.same({"127.0.0.1:" .. port, "[::1]:5353"}, list)
      two:close()
      assert.same({"192.0.2.53:53"},
        assert(dns.resolver{servers = {"192.0.2.53"}}):servers())
    end)

    it("reads servers and options from a resolv.conf file", function()
      local conf = os.tmpname()
      S.write_file(conf, ("# a test\nnameserver %s\noptions timeout:0.3 attempts:2\n")
        :format(server()))
      local fr = assert(dns.resolver{resolv_conf = conf})
      os.remove(conf)
      assert.same({server()}, fr:servers())
      assert.equal("192.0.2.1", assert(fr:resolve("host.test"))[1])
      local t0 = tide.hrtime()
      assert_fail("ETIMEDOUT", pack(fr:resolve("silent.test")))
      -- (the defaults would take 5 s x 3)
      assert.is_true(tide.hrtime() - t0 < 2.5, "options timeout and attempts apply")
      fr:close()
      local res = pack(dns.resolver{resolv_conf = conf}) -- gone now
      assert_fail("ENOENT", res, conf)
    end)

    it("is collected when forgotten, idle or not", function()
      local weak = setmetatable({}, {__mode = "k"})
      weak[resolver()] = true
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(weak))
      -- one with a query outstanding lives until evdns calls back
      local busy = resolver()
      weak[busy] = true
      local t = tide.spawn(busy.resolve, busy, "slow.test")
      busy = nil
      tide.sleep(0.01)
      collectgarbage()
      collectgarbage()
      assert.is_not_nil(next(weak))
      local ok, list = t:join()
      assert.is_true(ok)
      assert.equal("192.0.2.7", list[1])
    end)
  end)

  describe("the loop", function()
    it("is kept alive by a pending query", function()
      local out, err, rc = S.run_child(([[
        local dns = require "tide.dns"
        local r = assert(dns.resolver{servers = {%q}})
        tide.spawn(function() print(r:resolve("slow.test")[1]) end)
      ]]):format(server()))
      assert.equal(0, rc, err)
      assert.equal("192.0.2.7\n", out)
    end)

    it("is not kept alive by the queries of an unref'd resolver", function()
      local out, err, rc, elapsed = S.run_child(([[
        local dns = require "tide.dns"
        local r = assert(dns.resolver{servers = {%q}, timeout = 5})
        r:unref()
        tide.spawn(function() print(r:resolve("silent.test")) end)
        print("unref'd")
      ]]):format(server()))
      assert.equal(0, rc, err)
      assert.equal("unref'd\n", out)
      assert.is_true(elapsed < 3, "took " .. elapsed)
      out, err, rc = S.run_child(([[
        local dns = require "tide.dns"
        local r = assert(dns.resolver{servers = {%q}})
        r:unref()
        r:ref()
        tide.spawn(function() print(r:resolve("slow.test")[1]) end)
      ]]):format(server()))
      assert.equal(0, rc, err)
      assert.equal("192.0.2.7\n", out)
    end)

    -- under AddressSanitizer a leak or a bad access fails these (stderr)
    it("ends cleanly with queries outstanding (tide.exit)", function()
      local out, err, rc = S.run_child(([[
        local dns = require "tide.dns"
        local r = assert(dns.resolver{servers = {%q}, timeout = 5})
        for i = 1, 3 do tide.spawn(r.resolve, r, "silent.test") end
        tide.spawn(r.resolve, r, "silent.test", "A", {timeout = 0.01})
        local t = tide.spawn(r.resolve, r, "silent.test")
        tide.sleep(0.05)
        print(r:pending())
        t:cancel() -- its query is cancelled in a pending phase that never runs
        tide.exit(3)
      ]]):format(server()))
      assert.equal(3, rc, err)
      assert.equal("4\n", out)
      assert.equal("", err)
      out, err, rc = S.run_child(([[
        local dns = require "tide.dns"
        local r = assert(dns.resolver{servers = {%q}, timeout = 5})
        tide.spawn(r.resolve, r, "silent.test")
        tide.spawn(dns.lookup, "localhost")
        tide.sleep(0.01)
        r:close()
        tide.exit(0)
      ]]):format(server()))
      assert.equal(0, rc, err)
      assert.equal("", err)
    end)
  end)

  describe("the default resolver", function()
    after_each(function() dns.configure() end)

    it("follows /etc/resolv.conf", function()
      assert.same(system_servers(), dns._default():servers())
    end)

    it("is set with configure, and reset without options", function()
      assert.is_true(dns.configure{servers = {server()}, timeout = 1, tries = 2})
      assert.same({server()}, dns._default():servers())
      assert.equal("192.0.2.1", assert(dns.resolve("host.test"))[1])
      assert.equal("2001:db8::1", assert(dns.resolve("host.test", "AAAA"))[1])
      assert.equal("host.test", assert(dns.reverse("192.0.2.1"))[1])
      assert_fail("ENOTFOUND", pack(dns.resolve("nxdomain.test")), "nxdomain.test")
      assert.same({n = 3, nil, "timed out", "ETIMEDOUT"},
                  pack(dns.resolve("silent.test", "A", {timeout = 0.02})))
      assert.is_true(dns.configure())
      assert.same(system_servers(), dns._default():servers())
      local missing = os.tmpname()
      os.remove(missing)
      assert_fail("ENOENT", pack(dns.configure{resolv_conf = missing}), missing)
      assert.same(system_servers(), dns._default():servers())
    end)
  end)

  describe("misuse", function()
    -- the message of the error raised by the code in fn, which must point
    -- at this file (the caller's line)
    local function raised(fn)
      local ok, e = pcall(fn)
      assert(not ok, "expected an error")
      e = tostring(e)
      assert.is_truthy(e:find("^spec/dns_spec%.lua:%d+: ") or
                       e:find("dns_spec%.lua:%d+: "), e)
      return e
    end

    it("lookup raises naming the argument", function()
      assert.is_truthy(raised(function() dns.lookup(nil) end):find(
        "bad argument #1 to 'lookup' (name must be a string, got nil)", 1, true))
      assert.is_truthy(raised(function() dns.lookup("") end):find(
        "bad argument #1 to 'lookup' (name must not be empty)", 1, true))
      assert.is_truthy(raised(function() dns.lookup("a\0b") end):find(
        "NUL", 1, true))
      assert.is_truthy(raised(function() dns.lookup("localhost", 4) end):find(
        "bad argument #2 to 'lookup' (options must be a table, got number)", 1, true))
      assert.is_truthy(raised(function() dns.lookup("localhost", {family = 5}) end)
        :find("bad argument #2 to 'lookup' (option 'family' must be 0, 4 or 6, got 5)",
              1, true))
      assert.is_truthy(raised(function() dns.lookup("localhost", {famly = 4}) end)
        :find("unknown option 'famly'", 1, true))
      assert.is_truthy(raised(function() dns.lookup("localhost", {all = 1}) end)
        :find("option 'all' must be a boolean", 1, true))
      assert.is_truthy(raised(function() dns.lookup("x", {timeout = "1"}) end)
        :find("option 'timeout' must be a finite number of seconds", 1, true))
      assert.is_truthy(raised(function() dns.lookup("x", {timeout = 0/0}) end)
        :find("option 'timeout'", 1, true))
    end)

    it("resolve raises naming the argument", function()
      assert.is_truthy(raised(function() dns.resolve(42) end):find(
        "bad argument #1 to 'resolve' (name must be a string, got number)", 1, true))
      assert.is_truthy(raised(function() dns.resolve("x.test", 1) end):find(
        "bad argument #2 to 'resolve' (type must be a string, got number)", 1, true))
      local mx = raised(function() dns.resolve("x.test", "MX") end)
      assert.is_truthy(mx:find("bad argument #2 to 'resolve' (record type 'MX' " ..
        "is not supported: libevent 2.1's resolver answers A, AAAA and PTR only)",
        1, true), mx)
      for _, t in ipairs{"TXT", "SRV", "srv"} do
        assert.is_truthy(raised(function() dns.resolve("x.test", t) end):find(
          "is not supported", 1, true))
      end
      assert.is_truthy(raised(function() dns.resolve("x.test", "BOGUS") end):find(
        "unknown record type \"BOGUS\"", 1, true))
      assert.is_truthy(raised(function() dns.resolve("x.test", "PTR") end):find(
        "bad argument #1 to 'resolve' (an IP address expected, got \"x.test\")",
        1, true))
      assert.is_truthy(raised(function() dns.reverse("x.test") end):find(
        "bad argument #1 to 'reverse' (an IP address expected", 1, true))
      assert.is_truthy(raised(function() dns.resolve("x.test", "A", {ttl = true}) end)
        :find("bad argument #3 to 'resolve' (unknown option 'ttl')", 1, true))
      assert.is_truthy(raised(function() dns.resolve("x.test", "A", {timeout = {}}) end)
        :find("bad argument #3 to 'resolve' (option 'timeout'", 1, true))
      local r = resolver()
      assert.is_truthy(raised(function() r:resolve(nil) end):find(
        "bad argument #1 to 'resolve' (name must be a string, got nil)", 1, true))
      assert.is_truthy(raised(function() r.resolve("host.test") end):find(
        "bad argument #1 to 'resolve' (resolver expected, got string)", 1, true))
      assert.is_truthy(raised(function() r:reverse("host.test") end):find(
        "bad argument #1 to 'reverse' (an IP address expected", 1, true))
      r:close()
      assert.is_truthy(raised(function() r:resolve("host.test") end):find(
        "attempt to use a closed resolver", 1, true))
    end)

    it("resolver raises naming the option", function()
      local function bad(opts, text)
        local e = raised(function() dns.resolver(opts) end)
        assert.is_truthy(e:find("bad argument #1 to 'resolver' (", 1, true), e)
        assert.is_truthy(e:find(text, 1, true), e)
      end
      bad("x", "options must be a table, got string")
      bad({server = "127.0.0.1"}, "unknown option 'server'")
      bad({servers = "127.0.0.1"}, "option 'servers' must be a list of strings")
      bad({servers = {}}, "must name at least one server")
      bad({servers = {1}}, "servers[1] must be a string, got number")
      bad({servers = {"127.0.0.1", "dns.example"}},
          "servers[2] must be an IP address with an optional port")
      bad({servers = {"127.0.0.1:99999"}}, "servers[1] must be an IP address")
      bad({timeout = 0}, "option 'timeout' must be at least 0.001 seconds, got 0")
      bad({timeout = 1/0}, "option 'timeout' must be a finite number")
      bad({tries = 0}, "option 'tries' must be an integer from 1 to 255, got 0")
      bad({tries = 1.5}, "option 'tries' must be an integer")
      bad({resolv_conf = ""}, "option 'resolv_conf' must be a path")
      bad({servers = {"127.0.0.1"}, resolv_conf = "/etc/resolv.conf"},
          "give 'servers' or 'resolv_conf', not both")
      local e = raised(function() dns.configure{tries = -1} end)
      assert.is_truthy(e:find("bad argument #1 to 'configure' (option 'tries'", 1, true), e)
    end)

    it("waiting calls must run in a task", function()
      local out, err, rc = S.run_child([[
        local dns = require "tide.dns"
        local ok, e = pcall(function()
          coroutine.wrap(function() dns.lookup("localhost") end)()
        end)
        print(ok, e)
        print(dns.lookup("127.0.0.1")[1]) -- no wait: fine anywhere
      ]])
      assert.equal(0, rc, err)
      assert.is_truthy(out:find("false", 1, true), out)
      assert.is_truthy(out:find("'lookup' cannot wait inside a coroutine", 1, true), out)
      assert.is_truthy(out:find("127.0.0.1\n", 1, true), out)
    end)

    it("is_ip tells addresses from names", function()
      assert.equal(4, dns.is_ip("192.0.2.1"))
      assert.equal(6, dns.is_ip("::ffff:192.0.2.1"))
      assert.is_false(dns.is_ip("192.0.2"))
      assert.is_false(dns.is_ip("localhost"))
      assert.is_false(dns.is_ip(nil))
      assert.is_false(dns.is_ip("fe80::1%eth0"))
    end)
  end)
end)
