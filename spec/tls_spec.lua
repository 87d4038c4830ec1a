-- spec/tls_spec.lua - TLS on tide's streams (docs/tls.md; API.md,
-- "Networking"): tide client and server round trips with lines and large
-- writes both ways, SNI, ALPN, certificate verification and its failures,
-- ca= and verify=false, reloading a server's certificate, starttls on both
-- sides, handshake timeouts, plaintext and garbage sent to a TLS port, and
-- interoperation with `openssl s_server` and `openssl s_client`.
--
-- The certificates are made when the spec starts, in a temporary folder,
-- with the openssl command. Loopback only; every wait is bounded and
-- synchronised on events; each test checks that it left no handle keeping
-- the loop alive.

local S = require "spec.support"
local net = require "tide.net"
local has_process, process = pcall(require, "tide.process")

local watchdog = S.watchdog("tls_spec.lua")

-- certificates --------------------------------------------------------------------

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. S.shell_quote(dir)) == 0 or true)

local function path(name) return dir .. "/" .. name end

-- Every certificate an EC P-256 key: fast to make.
local GEN = [[
set -e
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # ca name cn
  newkey $1.key
  openssl req -x509 -new -key $1.key -out $1.pem -days 30 -subj "/CN=$2" 2>/dev/null
}
leaf() { # leaf name ca cn san days
  newkey $1.key
  openssl req -new -key $1.key -out $1.csr -subj "/CN=$3" 2>/dev/null
  printf 'subjectAltName=%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial \
    -out $1.pem -days $5 -extfile $1.ext 2>/dev/null
}
ca ca "tide spec CA"
ca ca2 "tide spec CA 2"
leaf server ca localhost "DNS:localhost,IP:127.0.0.1" 30
leaf server2 ca2 localhost "DNS:localhost,IP:127.0.0.1" 30
leaf expired ca localhost "DNS:localhost,IP:127.0.0.1" -1
leaf wrong ca wrong.example "DNS:wrong.example" 30
newkey self.key
openssl req -x509 -new -key self.key -out self.pem -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
printf 'not a certificate\n' > garbage.pem
]]

do
  local script = path("gen.sh")
  S.write_file(script, GEN)
  local _, err, rc = S.run("sh " .. S.shell_quote(script), dir)
  assert(rc == 0, "making the certificates failed: " .. err)
end

local function cert(name) return {cert = path(name .. ".pem"), key = path(name .. ".key")} end

-- helpers ---------------------------------------------------------------------------

local errors
local refs0

local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local function with(t, extra)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function echo_lines(c)
  c:set_timeout(5)
  while true do
    local l = c:read_line()
    if not l then return end
    c:write("echo: ", l, "\n")
  end
end

-- A TLS server on loopback running handler(conn) per connection.
local function tls_server(handler, tls, opts)
  opts = with(opts or {}, {host = "127.0.0.1", port = 0, handler = handler,
                           tls = tls or cert("server")})
  return assert(net.listen(opts))
end

local function tls_connect(sv, tls, opts)
  return net.connect(with({host = "localhost", port = sv.port, timeout = 5,
                           tls = tls or {ca = path("ca.pem")}}, opts))
end

describe("tide.net TLS", function()
  teardown(function()
    watchdog:stop()
    os.execute("rm -rf " .. S.shell_quote(dir))
  end)

  before_each(function()
    errors = {}
    tide.on_error(function(e) errors[#errors + 1] = tostring(e) end)
    refs0 = tide.stats().refs
  end)

  after_each(function()
    collectgarbage()
    tide.sleep(0.01) -- a close phase and background flushes end
    tide.on_error(nil)
    assert.same({}, errors)
    assert.equal(refs0, tide.stats().refs, "a handle still keeps the loop alive")
  end)

  describe("between a tide client and a tide server", function()
    it("carries lines both ways, verified against ca=", function()
      local sv = tls_server(echo_lines)
      local c = assert(tls_connect(sv))
      for i = 1, 20 do
        assert.is_true(c:write("line ", i, "\n"))
        assert.equal("echo: line " .. i, c:read_line())
      end
      local info = c:tls_info()
      assert.is_true(info.verified)
      assert.equal("ok", info.verify_result)
      assert.equal("CN=localhost", info.peer_subject)
      assert.equal("CN=tide spec CA", info.peer_issuer)
      assert.matches("^TLSv1%.[23]$", info.version)
      assert.is_string(info.cipher)
      assert.is_nil(c.alpn)
      -- a read that times out loses nothing, and the session goes on
      c:set_timeout(0.05)
      assert.same({nil, "timed out", "ETIMEDOUT"}, {c:read_line()})
      c:set_timeout(5)
      c:write("after\n")
      assert.equal("echo: after", c:read_line())
      c:close()
      sv:close()
    end)

    it("moves 4+ MiB each way at once, with backpressure on both ends", function()
      local size = 4 * 1024 * 1024 + 12345
      local up = ("u"):rep(size)
      local down = ("d"):rep(size)
      local got_up
      local sv = tls_server(function(c)
        c:set_timeout(5)
        local w = tide.spawn(function() return c:write(down) end)
        got_up = c:read_exactly(size)
        assert.is_true(select(2, w:join(5)))
        c:shutdown()
        assert.is_nil(c:read()) -- the client's close_notify
      end)
      local c = assert(tls_connect(sv))
      c:set_timeout(5)
      local w = tide.spawn(function()
        local ok, e, code = c:write(up)
        c:shutdown()
        return ok, e, code
      end)
      local got = c:read_exactly(size)
      assert.is_true(select(2, w:join(5)))
      assert.is_true(got == down)
      assert.is_nil(c:read()) -- close_notify and the end: no error
      assert.is_true(got_up == up)
      c:close()
      sv:close()
    end)

    it("parks a writer whose peer does not read, holding at most write_high", function()
      local peer
      local ready, finished = tide.cond(), tide.cond()
      local sv = tls_server(function(c) peer = c; ready:signal(); finished:wait(5) end)
      local c = assert(tls_connect(sv, nil, {write_high = 32768, write_low = 8192}))
      if not peer then ready:wait(5) end
      local data = ("p"):rep(16 * 1024 * 1024)
      local w = tide.spawn(function() return c:write(data) end)
      -- the kernel's buffers fill, then the writer waits for good
      local deadline = tide.hrtime() + 5
      repeat tide.sleep(0.01)
      until (w:status() == "waiting" and select(2, c:buffered()) >= 8192) or
            tide.hrtime() > deadline
      assert.equal("waiting", w:status())
      local _, out = c:buffered()
      assert.is_true(out <= 32768, "output buffer holds " .. out)
      local got = peer:read_exactly(#data)
      assert.is_true(got == data)
      assert.is_true(select(2, w:join(5)))
      c:close()
      finished:signal()
      sv:close()
    end)

    it("sends SNI from the host name, or servername=, and none for an address", function()
      local names = {}
      local sv = tls_server(function(c)
        names[#names + 1] = c:tls_info().servername or false
        c:write("hi\n")
      end)
      local c = assert(tls_connect(sv))
      assert.equal("hi", c:read_line())
      c:close()
      c = assert(tls_connect(sv, {ca = path("ca.pem"), servername = "localhost"},
                             {host = "127.0.0.1"}))
      assert.equal("hi", c:read_line())
      c:close()
      c = assert(tls_connect(sv, {ca = path("ca.pem")}, {host = "127.0.0.1"}))
      assert.equal("hi", c:read_line())
      assert.is_true(c:tls_info().verified) -- against the certificate's IP
      c:close()
      -- an address as servername: checked as an address, no SNI
      c = assert(tls_connect(sv, {ca = path("ca.pem"), servername = "127.0.0.1"},
                             {host = "127.0.0.1"}))
      assert.equal("hi", c:read_line())
      assert.is_true(c:tls_info().verified)
      c:close()
      assert.same({"localhost", "localhost", false, false}, names)
      sv:close()
    end)

    it("negotiates ALPN in the server's order of preference", function()
      local seen = {}
      local sv = tls_server(function(c) seen[#seen + 1] = c.alpn or false; c:write("x") end,
                            with(cert("server"), {alpn = {"h2", "http/1.1"}}))
      local c = assert(tls_connect(sv, {ca = path("ca.pem"), alpn = {"http/1.1", "h2"}}))
      assert.equal("h2", c.alpn)
      assert.equal("h2", c:tls_info().alpn)
      assert.equal("x", c:read(1))
      c:close()
      c = assert(tls_connect(sv, {ca = path("ca.pem"), alpn = {"spdy/1", "http/1.1"}}))
      assert.equal("http/1.1", c.alpn)
      assert.equal("x", c:read(1))
      c:close()
      c = assert(tls_connect(sv)) -- a client without ALPN
      assert.is_nil(c.alpn)
      assert.equal("x", c:read(1))
      c:close()
      local e, code
      c, e, code = tls_connect(sv, {ca = path("ca.pem"), alpn = {"imap"}})
      assert.is_nil(c)
      assert.equal("ETLS", code)
      assert.matches("no application protocol", e)
      assert.same({"h2", "http/1.1", false}, seen)
      sv:close()
    end)
  end)

  describe("verification", function()
    local function fails(tls_opts, srv, pattern, code, opts)
      local sv = tls_server(function(c) c:write("x") end, cert(srv))
      local c, e, ecode = tls_connect(sv, tls_opts, opts)
      assert.is_nil(c)
      assert.matches(pattern, e)
      assert.equal(code or "ECERT", ecode)
      sv:close()
    end

    it("is on by default, against the system's CAs: an unknown CA fails", function()
      fails(true, "server", "^certificate verify failed: unable to get local issuer certificate$")
    end)

    it("fails an expired certificate", function()
      fails({ca = path("ca.pem")}, "expired", "^certificate verify failed: certificate has expired$")
    end)

    it("fails a certificate for another name or address", function()
      fails({ca = path("ca.pem")}, "wrong", "^certificate verify failed: hostname mismatch$")
      fails({ca = path("ca.pem")}, "wrong", "^certificate verify failed: IP address mismatch$",
            nil, {host = "127.0.0.1"})
      -- servername= is the name checked
      fails({ca = path("ca.pem"), servername = "other.example"}, "server",
            "^certificate verify failed: hostname mismatch$")
    end)

    it("fails a self-signed certificate", function()
      fails({ca = path("ca.pem")}, "self", "^certificate verify failed: self.signed certificate$")
    end)

    it("leaves no stale error behind: each connection reports its own", function()
      fails({ca = path("ca.pem")}, "expired", "certificate has expired")
      local sv = tls_server(echo_lines)
      local c = assert(tls_connect(sv))
      c:write("a\n")
      assert.equal("echo: a", c:read_line())
      c:close()
      sv:close()
      fails(true, "server", "unable to get local issuer certificate")
      fails({ca = path("ca.pem")}, "wrong", "hostname mismatch")
    end)

    it("verify=false accepts any certificate and says it did not verify", function()
      for _, name in ipairs{"self", "expired", "wrong", "server"} do
        local sv = tls_server(echo_lines, cert(name))
        local c = assert(tls_connect(sv, {verify = false}))
        c:write("q\n")
        assert.equal("echo: q", c:read_line())
        assert.is_false(c:tls_info().verified)
        c:close()
        sv:close()
      end
    end)

    it("reports files that cannot be read or used", function()
      local sv, e, code = net.listen{port = 0, tls = {cert = path("nope.pem"), key = path("server.key")}}
      assert.is_nil(sv)
      assert.equal("no such file or directory: " .. path("nope.pem"), e)
      assert.equal("ENOENT", code)
      sv, e, code = net.listen{port = 0, tls = {cert = path("garbage.pem"), key = path("server.key")}}
      assert.is_nil(sv)
      assert.matches("^cannot load the certificate " .. path("garbage.pem"):gsub("%p", "%%%0"), e)
      assert.equal("ETLS", code)
      sv, e, code = net.listen{port = 0, tls = {cert = path("server.pem"), key = path("wrong.key")}}
      assert.is_nil(sv)
      assert.matches("^cannot load the key .*: key values mismatch$", e)
      assert.equal("ETLS", code)
      local c
      c, e, code = net.connect{port = 1, tls = {ca = path("nope.pem")}}
      assert.is_nil(c)
      assert.equal("ENOENT", code)
    end)

    it("raises on misuse of the options", function()
      assert.matches("unknown TLS option 'verfy'", error_of(net.connect, {port = 1, tls = {verfy = false}}))
      assert.matches("TLS option 'verify' must be a boolean", error_of(net.connect, {port = 1, tls = {verify = "no"}}))
      assert.matches("option 'tls' must be true or a table", error_of(net.connect, {port = 1, tls = "yes"}))
      assert.matches("'cert' and 'key' are required", error_of(net.listen, {port = 0, tls = true}))
      assert.matches("'cert' and 'key' are required", error_of(net.listen, {port = 0, tls = {cert = "x"}}))
      assert.matches("unknown TLS option 'cert'", error_of(net.connect, {port = 1, tls = {cert = "x"}}))
      assert.matches("'alpn' must list protocol names", error_of(net.connect, {port = 1, tls = {alpn = {""}}}))
      assert.matches("'alpn' must list at least one", error_of(net.connect, {port = 1, tls = {alpn = {}}}))
      assert.matches("'handshake_timeout' must be a positive number",
                     error_of(net.connect, {port = 1, tls = {handshake_timeout = 0}}))
      assert.matches("'servername' is required to verify a server at a path",
                     error_of(net.connect, {path = "/tmp/x.sock", tls = true}))
    end)
  end)

  describe("servers", function()
    it("reload their certificate with set_tls: new connections get the new one", function()
      local sv = tls_server(echo_lines)
      local old = assert(tls_connect(sv))
      local c, e, code = tls_connect(sv, {ca = path("ca2.pem")})
      assert.is_nil(c)
      assert.equal("ECERT", code)
      -- a broken reload keeps what the server had
      c, e, code = sv:set_tls{cert = path("nope.pem"), key = path("server2.key")}
      assert.is_nil(c)
      assert.equal("ENOENT", code)
      assert.is_true(sv:set_tls(cert("server2")))
      c = assert(tls_connect(sv, {ca = path("ca2.pem")}))
      assert.equal("CN=tide spec CA 2", c:tls_info().peer_issuer)
      c:write("new\n")
      assert.equal("echo: new", c:read_line())
      c:close()
      c, e, code = tls_connect(sv)
      assert.is_nil(c)
      assert.equal("ECERT", code)
      -- the connection made before goes on with the old certificate
      old:write("old\n")
      assert.equal("echo: old", old:read_line())
      assert.equal("CN=tide spec CA", old:tls_info().peer_issuer)
      old:close()
      assert.matches("'cert' and 'key' are required", error_of(sv.set_tls, sv, {}))
      local plain = assert(net.listen{host = "127.0.0.1", port = 0})
      assert.matches("this server does not run TLS", error_of(plain.set_tls, plain, cert("server")))
      plain:close()
      sv:close()
    end)

    it("hand accept() connections whose handshake is done, skipping failed ones", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0, tls = cert("server")})
      local junk = tide.spawn(function()
        local p = assert(net.connect{port = sv.port})
        p:write("GET / HTTP/1.0\r\n\r\n")
        p:set_timeout(5)
        local r = p:read()
        p:close()
        return r
      end)
      local client = tide.spawn(function()
        local c = assert(tls_connect(sv))
        c:write("hello\n")
        local l = c:read_line()
        c:close()
        return l
      end)
      local c = assert(sv:accept(5))
      assert.is_true(c:tls_info().established)
      assert.equal("hello", c:read_line())
      c:write("bye\n")
      assert.same({true, "bye"}, {client:join(5)})
      c:close()
      local ok, r = junk:join(5)
      assert.is_true(ok)
      assert.is_nil(r)
      assert.is_true(sv.tls_errors >= 1)
      sv:close()
    end)

    it("close plaintext and garbage connections and keep serving", function()
      local sv = tls_server(echo_lines)
      for _, junk in ipairs{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ("\0\255\1"):rep(2000),
                            "\22\3\1\0\5hello"} do
        local p = assert(net.connect{host = "127.0.0.1", port = sv.port})
        p:set_timeout(5)
        p:write(junk)
        local r, e, code
        repeat r, e, code = p:read() until not r -- (an alert, maybe)
        -- the server closed it: the end of the stream, or a reset
        assert.is_true(code == nil or code == "ECONNRESET", tostring(e))
        p:close()
      end
      assert.equal(3, sv.tls_errors)
      local c = assert(tls_connect(sv))
      c:write("still\n")
      assert.equal("echo: still", c:read_line())
      c:close()
      sv:close()
    end)

    it("end a handshake that does not come within handshake_timeout", function()
      local sv = tls_server(echo_lines, with(cert("server"), {handshake_timeout = 0.2}))
      local p = assert(net.connect{host = "127.0.0.1", port = sv.port})
      p:set_timeout(5)
      local t0 = tide.hrtime()
      assert.is_nil(p:read()) -- the server hung up
      local took = tide.hrtime() - t0
      assert.is_true(took >= 0.15 and took < 3, "took " .. took)
      assert.equal(1, sv.tls_errors)
      p:close()
      sv:close()
    end)
  end)

  describe("clients", function()
    it("give up a handshake a silent server never answers (handshake_timeout)", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0})
      local t0 = tide.hrtime()
      local c, e, code = net.connect{host = "127.0.0.1", port = sv.port,
                                     tls = {verify = false, handshake_timeout = 0.2}}
      local took = tide.hrtime() - t0
      assert.is_nil(c)
      assert.equal("TLS handshake timed out", e)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(took >= 0.15 and took < 3, "took " .. took)
      -- and within connect's own timeout
      t0 = tide.hrtime()
      c, e, code = net.connect{host = "127.0.0.1", port = sv.port, timeout = 0.2,
                               tls = {verify = false}}
      assert.is_nil(c)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(tide.hrtime() - t0 < 3)
      local s1 = assert(sv:accept(1))
      local s2 = assert(sv:accept(1))
      s1:close()
      s2:close()
      sv:close()
    end)

    it("can be cancelled while they wait for the handshake", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0})
      local t = tide.spawn(function()
        return net.connect{host = "127.0.0.1", port = sv.port, tls = {verify = false}}
      end)
      local s = assert(sv:accept(5))
      s:set_timeout(5)
      assert(s:read()) -- its ClientHello: the client waits in its handshake
      assert.equal("waiting", t:status())
      t:cancel()
      assert.is_falsy((t:join(5)))
      assert.equal("cancelled", t:status())
      s:close()
      sv:close()
    end)

    it("work over a Unix socket, verified against servername", function()
      local sock = ("%s/tls-spec-%d.sock"):format(dir, math.random(1e9))
      local sv = assert(net.listen{path = sock, handler = echo_lines, tls = cert("server")})
      local c = assert(net.connect{path = sock, timeout = 5,
                                   tls = {ca = path("ca.pem"), servername = "localhost"}})
      c:write("unix\n")
      assert.equal("echo: unix", c:read_line())
      assert.equal("localhost", c:tls_info().servername)
      c:close()
      sv:close()
    end)

    it("report a server that hangs up during the handshake", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:set_timeout(5)
        c:read() -- the ClientHello
      end})
      local c, e, code = net.connect{host = "127.0.0.1", port = sv.port, timeout = 5,
                                     tls = {verify = false}}
      assert.is_nil(c)
      assert.matches("^TLS handshake failed", e)
      assert.is_true(code == "ECONNRESET" or code == "ETLS", code)
      sv:close()
    end)
  end)

  describe("starttls", function()
    it("upgrades a plain connection on both sides", function()
      local server_done
      local sv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:set_timeout(5)
        assert.equal("STARTTLS", c:read_line())
        c:write("GO\n")
        assert(c:starttls(with(cert("server"), {server = true})))
        assert.equal("localhost", c:tls_info().servername)
        echo_lines(c)
        server_done = true
      end})
      local c = assert(net.connect{host = "localhost", port = sv.port})
      c:set_timeout(5)
      c:write("STARTTLS\n")
      assert.equal("GO", c:read_line())
      assert.is_nil(c:tls_info())
      assert.is_true(c:starttls{ca = path("ca.pem")})
      assert.is_true(c:tls_info().verified)
      c:write("secret\n")
      assert.equal("echo: secret", c:read_line())
      assert.matches("attempt to start TLS twice", error_of(c.starttls, c))
      c:close()
      tide.sleep(0.05)
      assert.is_true(server_done)
      sv:close()
    end)

    it("hands handshake bytes already buffered to the session", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0})
      local c = assert(net.connect{host = "localhost", port = sv.port})
      local s = assert(sv:accept(5))
      s:set_timeout(5)
      local client = tide.spawn(function()
        c:write("STARTTLS\n")
        local ok, e, code = c:starttls{ca = path("ca.pem")} -- without waiting
        if not ok then return nil, e, code end
        c:write("over tls\n")
        return c:read_line()
      end)
      assert.equal("STARTTLS", s:read_line())
      -- the ClientHello comes into the input buffer (read interest stays on)
      local deadline = tide.hrtime() + 5
      while s:buffered() == 0 and tide.hrtime() < deadline do tide.sleep(0.01) end
      assert.is_true(s:buffered() > 0)
      assert.is_true(s:starttls(with(cert("server"), {server = true})))
      assert.equal(0, (s:buffered()))
      assert.equal("over tls", s:read_line())
      s:write("fine\n")
      assert.same({true, "fine"}, {client:join(5)})
      c:close()
      s:close()
      sv:close()
    end)

    it("fails the handshake on plaintext sent after the command (no injection)", function()
      local result
      local sv = assert(net.listen{host = "127.0.0.1", port = 0, handler = function(c)
        c:set_timeout(5)
        assert.equal("STARTTLS", c:read_line())
        -- "INJECTED" arrived with the command: it is not TLS
        result = {c:starttls(with(cert("server"), {server = true}))}
      end})
      local c = assert(net.connect{host = "127.0.0.1", port = sv.port})
      c:set_timeout(5)
      c:write("STARTTLS\nINJECTED\n")
      assert.is_nil(c:read())
      c:close()
      assert.is_nil(result[1])
      assert.matches("^TLS handshake failed: ", result[2])
      assert.equal("ETLS", result[3])
      sv:close()
    end)

    it("needs a name to verify on a connection that has none", function()
      local sv = assert(net.listen{host = "127.0.0.1", port = 0})
      local c = assert(net.connect{host = "127.0.0.1", port = sv.port})
      local s = assert(sv:accept(5))
      assert.matches("'servername' is required", error_of(s.starttls, s, {ca = path("ca.pem")}))
      assert.matches("'cert' and 'key' are required", error_of(s.starttls, s, {server = true}))
      c:close()
      s:close()
      sv:close()
    end)
  end)

  describe("with openssl as the peer", function()
    local function openssl(args)
      local argv = {"timeout", "10", "openssl"}
      for i = 1, #args do argv[#argv + 1] = args[i] end
      argv.stdin, argv.stdout, argv.stderr = "pipe", "pipe", "null"
      return assert(process.spawn(argv))
    end

    it("talks to openssl s_server", function()
      if not has_process then pending("tide.process is not built") return end
      local ch = openssl{"s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev",
                         "-cert", path("server.pem"), "-key", path("server.key"),
                         "-alpn", "h2,http/1.1"}
      ch.stdout:set_timeout(5)
      local port
      repeat
        local l = assert(ch.stdout:read_line())
        port = l:match("^ACCEPT .*:(%d+)$")
      until port
      local c = assert(net.connect{host = "localhost", port = tonumber(port), timeout = 5,
                                   tls = {ca = path("ca.pem"), alpn = {"http/1.1"}}})
      assert.equal("http/1.1", c.alpn)
      c:set_timeout(5)
      c:write("hello tide\n")
      assert.equal("edit olleh", c:read_line())
      c:close()
      assert.equal(0, ch:wait(5))
      ch.stdin:close()
      ch.stdout:close()
    end)

    it("serves openssl s_client", function()
      if not has_process then pending("tide.process is not built") return end
      local got
      local sv = tls_server(function(c)
        c:set_timeout(5)
        got = c:read_line()
        c:write("pong: ", got or "?", "\n")
      end, with(cert("server"), {alpn = {"h2"}}))
      local ch = openssl{"s_client", "-connect", "127.0.0.1:" .. sv.port, "-quiet",
                         "-servername", "localhost", "-CAfile", path("ca.pem"),
                         "-verify_return_error", "-alpn", "h2"}
      ch.stdin:write("ping\n")
      ch.stdout:set_timeout(5)
      assert.equal("pong: ping", ch.stdout:read_line())
      assert.is_nil(ch.stdout:read()) -- the server's close_notify ends it
      assert.equal(0, ch:wait(5))
      assert.equal("ping", got)
      ch.stdin:close()
      ch.stdout:close()
      sv:close()
    end)

    it("is refused by openssl s_client that does not trust the server", function()
      if not has_process then pending("tide.process is not built") return end
      local sv = tls_server(function(c) c:write("x\n") end, cert("self"))
      local ch = openssl{"s_client", "-connect", "127.0.0.1:" .. sv.port, "-quiet",
                         "-CAfile", path("ca.pem"), "-verify_return_error"}
      ch.stdout:set_timeout(5)
      assert.is_nil(ch.stdout:read())
      assert.is_not.equal(0, ch:wait(5))
      assert.is_true(sv.tls_errors == 1)
      ch.stdin:close()
      ch.stdout:close()
      sv:close()
    end)
  end)
end)
