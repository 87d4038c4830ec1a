-- spec/http_support.lua - what the tide.http specs share: a server for a
-- test on an ephemeral port (closed by close_all), raw connections and a
-- reader of raw responses, and curl as a peer.
-- `local H = require "spec.http_support"`
local http = require "tide.http"
local net = require "tide.net"
local process = require "tide.process"

local H = {}

H.CRLF = "\r\n"
function H.req(lines) return table.concat(lines, H.CRLF) .. H.CRLF .. H.CRLF end

local servers = {}
function H.serve(handler, opts)
  opts = opts or {}
  opts.host, opts.port, opts.handler = "127.0.0.1", 0, handler
  local s = assert(http.serve(opts))
  servers[#servers + 1] = s
  return s
end

function H.url(s, path) return ("http://127.0.0.1:%d%s"):format(s.port, path or "/") end

function H.connect(port)
  local c = assert(net.connect{host = "127.0.0.1", port = port, timeout = 5})
  c:set_timeout(5)
  return c
end

-- Reads one response from raw connection c: status, headers (lower
-- case), body; nil at the end of the stream.
function H.read_response(c, head_only)
  local line = c:read_line()
  if not line then return nil end
  local status = tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  local h = {}
  while true do
    local l = assert(c:read_line())
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    h[k:lower()] = v
  end
  if head_only then return status, h, "" end
  local body = ""
  if h["content-length"] then
    body = assert(c:read_exactly(tonumber(h["content-length"])))
  elseif h["transfer-encoding"] == "chunked" then
    local parts = {}
    while true do
      local n = tonumber(assert(c:read_line()), 16)
      if n == 0 then assert(c:read_line()); break end
      parts[#parts + 1] = c:read_exactly(n)
      assert(c:read_line() == "")
    end
    body = table.concat(parts)
  elseif status ~= 204 and status ~= 304 then
    local parts = {}
    while true do
      local d = c:read()
      if not d then break end
      parts[#parts + 1] = d
    end
    body = table.concat(parts)
  end
  return status, h, body
end

-- true when the server closed c (reads to the end, at most 5 s)
function H.closed(c)
  while true do
    local d, e = c:read()
    if not d then return e == nil or e == "connection reset by peer" end
  end
end

function H.curl(...)
  local r = assert(process.run{"curl", "-sS", "--max-time", "10", ...})
  return r.stdout, r.stderr, r.code
end

-- closes the servers H.serve made and the client's idle connections
function H.close_all()
  for i = #servers, 1, -1 do
    servers[i]:close()
    servers[i] = nil
  end
  http.close_idle()
end

return H
