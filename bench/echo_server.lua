-- bench/echo_server.lua PORT - TCP echo on 127.0.0.1 (workload B/F of
-- ../shared/bench: the peers' luv/echo_server.lua, ported). One task per
-- connection, reading whatever came and writing it back.
local net = require "tide.net"

local port = tonumber(arg[1]) or 18093
assert(net.listen{host = "127.0.0.1", port = port, backlog = 4096,
                  handler = function(conn)
  while true do
    local data = conn:read()
    if not data then return end
    conn:write(data)
  end
end})
