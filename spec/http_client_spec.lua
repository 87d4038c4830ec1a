-- spec/http_client_spec.lua - tide.http's client (API.md, "HTTP";
-- docs/http.md): string and reader bodies, length-delimited, chunked and
-- to-the-end responses, failures as nil, message, code (refused, timeout,
-- malformed, bad URL), redirects, the pool of idle keep-alive connections
-- and its cap, a retry on a pooled connection the server closed, and
-- python3's http.server as a peer. (https: spec/http_server_spec.lua.)
--
-- Loopback only. Every wait is bounded; synchronisation is on events.

local S = require "spec.support"
local H = require "spec.http_support"
local http = require "tide.http"
local net = require "tide.net"
local process = require "tide.process"
local req, serve, url, connect, read_response, closed =
  H.req, H.serve, H.url, H.connect, H.read_response, H.closed

local watchdog = S.watchdog("http_client_spec.lua")

describe("tide.http client", function()
  teardown(function()
    H.close_all()
    watchdog:stop()
  end)

  describe("client", function()
    it("sends string bodies and reads length-delimited and chunked responses", function()
      local s = serve(function(r, res)
        local b = assert(r:body())
        if r.path == "/chunked" then res:write(b); res:write("!"); return end
        return 200, r.method .. ":" .. b .. ":" .. tostring(r.headers["content-length"])
      end)
      local res = assert(http.request{method = "post", url = url(s), body = "data",
                                      headers = {["X-A"] = "1"}})
      assert.equal("POST:data:4", res.body)
      res = assert(http.request{method = "PUT", url = url(s, "/chunked"), body = "xyz"})
      assert.equal("xyz!", res.body)
      assert.equal("chunked", res.headers["transfer-encoding"])
    end)

    it("reads a body that ends with the connection and 1xx answers", function()
      local srv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:read_until("\r\n\r\n")
        c:write("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                "HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nuntil the end")
      end})
      local res = assert(http.get(("http://127.0.0.1:%d/"):format(srv.port)))
      srv:close()
      assert.equal(200, res.status)
      assert.equal("1.0", res.version)
      assert.equal("until the end", res.body)
    end)

    it("fails with nil, message, code: refused, timeout, malformed, bad URL", function()
      local srv = assert(net.listen{host = "127.0.0.1", port = 0})
      local port = srv.port
      srv:close()
      local r, e, code = http.get(("http://127.0.0.1:%d/"):format(port))
      assert.is_nil(r)
      assert.equal("ECONNREFUSED", code, e)

      local mute = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:read_until("\r\n\r\n")
        c:set_timeout(5)
        c:read()
      end})
      local t0 = tide.hrtime()
      r, e, code = http.get(("http://127.0.0.1:%d/"):format(mute.port), {timeout = 0.2})
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code, e)
      assert.is_true(tide.hrtime() - t0 < 2)
      mute:close()

      for _, garbage in ipairs{"SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                               "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                               "HTTP/1.1 200 OK\nA: b\n\n"} do
        local bad = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
          c:read_until("\r\n\r\n")
          c:write(garbage)
        end})
        r, e, code = http.get(("http://127.0.0.1:%d/"):format(bad.port), {timeout = 5})
        bad:close()
        assert.is_nil(r)
        assert.equal("EPROTO", code, e)
      end

      r, e, code = http.get("ftp://example.org/")
      assert.equal("EINVAL", code)
      r, e, code = http.get("not a url")
      assert.equal("EINVAL", code)
      r, e, code = http.get("http://no-such-host.invalid/", {timeout = 5})
      assert.is_nil(r)
      assert.is_string(code)
      assert.has_error(function() http.request{url = "http://a/", bogus = 1} end)
    end)

    it("follows redirects when asked, up to follow=n", function()
      local s
      s = serve(function(r)
        local n = tonumber(r.path:match("^/r/(%d+)$"))
        if n and n > 0 then return 302, "", {Location = "/r/" .. (n - 1)} end
        if r.path == "/see" then return 303, "", {Location = url(s, "/r/0")} end
        return 200, r.method .. " at " .. r.path
      end)
      local res = assert(http.get(url(s, "/r/3")))
      assert.equal(302, res.status)
      res = assert(http.get(url(s, "/r/3"), {follow = 3}))
      assert.equal(200, res.status)
      assert.equal("GET at /r/0", res.body)
      local r, e, code = http.get(url(s, "/r/3"), {follow = 2})
      assert.is_nil(r)
      assert.equal("ELOOP", code, e)
      res = assert(http.request{method = "POST", url = url(s, "/see"), body = "x", follow = 1})
      assert.equal("GET at /r/0", res.body)
    end)

    it("pools idle connections per host up to a cap", function()
      local ports = {}
      local s = serve(function(r)
        ports[#ports + 1] = r.remote_port
        return 200, "ok"
      end)
      http.close_idle()
      local cap = http.max_idle_per_host
      http.max_idle_per_host = 2
      -- four at once: four connections (the pool is empty when each starts)
      local tasks = {}
      for i = 1, 4 do tasks[i] = tide.spawn(http.get, url(s)) end
      for i = 1, 4 do assert.is_true((tasks[i]:join(5))) end
      local first = {}
      for _, p in ipairs(ports) do first[p] = true end
      -- four at once again: the two the pool kept, and two new ones
      ports = {}
      for i = 1, 4 do tasks[i] = tide.spawn(http.get, url(s)) end
      for i = 1, 4 do assert.is_true((tasks[i]:join(5))) end
      http.max_idle_per_host = cap
      local reused = 0
      for _, p in ipairs(ports) do
        if first[p] then reused = reused + 1 end
      end
      local n = 0
      for _ in pairs(first) do n = n + 1 end
      assert.equal(4, n)
      assert.equal(2, reused)
      -- one at a time: a single pooled connection serves them all
      ports = {}
      for _ = 1, 3 do assert(http.get(url(s))) end
      assert.equal(ports[1], ports[2])
      assert.equal(ports[1], ports[3])
    end)

    it("retries once when a pooled connection was closed by the server", function()
      local s = serve(function() return 200, "ok" end, {keepalive_timeout = 0.05})
      assert.equal(200, assert(http.get(url(s))).status)
      local c = connect(s.port) -- (wait for the server's idle close, as an event:
      c:write(req{"GET / HTTP/1.1", "Host: h"}) --  a second connection's own close)
      assert.equal(200, read_response(c))
      assert.is_true(closed(c))
      c:close()
      assert.equal(200, assert(http.get(url(s))).status)
    end)

    it("talks to python3's http.server", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir) == 0 or true)
      S.write_file(dir .. "/hello.txt", "hello from python\n")
      local child = process.spawn{"python3", "-u", "-m", "http.server", "0", "--bind",
                                  "127.0.0.1", "--directory", dir, stdout = "pipe",
                                  stderr = "null"}
      child.stdout:set_timeout(10)
      local line = assert(child.stdout:read_line())
      local port = assert(tonumber(line:match("port (%d+)")), line)
      local res = assert(http.get(("http://127.0.0.1:%d/hello.txt"):format(port), {timeout = 5}))
      local res2 = assert(http.get(("http://127.0.0.1:%d/nope"):format(port), {timeout = 5}))
      child:kill()
      child:wait(5)
      os.remove(dir .. "/hello.txt")
      os.remove(dir)
      assert.equal(200, res.status)
      assert.equal("hello from python\n", res.body)
      assert.equal(404, res2.status)
    end)
  end)

  describe("against a hostile server", function()
    -- a raw server: handler(conn) per connection
    local function raw(handler)
      local sv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:set_timeout(5)
        handler(c)
      end})
      return sv, ("http://127.0.0.1:%d/"):format(sv.port)
    end
    local function read_head(c)
      repeat local l = c:read_line() until l == "" or l == nil
    end

    it("fails at once with E2BIG when one chunk announces more than max_body_size", function()
      local sv, u = raw(function(c)
        read_head(c)
        c:write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n")
        local x = ("x"):rep(65536)
        for _ = 1, 100 do if not c:write(x) then return end end
      end)
      local t0 = tide.hrtime()
      local r, e, code = http.request{url = u, max_body_size = 1000, timeout = 5}
      sv:close()
      assert.is_nil(r)
      assert.equal("E2BIG", code, e)
      assert.is_true(tide.hrtime() - t0 < 2)
      sv, u = raw(function(c)
        read_head(c)
        c:write("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nxx")
      end)
      r, e, code = http.request{url = u, max_body_size = 1000, timeout = 5}
      sv:close()
      assert.is_nil(r)
      assert.equal("E2BIG", code, e)
    end)

    it("answers nil, message, EINVAL for URLs and redirects with a malformed host", function()
      for _, bad in ipairs{"http://a b/", "http://h\t/", "http://a]b/", "http://a[b/",
                           "http://" .. ("a"):rep(300) .. "/"} do
        local r, e, code = http.request{url = bad, timeout = 5}
        assert.is_nil(r)
        assert.equal("EINVAL", code, e)
      end
      local sv, u = raw(function(c)
        read_head(c)
        c:write("HTTP/1.1 302 Found\r\nLocation: //a b/x\r\nContent-Length: 0\r\n\r\n")
      end)
      local r, e, code = http.request{url = u, follow = 1, timeout = 5}
      sv:close()
      assert.is_nil(r)
      assert.equal("EINVAL", code, e)
    end)

    it("does not reuse an idle connection the server sent bytes on unasked", function()
      local injected = tide.channel(1)
      local sv, u = raw(function(c)
        read_head(c)
        c:write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        tide.sleep(0.05)
        c:write("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED")
        injected:send(true)
        read_head(c)
      end)
      assert.equal("ok", assert(http.get(u, {timeout = 5})).body)
      assert(injected:recv(5))
      tide.sleep(0.05) -- (the bytes reach the client's socket)
      assert.equal("ok", assert(http.get(u .. "other", {timeout = 5})).body)
      sv:close()
    end)

    it("closes pooled connections past idle_timeout, whatever their origin", function()
      local saved = http.idle_timeout
      http.idle_timeout = 0.2
      local ends = tide.channel(10)
      local servers = {}
      for i = 1, 3 do
        local sv, u = raw(function(c)
          read_head(c)
          c:write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
          c:set_timeout(10)
          ends:send(c:read() == nil) -- the client's close
        end)
        servers[i] = sv
        assert.equal("ok", assert(http.get(u, {timeout = 5})).body)
      end
      for _ = 1, 3 do assert.is_true(ends:recv(5)) end
      http.idle_timeout = saved
      for _, sv in ipairs(servers) do sv:close() end
    end)
  end)
end)
