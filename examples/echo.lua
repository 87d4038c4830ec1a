-- examples/echo.lua - a TCP echo server: every connection gets its own
-- task, which sends back each line it reads until the client leaves.
--
--   build/tide examples/echo.lua [port]        (default 7000)
--   nc 127.0.0.1 7000                           (type lines; ^D to leave)
--
-- Idle clients are dropped after 5 minutes; a line longer than 64 KiB is
-- refused, not buffered. Stop the server with ^C.
local net = require "tide.net"

local port = tonumber(arg[1]) or 7000
local clients = 0

local server = assert(net.listen{
  host = "127.0.0.1",
  port = port,
  handler = function(conn)
    clients = clients + 1
    local who = conn.remote_address .. ":" .. conn.remote_port
    print(("%s connected (%d online)"):format(who, clients))
    conn:set_timeout(300)
    while true do
      local line, err = conn:read_line()
      if not line then
        if err then print(("%s: %s"):format(who, err)) end
        break
      end
      local ok, werr = conn:write(line, "\n")
      if not ok then
        print(("%s: %s"):format(who, werr))
        break
      end
    end
    clients = clients - 1
    print(("%s left (%d online)"):format(who, clients))
    -- returning closes the connection
  end,
})

print(("echo server on %s:%d"):format(server.host, server.port))
