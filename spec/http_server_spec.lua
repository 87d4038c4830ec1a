-- spec/http_server_spec.lua - tide.http's server (API.md, "HTTP";
-- docs/http.md): requests and responses, keep-alive, pipelining, chunked
-- bodies both ways, streaming with backpressure, 100-continue, HEAD / 204
-- / 304, Connection: close, HTTP/1.0, handler errors, a client going away
-- mid-request, the limits and timeouts, https; curl as a client. The
-- hostile requests (smuggling, malformed heads) are in
-- spec/http_hostile_spec.lua, the client in spec/http_client_spec.lua.
--
-- Loopback only. Every wait is bounded (timeouts on sockets and joins);
-- synchronisation is on events (a response, a closed connection, a
-- channel), never on sleeping long enough. Timeouts under test are small.

local S = require "spec.support"
local H = require "spec.http_support"
local http = require "tide.http"
local net = require "tide.net"
local req, serve, url, connect, read_response, closed, curl =
  H.req, H.serve, H.url, H.connect, H.read_response, H.closed, H.curl

local watchdog = S.watchdog("http_server_spec.lua")

describe("tide.http server", function()
  teardown(function()
    H.close_all()
    watchdog:stop()
  end)

  describe("server", function()
    it("answers what a handler returns, with Date and Content-Length", function()
      local s = serve(function(r) return 201, "made " .. r.path, {["X-Kind"] = "test"} end)
      local res = assert(http.get(url(s, "/thing")))
      assert.equal(201, res.status)
      assert.equal("made /thing", res.body)
      assert.equal("test", res.headers["x-kind"])
      assert.equal("11", res.headers["Content-Length"])
      assert.truthy(res.headers.date:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"))
    end)

    it("gives the handler the request line, query and headers", function()
      local seen
      local s = serve(function(r)
        seen = {method = r.method, target = r.target, path = r.path, query = r.query,
                version = r.version, ua = r.headers["USER-AGENT"], multi = r.headers["x-m"],
                hdr = r:header("X-One")}
        return 200, "ok"
      end)
      local c = connect(s.port)
      c:write(req{"PUT /p/q?a=1&b=x%20y&a=2&c HTTP/1.1", "Host: h", "User-Agent: spec",
                  "X-M: 1", "x-m: 2", "X-One: one"} )
      assert.equal(200, read_response(c))
      c:close()
      assert.same({method = "PUT", target = "/p/q?a=1&b=x%20y&a=2&c", path = "/p/q",
                   query = {a = {"1", "2"}, b = "x y", c = ""}, version = "1.1",
                   ua = "spec", multi = "1, 2", hdr = "one"}, seen)
    end)

    it("keeps each request's fields after later requests on the connection", function()
      -- (headers, path and the rest are made when first read: a request
      -- kept by the handler must still give its own after the next ones)
      local kept = {}
      local s = serve(function(r)
        kept[#kept + 1] = r
        return 200, "ok", {["X-N"] = #kept, ["Content-Length"] = 2}
      end)
      local c = connect(s.port)
      c:write(req{"GET /a?x=1 HTTP/1.1", "Host: h", "X-Id: first"} ..
              req{"GET /b HTTP/1.0", "X-Id: second", "Connection: keep-alive"} ..
              req{"GET /c HTTP/1.1", "Host: h", "X-Id: third"})
      for i = 1, 3 do
        local status, h, body = read_response(c)
        assert.equal(200, status)
        assert.equal(tostring(i), h["x-n"])
        assert.equal("ok", body)
      end
      c:close()
      local got = {}
      for i, r in ipairs(kept) do
        got[i] = {r.headers["x-id"], r:header("X-ID"), r.path, r.version, r.query.x,
                  r.remote_address}
      end
      assert.same({{"first", "first", "/a", "1.1", "1", "127.0.0.1"},
                   {"second", "second", "/b", "1.0", nil, "127.0.0.1"},
                   {"third", "third", "/c", "1.1", nil, "127.0.0.1"}}, got)
    end)

    it("keeps connections alive and the client reuses them", function()
      local ports = {}
      local s = serve(function(r) ports[#ports + 1] = r.remote_port; return 200, "x" end)
      for _ = 1, 3 do assert.equal(200, assert(http.get(url(s))).status) end
      assert.equal(3, #ports)
      assert.equal(ports[1], ports[2])
      assert.equal(ports[1], ports[3])
    end)

    it("answers 100 pipelined requests in one write, in order", function()
      local s = serve(function(r)
        if tonumber(r.path:sub(2)) % 7 == 0 then tide.sleep(0) end -- some wait
        return 200, r.path
      end)
      local c = connect(s.port)
      local parts = {}
      for i = 1, 100 do parts[i] = req{"GET /" .. i .. " HTTP/1.1", "Host: h"} end
      c:write(table.concat(parts))
      for i = 1, 100 do
        local st, _, body = read_response(c)
        assert.equal(200, st)
        assert.equal("/" .. i, body)
      end
      c:close()
    end)

    it("reads chunked request bodies, with trailers kept apart", function()
      local seen
      local s = serve(function(r)
        if r.method == "POST" then
          seen = {body = assert(r:body()), trailer = r.trailers and r.trailers["x-sum"],
                  header = r.headers["x-sum"]}
        end
        return 200, "ok"
      end)
      local c = connect(s.port)
      c:write(req{"POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked"},
              "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 11\r\n\r\n")
      assert.equal(200, read_response(c))
      -- the connection goes on
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      assert.equal(200, read_response(c))
      c:close()
      assert.same({body = "hello world", trailer = "11"}, seen)
    end)

    it("streams the request body with req:read and the response with res:write", function()
      local pieces = 0
      local s = serve(function(r, res)
        res:set_header("Content-Type", "application/octet-stream")
        while true do
          local d, e, code = r:read(1000)
          assert(d or not e, e)
          if not d then break end
          assert.is_true(#d <= 1000)
          pieces = pieces + 1
          assert(res:write(d:upper()))
        end
        res:finish()
      end)
      local chunks, i = {}, 0
      for k = 1, 50 do chunks[k] = ("abc"):rep(1000) end
      local res = assert(http.request{method = "POST", url = url(s), body = function()
        i = i + 1
        return chunks[i]
      end})
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal(("ABC"):rep(50000), res.body)
      assert.is_true(pieces >= 150)
    end)

    it("res:write waits for a slow reader (backpressure) and gives up at send_timeout", function()
      local outcome = tide.channel(1)
      local s = serve(function(_, res)
        local chunk, sent = ("x"):rep(65536), 0
        while sent < 256 * 1048576 do
          local ok, e, code = res:write(chunk)
          if not ok then outcome:send({sent = sent, code = code}); return end
          sent = sent + #chunk
        end
        outcome:send({sent = sent})
      end, {send_timeout = 0.2})
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      local o = outcome:recv(10)
      c:close()
      assert.equal("ETIMEDOUT", o.code)
      assert.is_true(o.sent < 64 * 1048576)
    end)

    it("sends 100 Continue before the first body read", function()
      local s = serve(function(r) return 200, "got " .. assert(r:body()) end)
      local c = connect(s.port)
      c:write(req{"POST / HTTP/1.1", "Host: h", "Content-Length: 5", "Expect: 100-continue"})
      assert.equal("HTTP/1.1 100 Continue", c:read_line())
      assert.equal("", c:read_line())
      c:write("hello")
      local st, _, body = read_response(c)
      assert.equal(200, st)
      assert.equal("got hello", body)
      c:close()
    end)

    it("without a body read, answers without 100 Continue and closes", function()
      local s = serve(function() return 403, "no" end)
      local c = connect(s.port)
      c:write(req{"POST / HTTP/1.1", "Host: h", "Content-Length: 5", "Expect: 100-continue"})
      local st, h, body = read_response(c)
      assert.equal(403, st)
      assert.equal("no", body)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
    end)

    it("sends no body for HEAD, 204 and 304", function()
      local s = serve(function(r, res)
        if r.path == "/204" then return 204, "dropped" end
        if r.path == "/304" then return 304, "dropped" end
        if r.path == "/stream" then res:write("dropped"); return end
        return 200, "twelve bytes"
      end)
      local c = connect(s.port)
      c:write(req{"HEAD / HTTP/1.1", "Host: h"}, req{"GET /204 HTTP/1.1", "Host: h"},
              req{"GET /304 HTTP/1.1", "Host: h"}, req{"HEAD /stream HTTP/1.1", "Host: h"},
              req{"GET / HTTP/1.1", "Host: h"})
      local st, h = read_response(c, true)
      assert.equal(200, st)
      assert.equal("12", h["content-length"])
      st, h = read_response(c)
      assert.equal(204, st)
      assert.is_nil(h["content-length"])
      assert.is_nil(h["transfer-encoding"])
      st = read_response(c)
      assert.equal(304, st)
      st = read_response(c, true)
      assert.equal(200, st)
      local body
      st, h, body = read_response(c) -- the next response follows at once
      assert.equal(200, st)
      assert.equal("twelve bytes", body)
      c:close()
      local res = assert(http.request{method = "HEAD", url = url(s)})
      assert.equal("", res.body)
      assert.equal("12", res.headers["content-length"])
    end)

    it("honours Connection: close from the client and from the handler", function()
      local s = serve(function(r)
        if r.path == "/bye" then return 200, "bye", {Connection = "close"} end
        return 200, "hi"
      end)
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h", "Connection: close"})
      local st, h = read_response(c)
      assert.equal(200, st)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
      c = connect(s.port)
      c:write(req{"GET /bye HTTP/1.1", "Host: h"})
      st, h = read_response(c)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
    end)

    it("serves HTTP/1.0 clients: close by default, keep-alive when asked", function()
      local s = serve(function(r, res)
        if r.path == "/stream" then res:write("a"); res:write("b"); return end
        return 200, r.version
      end)
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.0"})
      local st, h, body = read_response(c)
      assert.equal(200, st)
      assert.equal("1.0", body)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
      c = connect(s.port)
      c:write(req{"GET / HTTP/1.0", "Connection: keep-alive"})
      st, h = read_response(c)
      assert.equal("keep-alive", h.connection)
      c:write(req{"GET /stream HTTP/1.0", "Connection: keep-alive"})
      st, h, body = read_response(c) -- no chunked coding in 1.0: the body ends with the connection
      assert.is_nil(h["transfer-encoding"])
      assert.equal("ab", body)
      c:close()
    end)

    it("a handler error before the response answers 500 and the connection goes on", function()
      local s = serve(function(r, res)
        if r.path == "/late" then res:write("partial"); error("late failure") end
        if r.path == "/fail" then error("handler failure") end
        return 200, "fine"
      end)
      local c = connect(s.port)
      c:write(req{"GET /fail HTTP/1.1", "Host: h"})
      assert.equal(500, read_response(c))
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      local st, _, body = read_response(c)
      assert.equal(200, st)
      assert.equal("fine", body)
      -- after the head went out, the connection closes
      c:write(req{"GET /late HTTP/1.1", "Host: h"})
      st = read_response(c, true)
      assert.equal(200, st)
      assert.is_true(closed(c))
      c:close()
      assert.equal(200, assert(http.get(url(s))).status) -- still serving
    end)

    it("logs a handler's error with its traceback and keeps serving", function()
      local out, err, rc = S.run_child([[
        local http = require "tide.http"
        local s = assert(http.serve{host = "127.0.0.1", port = 0, handler = function(r)
          if r.path == "/boom" then local t = nil; return t.field end
          return 200, "ok"
        end})
        local a = assert(http.get("http://127.0.0.1:" .. s.port .. "/boom"))
        local b = assert(http.get("http://127.0.0.1:" .. s.port .. "/"))
        print(a.status, b.status)
        s:close()
        http.close_idle()
      ]])
      assert.equal(0, rc, err)
      assert.equal("500\t200\n", out)
      assert.truthy(err:find("GET /boom", 1, true), err)
      assert.truthy(err:find("attempt to index", 1, true), err)
      assert.truthy(err:find("stack traceback", 1, true), err)
    end)

    -- With Debian 12's LuaJIT, an xpcall handler called for a stack
    -- overflow in compiled code crashes some shapes of function (LuaJIT
    -- issue #1196): these two crashed every run under xpcall. Handlers
    -- run outside any xpcall, so each answers 500, keeps the connection.
    it("answers 500 to a handler that recurses without end, and keeps serving", function()
      for _, locals in ipairs{19, 22} do
        local out, err, rc = S.run_child(([[
          local http = require "tide.http"
          local net = require "tide.net"
          local tonumber = tonumber
          local function f() tonumber(''); local %s; f(); local _, _, _ end
          local s = assert(http.serve{host = "127.0.0.1", port = 0, handler = function(r)
            if r.path == "/boom" then f() end
            return 200, "ok"
          end})
          local c = assert(net.connect{host = "127.0.0.1", port = s.port})
          for _ = 1, 4 do
            assert(c:write("GET /boom HTTP/1.1\r\nHost: h\r\n\r\n"))
            local line = assert(c:read_line())
            repeat local l = assert(c:read_line()) until l == ""
            assert(c:read_exactly(22)) -- "Internal Server Error\n"
            io.write(line:match("^HTTP/1.1 (%%d+)"), " ")
          end
          assert(c:write("GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
          io.write(assert(c:read_line()):match("^HTTP/1.1 (%%d+)"), "\n")
          c:close()
          s:close()
        ]]):format(("_"):rep(locals, ", ")))
        assert.equal(0, rc, err)
        assert.equal("500 500 500 500 200\n", out)
        assert.truthy(err:find("stack overflow\nstack traceback", 1, true), err)
      end
    end)

    it("answers and counts out a handler's error whose __tostring fails or waits", function()
      local s = serve(function(r)
        if r.path == "/raises" then
          error(setmetatable({}, {__tostring = function() error("no text") end}))
        elseif r.path == "/waits" then
          error(setmetatable({}, {__tostring = function() tide.sleep(0.01); return "x" end}))
        end
        return 200, "fine"
      end, {max_connections = 1})
      -- (a closed connection is counted out once the server reads its end)
      local function counted_out()
        local deadline = tide.hrtime() + 5
        while s.n > 0 do
          assert(tide.hrtime() < deadline, "the connection was never counted out")
          tide.sleep(0.005)
        end
      end
      for _, path in ipairs{"/raises", "/waits"} do
        local c = connect(s.port)
        c:write(req{"GET " .. path .. " HTTP/1.1", "Host: h"})
        assert.equal(500, read_response(c))
        c:write(req{"GET / HTTP/1.1", "Host: h"})
        local st, _, body = read_response(c)
        assert.equal(200, st)
        assert.equal("fine", body)
        c:close()
        counted_out()
      end
      -- the one connection allowed is free again: a new one is served
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h", "Connection: close"})
      assert.equal(200, read_response(c))
      c:close()
    end)

    it("a client that goes away cancels the handler's pending wait", function()
      local events = tide.channel(2)
      local s = serve(function(r)
        if r.path == "/quick" then return 200, "ok" end
        events:send("started")
        local ok, e = pcall(tide.sleep, 10)
        events:send(ok and "slept" or ("cancelled: " .. tostring(e)))
        error(e, 0)
      end)
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      assert.equal("started", events:recv(5))
      c:close()
      local t0 = tide.hrtime()
      local what = events:recv(5)
      assert.truthy(what:find("^cancelled"), what)
      assert.is_true(tide.hrtime() - t0 < 2)
      assert.equal(200, assert(http.get(url(s, "/quick"))).status)
      -- the same once the handler has read a body that came later
      local s2 = serve(function(r)
        assert.equal("hello", r:body())
        events:send("read")
        local ok, e = pcall(tide.sleep, 10)
        events:send(ok and "slept" or ("cancelled: " .. tostring(e)))
        error(e, 0)
      end)
      c = connect(s2.port)
      c:write(req{"POST / HTTP/1.1", "Host: h", "Content-Length: 5"})
      tide.sleep(0.05) -- (the body comes after the handler started; no result depends on it)
      c:write("hello")
      assert.equal("read", events:recv(5))
      c:close()
      what = events:recv(5)
      assert.truthy(what:find("^cancelled"), what)
    end)

    it("close() stops accepting and closes idle kept-alive connections", function()
      local s = assert(http.serve{host = "127.0.0.1", port = 0,
                                  handler = function() return 200, "ok" end})
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      assert.equal(200, read_response(c))
      s:close()
      assert.is_true(closed(c))
      c:close()
      local c2, e, code = net.connect{host = "127.0.0.1", port = s.port, timeout = 5}
      assert.is_nil(c2)
      assert.equal("ECONNREFUSED", code, e)
    end)

    it("serves on a Unix socket", function()
      local path = os.tmpname()
      os.remove(path)
      local s = assert(http.serve{path = path, handler = function(r) return 200, "unix " .. r.path end})
      local c = assert(net.connect{path = path, timeout = 5})
      c:set_timeout(5)
      c:write(req{"GET /u HTTP/1.1", "Host: localhost", "Connection: close"})
      local st, _, body = read_response(c)
      c:close()
      s:close()
      os.remove(path)
      assert.equal(200, st)
      assert.equal("unix /u", body)
    end)

    it("rejects unknown options and bad values", function()
      assert.has_error(function() http.serve{port = 0, handler = print, max_body = 1} end,
        "bad argument #1 to 'serve' (unknown option 'max_body')")
      assert.has_error(function() http.serve{port = 0} end)
      assert.has_error(function() http.serve{port = 0, handler = print, headers_timeout = -1} end)
      assert.has_error(function() http.serve{port = 0, handler = print, max_headers = 1.5} end)
      assert.has_error(function() http.serve("x") end)
    end)

    it("keeps a body to the Content-Length the handler set, closing when it differs", function()
      local s = serve(function(r, res)
        res:set_header("Content-Length", "3")
        if r.path == "/long" then res:write("abcdef") else res:write("a") end
        res:finish()
      end)
      local c = connect(s.port)
      c:write(req{"GET /long HTTP/1.1", "Host: h"}, req{"GET /short HTTP/1.1", "Host: h"})
      local st, h, body = read_response(c)
      assert.equal(200, st)
      assert.equal("3", h["content-length"])
      assert.equal("abc", body)
      assert.is_true(closed(c)) -- the rest was dropped: the connection ends
      c:close()
      c = connect(s.port)
      c:write(req{"GET /short HTTP/1.1", "Host: h"})
      assert.equal("HTTP/1.1 200 OK", c:read_line())
      local rest = {}
      while true do
        local d = c:read()
        if not d then break end
        rest[#rest + 1] = d
      end
      c:close()
      assert.truthy(table.concat(rest):find("\r\n\r\na$")) -- one byte of three, then the close
    end)

    it("checks headers set by handlers (no CR LF injection)", function()
      local s = serve(function(_, res)
        local ok = pcall(res.set_header, res, "X-A", "b\r\nX-Injected: 1")
        local ok2 = pcall(res.set_header, res, "Bad Name", "v")
        return 200, tostring(ok) .. tostring(ok2), {["X-Fine"] = "yes"}
      end)
      local res = assert(http.get(url(s)))
      assert.equal("falsefalse", res.body)
      assert.is_nil(res.headers["x-injected"])
      assert.equal("yes", res.headers["x-fine"])
    end)

    -- A returned answer's head is made in one string when it can be; the
    -- headers it cannot take there (framed by the server, numbers, invalid,
    -- too large) go the general way, with the same results.
    it("answers returned headers alike on the one-string path and the general one", function()
      local big = ("v"):rep(9000)
      local answers = {
        ["/two"] = {200, "two", {["X-A"] = "1", ["X-B"] = "2"}},
        ["/number"] = {200, "n", {["X-N"] = 5}},
        ["/date"] = {200, "d", {Date = "custom"}},
        ["/length"] = {200, "hello", {["content-length"] = "5"}},
        ["/te"] = {200, "t", {["Transfer-Encoding"] = "gzip"}},
        ["/badname"] = {200, "x", {["Bad Name"] = "x"}},
        ["/badvalue"] = {200, "x", {X = "a\r\nb"}},
        ["/notable"] = {200, "x", "X-A: 1"},
        ["/bigbody"] = {200, ("b"):rep(10000), {["X-A"] = "1"}},
        ["/bighead"] = {200, "h", {["X-Big"] = big}},
        ["/empty"] = {200, "", {["X-A"] = "1"}},
        ["/close"] = {200, "c", {Connection = "close"}},
      }
      local s = serve(function(r) return unpack(answers[r.path]) end)
      local c = connect(s.port)
      -- the head's lines, in order (with duplicates), then the body
      local function exchange(path)
        c:write(req{"GET " .. path .. " HTTP/1.1", "Host: h"})
        local lines = {assert(c:read_line())}
        while lines[#lines] ~= "" do lines[#lines + 1] = assert(c:read_line()) end
        local h, n = {}, {}
        for i = 2, #lines - 1 do
          local k, v = lines[i]:match("^([^:]+): (.*)$")
          h[k:lower()] = v
          n[k:lower()] = (n[k:lower()] or 0) + 1
        end
        local len = tonumber(h["content-length"])
        return lines[1], h, n, len and len > 0 and c:read_exactly(len) or ""
      end
      local st, h, n, body = exchange("/two")
      assert.equal("HTTP/1.1 200 OK", st)
      assert.same({"1", "2", "3", 1}, {h["x-a"], h["x-b"], h["content-length"], n.date})
      assert.equal("two", body)
      st, h, n, body = exchange("/number")
      assert.same({"5", "n", 1}, {h["x-n"], body, n.date})
      st, h, n = exchange("/date")
      assert.same({"custom", 1}, {h.date, n.date})
      st, h, n, body = exchange("/length")
      assert.same({"5", 1, "hello"}, {h["content-length"], n["content-length"], body})
      st, h, n, body = exchange("/te")
      assert.same({nil, "1", "t"}, {h["transfer-encoding"], h["content-length"], body})
      for _, path in ipairs{"/badname", "/badvalue", "/notable"} do
        st, h, n, body = exchange(path)
        assert.equal("HTTP/1.1 500 Internal Server Error", st)
        assert.is_nil(h["x-a"])
        assert.is_nil(h.x)
      end
      st, h, n, body = exchange("/bigbody")
      assert.same({"1", 10000}, {h["x-a"], #body})
      assert.equal(("b"):rep(10000), body)
      st, h, n, body = exchange("/bighead")
      assert.same({big, "h", 1}, {h["x-big"], body, n.date})
      st, h, n, body = exchange("/empty")
      assert.same({"1", "0", ""}, {h["x-a"], h["content-length"], body})
      st, h, n, body = exchange("/close")
      assert.same({"close", "c"}, {h.connection, body})
      assert.is_true(closed(c))
      c:close()
      -- HTTP/1.0 with keep-alive gets it back, and the connection stays
      c = connect(s.port)
      for _ = 1, 2 do
        c:write(req{"GET /two HTTP/1.0", "Connection: keep-alive"})
        local st10, h10, body10 = read_response(c)
        assert.same({200, "keep-alive", "two"}, {st10, h10.connection, body10})
      end
      c:close()
    end)

    it("sends the Date of the current second, in English whatever the locale", function()
      local s = serve(function() return 200, "d", {["X-A"] = "1"} end)
      local before = os.time()
      local res = assert(http.get(url(s)))
      local after = os.time()
      local d = res.headers.date
      local ok = false
      for t = before, after do
        if d == os.date("!%a, %d %b %Y %H:%M:%S GMT", t) then ok = true end
      end
      assert.is_true(ok, d)
      -- (an error answer carries the same line)
      local c = connect(s.port)
      c:write("BAD\r\n\r\n")
      local st, h = read_response(c)
      assert.equal(400, st)
      assert.truthy(h.date:match("^%u%l%l, %d%d %u%l%l %d%d%d%d %d%d:%d%d:%d%d GMT$"), h.date)
      c:close()
    end)
  end)

  describe("limits and timeouts", function()
    it("closes a slowloris connection at headers_timeout while serving others", function()
      local s = serve(function() return 200, "ok" end, {headers_timeout = 0.3})
      local slow = connect(s.port)
      local done = tide.channel(1)
      tide.spawn(function()
        local data = req{"GET / HTTP/1.1", "Host: h", "X-Slow: " .. ("z"):rep(40)}
        for i = 1, #data do
          if not slow:write(data:sub(i, i)) then break end
          tide.sleep(0.02)
          if done:count() > 0 then break end
        end
      end)
      local t0 = tide.hrtime()
      for _ = 1, 5 do assert.equal(200, assert(http.get(url(s))).status) end
      local st = read_response(slow)
      assert.equal(408, st)
      assert.is_true(closed(slow))
      local took = tide.hrtime() - t0
      done:send(true)
      slow:close()
      assert.is_true(took >= 0.25 and took < 2, took)
    end)

    it("keeps timing out the connections left open after close()", function()
      local s = serve(function() return 200, "ok" end, {headers_timeout = 0.2})
      local c = connect(s.port)
      -- (with the first request: the server holds the start of the second
      -- once the first is answered)
      c:write(req{"GET / HTTP/1.1", "Host: h"}, "GET / HTTP/1.1\r\nHo") -- a head that never ends
      assert.equal(200, read_response(c))
      local t0 = tide.hrtime()
      s:close()
      assert.equal(408, read_response(c))
      assert.is_true(closed(c))
      c:close()
      assert.is_true(tide.hrtime() - t0 < 2)
    end)

    it("answers 408 when the body stalls past body_timeout", function()
      local s = serve(function(r)
        local b, e, code = r:body()
        return 200, tostring(b) .. tostring(code)
      end, {body_timeout = 0.2})
      local c = connect(s.port)
      c:write(req{"POST / HTTP/1.1", "Host: h", "Content-Length: 10"}, "abc")
      local st, h = read_response(c)
      assert.equal(408, st)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
    end)

    it("closes idle keep-alive connections at keepalive_timeout", function()
      local s = serve(function() return 200, "ok" end, {keepalive_timeout = 0.2})
      local c = connect(s.port)
      c:write(req{"GET / HTTP/1.1", "Host: h"})
      assert.equal(200, read_response(c))
      local t0 = tide.hrtime()
      assert.is_true(closed(c))
      local took = tide.hrtime() - t0
      assert.is_true(took >= 0.15 and took < 2, took)
      c:close()
    end)

    it("caps requests per connection", function()
      local s = serve(function() return 200, "ok" end, {max_requests_per_connection = 2})
      local c = connect(s.port)
      c:write(req{"GET /1 HTTP/1.1", "Host: h"}, req{"GET /2 HTTP/1.1", "Host: h"},
              req{"GET /3 HTTP/1.1", "Host: h"})
      local st, h = read_response(c)
      assert.equal(200, st)
      assert.is_nil(h.connection)
      st, h = read_response(c)
      assert.equal(200, st)
      assert.equal("close", h.connection)
      assert.is_true(closed(c))
      c:close()
    end)

    it("caps connections: the one over max_connections gets 503", function()
      local s = serve(function() return 200, "ok" end, {max_connections = 1})
      local c1 = connect(s.port)
      c1:write(req{"GET / HTTP/1.1", "Host: h"})
      assert.equal(200, read_response(c1))
      local c2 = connect(s.port)
      local st = read_response(c2)
      assert.equal(503, st)
      assert.is_true(closed(c2))
      c2:close()
      c1:close()
    end)
  end)

  describe("https", function()
    local dir
    setup(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. S.shell_quote(dir)) == 0 or true)
      S.write_file(dir .. "/gen.sh", [[
set -e
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -out ca.pem -days 30 -subj "/CN=tide http spec CA" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key 2>/dev/null
openssl req -new -key server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server.pem -days 30 -extfile server.ext 2>/dev/null
]])
      local _, err, rc = S.run("sh gen.sh", dir)
      assert(rc == 0, "making the certificates failed: " .. err)
    end)
    teardown(function() S.run("rm -rf " .. S.shell_quote(dir)) end)

    it("serves and requests over TLS, verifying the server", function()
      local s = serve(function(r) return 200, "secure " .. r.path end,
                      {tls = {cert = dir .. "/server.pem", key = dir .. "/server.key"}})
      local res = assert(http.get(("https://localhost:%d/x"):format(s.port),
                                  {tls = {ca = dir .. "/ca.pem"}, timeout = 5}))
      assert.equal(200, res.status)
      assert.equal("secure /x", res.body)
      -- pooled and reused
      res = assert(http.get(("https://localhost:%d/y"):format(s.port),
                            {tls = {ca = dir .. "/ca.pem"}, timeout = 5}))
      assert.equal("secure /y", res.body)
      -- an unknown issuer fails, with a code
      local r, e, code = http.get(("https://127.0.0.1:%d/"):format(s.port), {timeout = 5})
      assert.is_nil(r)
      assert.is_string(e)
      assert.is_string(code)
      -- curl agrees
      local out = curl("--cacert", dir .. "/ca.pem", ("https://localhost:%d/c"):format(s.port))
      assert.equal("secure /c", out)
    end)
  end)

  describe("with curl", function()
    it("serves HTTP/1.0, reused keep-alive, chunked uploads and 100-continue", function()
      local s = serve(function(r)
        if r.method == "POST" or r.method == "PUT" then
          return 200, r.version .. " body " .. #assert(r:body())
        end
        return 200, "v" .. r.version
      end)
      local out = curl("--http1.0", url(s))
      assert.equal("v1.0", out)
      local _, err = curl("-v", url(s, "/a"), url(s, "/b"))
      assert.truthy(err:find("Re%-using existing connection"), err)
      local file = os.tmpname()
      S.write_file(file, ("0123456789"):rep(10000))
      out = curl("-T", file, "-H", "Transfer-Encoding: chunked", url(s))
      assert.equal("1.1 body 100000", out)
      out, err = curl("-v", "--data-binary", "@" .. file, "-H", "Expect: 100-continue", url(s))
      os.remove(file)
      assert.equal("1.1 body 100000", out)
      assert.truthy(err:find("HTTP/1.1 100 Continue", 1, true), err)
    end)
  end)
end)
