-- spec/http_hostile_spec.lua - tide.http against hostile requests
-- (docs/http.md, "Hostile input"): each request below is sent as raw
-- bytes on a fresh connection; the server must answer exactly the status
-- given, close the connection, and never run the handler. Smuggling
-- vectors (Content-Length with Transfer-Encoding, malformed lengths and
-- chunk sizes, obs-fold, bare CR or LF, control characters, ...) and the
-- size limits of the head and the body.
--
-- Loopback only; every read is bounded by a timeout.

local S = require "spec.support"
local http = require "tide.http"
local net = require "tide.net"

local watchdog = S.watchdog("http_hostile_spec.lua")

-- Sends data on a new connection and reads until the server closes it
-- (at most 5 s): the bytes received and whether the end came.
local function exchange(port, data)
  local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
  c:set_timeout(5)
  c:write(data)
  local got, closed = {}, false
  while true do
    local d, e = c:read()
    if not d then closed = e == nil or e == "connection reset by peer"; break end
    got[#got + 1] = d
  end
  c:close()
  return table.concat(got), closed
end

local CRLF = "\r\n"
local function req(lines) return table.concat(lines, CRLF) .. CRLF .. CRLF end

-- {name, request bytes, status}
local cases = {
  -- framing: Content-Length and Transfer-Encoding
  {"Content-Length with Transfer-Encoding",
   req{"POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Transfer-Encoding: chunked"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding then Content-Length",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Content-Length: 3"} .. "0\r\n\r\n", 400},
  {"differing duplicate Content-Length",
   req{"POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Content-Length: 4"} .. "abcd", 400},
  {"differing Content-Length in one list",
   req{"POST / HTTP/1.1", "Host: a", "Content-Length: 3, 4"} .. "abcd", 400},
  {"Content-Length +3", req{"POST / HTTP/1.1", "Host: a", "Content-Length: +3"} .. "abc", 400},
  {"Content-Length -1", req{"POST / HTTP/1.1", "Host: a", "Content-Length: -1"}, 400},
  {"Content-Length -0", req{"POST / HTTP/1.1", "Host: a", "Content-Length: -0"}, 400},
  {"Content-Length 0x3", req{"POST / HTTP/1.1", "Host: a", "Content-Length: 0x3"} .. "abc", 400},
  {"Content-Length with an inner space", req{"POST / HTTP/1.1", "Host: a", "Content-Length: 1 2"} .. "abc", 400},
  {"Content-Length 3.0", req{"POST / HTTP/1.1", "Host: a", "Content-Length: 3.0"} .. "abc", 400},
  {"Content-Length overflow",
   req{"POST / HTTP/1.1", "Host: a", "Content-Length: 99999999999999999999999"} .. "abc", 400},
  {"empty Content-Length", req{"POST / HTTP/1.1", "Host: a", "Content-Length: "}, 400},
  {"chunk size 0x3",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "0x3\r\nabc\r\n0\r\n\r\n", 400},
  {"chunk size -0",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "-0\r\n\r\n", 400},
  {"chunk size +3",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "+3\r\nabc\r\n0\r\n\r\n", 400},
  {"chunk size with a leading space",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. " 3\r\nabc\r\n0\r\n\r\n", 400},
  {"chunk size with a trailing space",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "3 \r\nabc\r\n0\r\n\r\n", 400},
  {"chunk size overflow",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} ..
   "fffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400},
  {"chunk size with a bare LF",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "3\nabc\r\n0\r\n\r\n", 400},
  {"chunk data longer than its size",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "3\r\nabcd\r\n0\r\n\r\n", 400},
  {"Transfer-Encoding chunked, gzip",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, gzip"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding gzip alone",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding chunked twice",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, chunked"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding over two lines, chunked first",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: identity"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding xchunked",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: xchunked"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding chunked with a parameter",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked;q=1"} .. "0\r\n\r\n", 400},
  {"Transfer-Encoding empty element",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: , chunked"} .. "0\r\n\r\n", 400},
  {"unknown transfer coding before chunked",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"} .. "0\r\n\r\n", 501},
  {"Transfer-Encoding on HTTP/1.0",
   req{"POST / HTTP/1.0", "Transfer-Encoding: chunked"} .. "0\r\n\r\n", 400},
  -- the grammar of the head
  {"obs-fold", req{"GET / HTTP/1.1", "Host: a", "X-A: one", " two"}, 400},
  {"obs-fold with a tab", req{"GET / HTTP/1.1", "Host: a", "X-A: one", "\ttwo"}, 400},
  {"white space before the first field", req{"GET / HTTP/1.1", " Host: a"}, 400},
  {"bare LF line endings", "GET / HTTP/1.1\nHost: a\n\n", 400},
  {"bare LF after a field", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400},
  {"bare LF ending the head", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400},
  {"bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400},
  {"bare CR ending a field", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\n\r\n", 400},
  {"bare CR as the empty line", "GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", 400},
  {"NUL in a value", req{"GET / HTTP/1.1", "Host: a", "X-A: b\0c"}, 400},
  {"NUL in a name", req{"GET / HTTP/1.1", "Host: a", "X-\0A: b"}, 400},
  {"control character in a value", req{"GET / HTTP/1.1", "Host: a", "X-A: b\1c"}, 400},
  {"DEL in a value", req{"GET / HTTP/1.1", "Host: a", "X-A: b\127c"}, 400},
  {"escape in a value", req{"GET / HTTP/1.1", "Host: a", "X-A: \27[31m"}, 400},
  {"space before the colon", req{"GET / HTTP/1.1", "Host: a", "X-A : b"}, 400},
  {"space before the colon of Content-Length",
   req{"POST / HTTP/1.1", "Host: a", "Content-Length : 3"} .. "abc", 400},
  {"tab before the colon", req{"GET / HTTP/1.1", "Host: a", "X-A\t: b"}, 400},
  {"empty header name", req{"GET / HTTP/1.1", "Host: a", ": b"}, 400},
  {"field without a colon", req{"GET / HTTP/1.1", "Host: a", "X-A b"}, 400},
  {"separator in a name", req{"GET / HTTP/1.1", "Host: a", "X(A): b"}, 400},
  {"HTTP/1.1 without Host", req{"GET / HTTP/1.1", "X-A: b"}, 400},
  {"two Host fields", req{"GET / HTTP/1.1", "Host: a", "Host: b"}, 400},
  {"HTTP/2.0", req{"GET / HTTP/2.0", "Host: a"}, 400},
  {"HTTP/1.2", req{"GET / HTTP/1.2", "Host: a"}, 400},
  {"HTTP/0.9 form", "GET /\r\n\r\n", 400},
  {"lower-case version", req{"GET / http/1.1", "Host: a"}, 400},
  {"version HTTP/1.10", req{"GET / HTTP/1.10", "Host: a"}, 400},
  {"space in the target", req{"GET /a b HTTP/1.1", "Host: a"}, 400},
  {"two spaces after the method", req{"GET  / HTTP/1.1", "Host: a"}, 400},
  {"tab as separator", req{"GET\t/ HTTP/1.1", "Host: a"}, 400},
  {"control character in the target", req{"GET /\1 HTTP/1.1", "Host: a"}, 400},
  {"non-token method", req{"G(T / HTTP/1.1", "Host: a"}, 400},
  {"unsupported expectation", req{"GET / HTTP/1.1", "Host: a", "Expect: 200-ok"}, 417},
  -- limits (the defaults)
  {"request line over 8 KiB", req{"GET /" .. ("a"):rep(8300) .. " HTTP/1.1", "Host: a"}, 414},
  {"header block over 16 KiB", req{"GET / HTTP/1.1", "Host: a", "X-A: " .. ("b"):rep(17000)}, 431},
  {"many fields over 16 KiB", req{"GET / HTTP/1.1", "Host: a",
     ("X-A: " .. ("b"):rep(200) .. CRLF):rep(90) .. "X-B: c"}, 431},
  {"101 header fields", req{"GET / HTTP/1.1", "Host: a", ("X-A: b" .. CRLF):rep(99) .. "X-B: c"}, 431},
  {"Content-Length over 1 MiB", req{"POST / HTTP/1.1", "Host: a", "Content-Length: 1048577"}, 413},
  {"chunked body over 1 MiB",
   req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"} .. "100001\r\n", 413},
}

describe("tide.http against hostile requests", function()
  local srv, ran
  setup(function()
    srv = assert(http.serve{host = "127.0.0.1", port = 0, handler = function(req, res)
      ran = ran + 1
      return 200, "ran"
    end})
  end)
  teardown(function()
    srv:close()
    watchdog:stop()
  end)
  before_each(function() ran = 0 end)

  it("serves a well-formed request (the cases below differ from it in one way)", function()
    local got, closed = exchange(srv.port, req{"GET / HTTP/1.1", "Host: a", "Connection: close"})
    assert.equal("HTTP/1.1 200 OK", got:match("^[^\r]*"))
    assert.is_true(closed)
    assert.equal(1, ran)
  end)

  for _, case in ipairs(cases) do
    local name, data, status = case[1], case[2], case[3]
    it(("answers %d and closes: %s"):format(status, name), function()
      local got, closed = exchange(srv.port, data)
      assert.equal(status, tonumber(got:match("^HTTP/1%.1 (%d%d%d) ")), got:sub(1, 200))
      assert.truthy(got:find("\r\nConnection: close\r\n", 1, true))
      assert.is_true(closed)
      assert.equal(0, ran)
    end)
  end

  it("the limits follow the options", function()
    local s2 = assert(http.serve{host = "127.0.0.1", port = 0, max_request_line = 100,
      max_header_size = 300, max_headers = 3, max_body_size = 10,
      handler = function() ran = ran + 1; return 200, "ok" end})
    local got = exchange(s2.port, req{"GET /" .. ("a"):rep(120) .. " HTTP/1.1", "Host: a"})
    assert.equal("414", got:match("^HTTP/1%.1 (%d+)"))
    got = exchange(s2.port, req{"GET / HTTP/1.1", "Host: a", "X-A: " .. ("b"):rep(300)})
    assert.equal("431", got:match("^HTTP/1%.1 (%d+)"))
    got = exchange(s2.port, req{"GET / HTTP/1.1", "Host: a", "A: 1", "B: 2", "C: 3"})
    assert.equal("431", got:match("^HTTP/1%.1 (%d+)"))
    got = exchange(s2.port, req{"POST / HTTP/1.1", "Host: a", "Content-Length: 11"})
    assert.equal("413", got:match("^HTTP/1%.1 (%d+)"))
    got = exchange(s2.port, req{"GET / HTTP/1.1", "Host: a", "A: 1", "Connection: close"})
    assert.equal("200", got:match("^HTTP/1%.1 (%d+)"))
    assert.equal(1, ran)
    s2:close()
  end)

  it("a bad request after a good one on the same connection still closes it", function()
    local got, closed = exchange(srv.port, req{"GET /1 HTTP/1.1", "Host: a"} ..
      req{"POST / HTTP/1.1", "Host: a", "Content-Length: 1", "Transfer-Encoding: chunked"} ..
      "0\r\n\r\n" .. req{"GET /3 HTTP/1.1", "Host: a"})
    local statuses = {}
    for s in got:gmatch("HTTP/1%.1 (%d%d%d) ") do statuses[#statuses + 1] = s end
    assert.same({"200", "400"}, statuses)
    assert.is_true(closed)
    assert.equal(1, ran)
  end)

  it("trailers are never merged into the request headers", function()
    local seen
    local s2 = assert(http.serve{host = "127.0.0.1", port = 0, handler = function(r)
      local b = assert(r:body())
      seen = {body = b, h = r.headers["x-smuggled"], host = r.headers.host,
              t = r.trailers and r.trailers["x-smuggled"]}
      return 200, "ok"
    end})
    local got = exchange(s2.port, req{"POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
      "Connection: close"} .. "3\r\nabc\r\n0\r\nX-Smuggled: yes\r\nHost: evil\r\n\r\n")
    assert.equal("200", got:match("^HTTP/1%.1 (%d+)"))
    assert.same({body = "abc", host = "a", t = "yes"}, seen)
    s2:close()
  end)
end)
