-- bench/idle_heap.lua MODE N PORT - what an idle connection costs a server,
-- measured inside it: the growth of the Lua heap (after a full collection)
-- and of VmRSS from before the first connection to when N are open.
--
--   MODE net:   bench/echo_server.lua's handler (a task parked in read)
--   MODE http:  tide.http with a hello-world handler; connections that
--               sent nothing
--   MODE http2: the same, once each connection has made 2 requests
--
-- Open the connections with ../shared/bench/c/conn_hold (net, http) or
-- bench/http_count.c with a hold time (http2), e.g.
--   build/tide bench/idle_heap.lua net 10000 18777 &
--   conn_hold 18777 10000 10
--   build/tide bench/idle_heap.lua http2 10000 18777 &
--   http_count 18777 10000 2 10
-- It prints one RESULT line and exits.
local net = require "tide.net"

local mode = arg[1] or "net"
local N = tonumber(arg[2]) or 10000
local port = tonumber(arg[3]) or 18777
assert(mode == "net" or mode == "http" or mode == "http2", "MODE: net, http or http2")

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local v = line:match("^VmRSS:%s+(%d+)")
    if v then return tonumber(v) end
  end
end

local function settled()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count"), rss_kib()
end

local heap0, rss0 = settled()

local function report()
  -- a moment for the last connections' first wake-ups, then measure
  tide.after(0.5, function()
    local heap1, rss1 = settled()
    print(("RESULT mode=%s conns=%d heap_bytes_per_conn=%.0f rss_kib_per_conn=%.3f")
      :format(mode, N, (heap1 - heap0) * 1024 / N, (rss1 - rss0) / N))
    tide.exit(0)
  end)
end

if mode == "net" then
  local open = 0
  assert(net.listen{host = "127.0.0.1", port = port, backlog = 4096,
                    handler = function(conn)
    open = open + 1
    if open == N then report() end
    while true do
      local data = conn:read()
      if not data then return end
      conn:write(data)
    end
  end})
else
  local http = require "tide.http"
  local requests, want = 0, mode == "http2" and 2 * N or 0
  local srv = assert(http.serve{host = "127.0.0.1", port = port, backlog = 4096,
                                handler = function()
    requests = requests + 1
    return 200, "hello world", {["Content-Type"] = "text/plain"}
  end})
  -- (the server counts its open connections: poll it, outside the handlers)
  local poll
  poll = tide.every(0.05, function()
    if srv.n == N and requests == want then
      poll:stop()
      report()
    end
  end)
end
